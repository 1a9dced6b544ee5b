"""Student training throughput: packed vs padded on CPU; LoRA-7B, FSDP-1B and generation on a GPU.

    python bench/student_train.py                 # CPU: packed vs padded tokens/s (target >= 1.4x)
    PYTHONPATH=. python3 bench/student_train.py --gpu [--quick]   # GPU section (random-init models, no download)

CPU: the length distribution is real: the 80 Vicuna questions with the answers of five models
(../shared/data/vicuna80/answer_*.jsonl), tokenised with a BPE trained on those texts. A tiny LLaMA is trained
through `train_student` with padding (random batches, padded to the longest) and with packing (rows of
max_length), alternately in one run (the CPU is shared: each side gets the same conditions); the figure is the
ratio of the medians of real (non-pad) tokens per second over the timed steps.

GPU (`--gpu`): randomly initialised models built from configs and saved to local disk, trained through the same
`train_student` (Trainer) path:
- a LLaMA-7B-shaped model, LoRA r=16 on all linear layers, bf16, max length 1024: tokens/s and MFU;
- a ~1.1B-shaped model (TinyLlama shape), full fine-tuning under FSDP (torchrun, 1 process): tokens/s and MFU;
- transformers batched generation throughput of the 1.1B model (batch 64 vs batch 1).
MFU = model FLOPs per second / 989 TFLOP/s (H100/H200 dense bf16). Model FLOPs per token: 6N (full) or 4N (LoRA:
no weight gradients for the frozen base) for the N matmul parameters, plus causal attention 6*L*d*s; recomputation
is not counted. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "vicuna80"
PEAK_BF16 = 989.4e12


def vicuna_examples() -> list[dict[str, str]]:
    questions = {}
    for line in (DATA / "question.jsonl").read_text().splitlines():
        row = json.loads(line)
        questions[row["question_id"]] = row.get("text") or row["turns"][0]
    out = []
    for f in sorted(DATA.glob("answer_*.jsonl")):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            out.append({"instruction": questions[row["question_id"]], "input": "", "output": row["text"]})
    return out


# --------------------------------------------------------------------------------------------- CPU


def cpu_bench(args: argparse.Namespace) -> dict:

    from lion.config import StudentConfig
    from lion.student.data import tokenize_examples
    from lion.student.tiny import build_tiny
    from lion.student.train import train_student

    if not DATA.is_dir():
        raise SystemExit(f"missing {DATA} (the shared data sets); cannot build the length distribution")
    examples = vicuna_examples()
    work = Path(tempfile.mkdtemp(prefix="lion-bench-train-"))
    corpus = [e["instruction"] + "\n" + e["output"] for e in examples]
    base = build_tiny(work / "base", vocab="bpe", hidden=args.hidden, layers=args.layers, heads=4, corpus=corpus,
                      bpe_vocab_size=2000)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tokd, stats = tokenize_examples(tok, examples, max_length=args.max_length)
    lens = sorted(len(t) for t in tokd)
    common = dict(model=str(base), lr=1e-4, warmup_ratio=0.0, max_length=args.max_length, grad_accum=1,
                  max_steps=args.steps, logging_steps=1, lr_scheduler="constant")
    padded_cfg = StudentConfig(packing=False, per_device_batch_size=args.batch, **common)
    # the same number of token slots per step as the padded side's mean: rows of max_length
    rows = max(1, round(args.batch * statistics.mean(lens) / args.max_length))
    packed_cfg = StudentConfig(packing=True, per_device_batch_size=rows, **common)
    figures: dict[str, list[float]] = {"padded": [], "packed": []}
    slots: dict[str, list[float]] = {"padded": [], "packed": []}
    for rep in range(args.repeats):
        for name, cfg in (("padded", padded_cfg), ("packed", packed_cfg)):
            res = train_student(cfg, examples, base, work / f"{name}{rep}", seed=rep, progress=False)
            m = res.metrics
            figures[name].append(m["steady_tokens_per_s"])
            slots[name].append(m["tokens"] / m["padded_tokens"])
            print(f"rep {rep} {name:6s}: {m['steady_tokens_per_s']:9.1f} real tokens/s  "
                  f"(real/slots {m['tokens'] / m['padded_tokens']:.2f}, loss {m['train_loss_first']:.3f})", flush=True)
    padded = statistics.median(figures["padded"])
    packed = statistics.median(figures["packed"])
    ratio = packed / padded
    print(f"examples {len(tokd)}, tokens per example: mean {statistics.mean(lens):.0f}, median {lens[len(lens)//2]}, "
          f"p90 {lens[int(len(lens)*0.9)]}, max {lens[-1]}; padded batch {args.batch} examples, packed batch {rows} "
          f"rows of {args.max_length}")
    print(f"packed / padded real tokens per second: {ratio:.2f}x (target >= 1.4x)")
    return {
        "bench": "student_train", "device": "cpu", "ratio_packed_vs_padded": round(ratio, 3), "target": 1.4,
        "pass": ratio >= 1.4, "padded_tokens_per_s": round(padded, 1), "packed_tokens_per_s": round(packed, 1),
        "padded_fill": round(statistics.mean(slots["padded"]), 3), "packed_fill": round(statistics.mean(slots["packed"]), 3),
        "examples": len(tokd), "mean_tokens": round(statistics.mean(lens), 1), "max_length": args.max_length,
        "model": {"hidden": args.hidden, "layers": args.layers, "vocab": 2000}, "steps": args.steps,
        "repeats": args.repeats, "cpu_threads": "auto (student.cpu_threads=0: 1 thread for this model)",
    }


# --------------------------------------------------------------------------------------------- GPU


def _matmul_params(model) -> tuple[int, int, int]:
    """(matmul params N, layers L, hidden d)."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    n = total - emb + (emb if cfg.tie_word_embeddings else 0)  # the LM head is a matmul even when tied
    return n, cfg.num_hidden_layers, cfg.hidden_size


def _flops_per_token(n: int, layers: int, d: int, seq: int, lora: bool) -> float:
    return (4 if lora else 6) * n + 6 * layers * d * seq


def _random_text(rng: random.Random, n: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz      ,.\n"
    return "".join(rng.choice(alphabet) for _ in range(n))


def _save_random_llama(path: Path, shape: dict, dtype) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lion.student.tiny import build_char_tokenizer, wrap_tokenizer

    tok = wrap_tokenizer(build_char_tokenizer(), 4096)
    cfg = LlamaConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      max_position_embeddings=4096, **shape)
    t = time.perf_counter()
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    n, L, d = _matmul_params(model)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return {"matmul_params": n, "layers": L, "hidden": d, "build_save_s": round(time.perf_counter() - t, 1)}


def gpu_bench(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    from lion.config import InferConfig, LoraConfig, StudentConfig
    from lion.student.infer import generate_hf, load_model
    from lion.student.train import train_student

    assert torch.cuda.is_available(), "--gpu needs CUDA"
    name = torch.cuda.get_device_name(0)
    out: dict = {"bench": "student_train_gpu", "gpu": name, "torch": torch.__version__,
                 "transformers": transformers.__version__, "peak_tflops": PEAK_BF16 / 1e12}
    print(f"GPU: {name}, torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    out["matmul_tflops_measured"] = round(10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12, 1)
    del a, b
    print(f"bf16 8192^3 matmul: {out['matmul_tflops_measured']} TFLOP/s", flush=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lion-gpu-"))
    rng = random.Random(0)
    seq = 1024
    examples = [{"instruction": _random_text(rng, 120), "output": _random_text(rng, 1100)} for _ in range(512)]
    quick = args.quick
    sections = args.sections.split(",")

    if "lora7b" in sections:
        try:
            shape = (dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=8,
                          num_key_value_heads=8, vocab_size=32000) if quick else
                     dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=32, vocab_size=32000))
            info = _save_random_llama(work / "llama7b", shape, torch.bfloat16)
            print(f"7B-shaped model: {info}", flush=True)
            res = None
            for batch, ckpt in ((args.lora_batch, False), (max(1, args.lora_batch // 2), True)):
                cfg = StudentConfig(model=str(work / "llama7b"), mode="lora", bf16=True, max_length=seq,
                                    per_device_batch_size=batch, grad_accum=1, max_steps=args.steps, lr=1e-4,
                                    logging_steps=1, gradient_checkpointing=ckpt,
                                    lora=LoraConfig(r=16, alpha=32, dropout=0.0, between_rounds="continue"))
                try:
                    res = train_student(cfg, examples, work / "llama7b", work / "lora_out", progress=False)
                    break
                except torch.OutOfMemoryError:
                    print(f"LoRA batch {batch}: out of memory, retrying smaller with checkpointing", flush=True)
                    torch.cuda.empty_cache()
            assert res is not None
            m = res.metrics
            fpt = _flops_per_token(info["matmul_params"], info["layers"], info["hidden"], seq, lora=True)
            tps = m["steady_tokens_per_s"]
            out["lora7b"] = {**info, "batch": cfg.per_device_batch_size, "grad_ckpt": cfg.gradient_checkpointing,
                             "tokens_per_s": tps, "mfu": round(tps * fpt / PEAK_BF16, 3),
                             "loss_first": m["train_loss_first"], "loss_last": m["train_loss_last"],
                             "max_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
            print(f"LoRA 7B: {out['lora7b']}", flush=True)
        except Exception as e:  # keep going: the other sections still give figures
            out["lora7b"] = {"error": f"{type(e).__name__}: {e}"[:800]}
            print(f"LoRA 7B failed: {out['lora7b']}", flush=True)
        torch.cuda.empty_cache()

    shape1b = (dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=4, vocab_size=32000) if quick else
               dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                    num_key_value_heads=4, vocab_size=32000))
    info1 = None
    if "fsdp1b" in sections or "gen" in sections:
        info1 = _save_random_llama(work / "llama1b", shape1b, torch.bfloat16)
        print(f"1B-shaped model: {info1}", flush=True)
    if "fsdp1b" in sections:
        try:
            cfg = StudentConfig(model=str(work / "llama1b"), mode="full", bf16=True, max_length=seq,
                                per_device_batch_size=args.fsdp_batch, grad_accum=1, max_steps=args.steps, lr=2e-5,
                                logging_steps=1, fsdp="full_shard auto_wrap",
                                fsdp_config={"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}, num_gpus=1,
                                torch_compile=args.compile)
            res = train_student(cfg, examples, work / "llama1b", work / "fsdp_out", progress=False)
            m = res.metrics
            fpt = _flops_per_token(info1["matmul_params"], info1["layers"], info1["hidden"], seq, lora=False)
            tps = m["steady_tokens_per_s"]
            out["fsdp1b"] = {**info1, "batch": args.fsdp_batch, "compile": args.compile, "tokens_per_s": tps,
                             "mfu": round(tps * fpt / PEAK_BF16, 3), "loss_first": m["train_loss_first"],
                             "loss_last": m["train_loss_last"], "world_size": m["world_size"],
                             "saved": sorted(p.name for p in res.path.iterdir())[:8]}
            print(f"FSDP 1B: {out['fsdp1b']}", flush=True)
        except Exception as e:
            out["fsdp1b"] = {"error": f"{type(e).__name__}: {e}"[-1500:]}
            print(f"FSDP 1B failed: {out['fsdp1b']}", flush=True)
        torch.cuda.empty_cache()

    if "gen" in sections:
        try:
            model = load_model(str(work / "llama1b"), InferConfig(dtype="bfloat16"))
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(work / "llama1b")
            from lion.student.data import encode_prompt, format_prompt

            prompts = [encode_prompt(tok, format_prompt(_random_text(rng, 150))) for _ in range(args.gen_batch)]
            new = 64 if quick else 256
            gen = {}
            for bs, n in ((1, 4), (args.gen_batch, args.gen_batch)):
                icfg = InferConfig(batch_size=bs, max_new_tokens=new, dtype="bfloat16")
                generate_hf(model, tok, prompts[:bs], icfg, progress=False, min_new_tokens=new)  # warm-up
                torch.cuda.synchronize()
                t = time.perf_counter()
                generate_hf(model, tok, prompts[:n], icfg, progress=False, min_new_tokens=new)
                torch.cuda.synchronize()
                dt = time.perf_counter() - t
                toks = n * new  # min_new_tokens = max_new_tokens: every prompt gets exactly `new` tokens
                gen[f"batch{bs}_tokens_per_s"] = round(toks / dt, 1)
            gen["ratio"] = round(gen[f"batch{args.gen_batch}_tokens_per_s"] / gen["batch1_tokens_per_s"], 1)
            gen["new_tokens"] = new
            out["generation_1b"] = gen
            print(f"generation 1B: {gen}", flush=True)
        except Exception as e:
            out["generation_1b"] = {"error": f"{type(e).__name__}: {e}"[:800]}
            print(f"generation failed: {out['generation_1b']}", flush=True)
    return out


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", action="store_true", help="run the GPU section instead of the CPU one")
    p.add_argument("--quick", action="store_true", help="GPU: small shapes, to check the path end to end")
    p.add_argument("--sections", default="lora7b,fsdp1b,gen")
    p.add_argument("--workdir", help="GPU: where to save the random models (default: a temp dir)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per measurement")
    p.add_argument("--repeats", type=int, default=3, help="CPU: alternations of padded / packed")
    p.add_argument("--batch", type=int, default=8, help="CPU: padded batch (examples)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--lora-batch", type=int, default=8)
    p.add_argument("--fsdp-batch", type=int, default=24)
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--compile", action="store_true", help="GPU: torch.compile the FSDP model (student.torch_compile)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.steps is None:
        args.steps = 12 if args.gpu else 6
    if args.json:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            res = gpu_bench(args) if args.gpu else cpu_bench(args)
    else:
        res = gpu_bench(args) if args.gpu else cpu_bench(args)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
