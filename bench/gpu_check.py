"""GPU check of lion's student path: LoRA, QLoRA and full fine-tuning with packing, FSDP on one GPU, training then
inference in one process; tokens/s and MFU. One command, under 8 minutes on one H100, offline (no hub downloads).

    python bench/gpu_check.py                  # on a CUDA machine: a ~1.1B LLaMA-shaped model, random init
    python bench/gpu_check.py --smoke          # CPU, a tiny model, well under a minute (CI: tests/test_gpu_check.py)
    python bench/gpu_check.py --sections packing,lora,full --steps 20 --budget-s 300

Everything trains through lion's own code (`lion.student.train.train_student`: the Trainer, the collators, the
merge on save, the torchrun launch), so the check is of lion, not of a separate trainer. The model is built from a
LlamaConfig (hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192, vocabulary 32000: 1.1B parameters, the
Llama-3.2-1B body), saved to local disk with lion's character tokenizer; the examples are random text of varied
lengths (rows of `--max-length` tokens hold one to several). Sections (each records its figures, or `skipped`
with the reason, or `error`; the others still run; a time budget skips what would not fit):

- ``packing``: one packed micro-batch under each attention implementation that runs here (sdpa, eager, and
  flash_attention_2 when flash-attn imports on CUDA), laid out by lion's collator for that implementation, against
  every example's own unpacked logits (sdpa). Under flash_attention_2 also the layout lion used before (rows
  [B > 1, L], which transformers runs as one causal attention per row): the check that only a GPU can make.
- ``lora``: LoRA r=16 on all linear layers, bf16, packing, sdpa (``between_rounds: continue``: adapter A).
- ``lora_fa2``: the same under flash_attention_2 (flattened micro-batches), when flash-attn imports.
- ``full``: full fine-tuning, bf16 autocast over fp32 master weights, packing, sdpa.
- ``qlora``: 4-bit base (bitsandbytes, when it imports) from adapter A with ``between_rounds: merge``: the merge on
  save folds A in first; checked: the saved weights differ from base + A by one rank-r update.
- ``train_then_infer``: LoRA (merge) training, then, in the same process, the GPU's free memory against
  ``gpu_memory_utilization`` x total (vLLM's start-up check) and the student's answers (vLLM when it imports,
  whose engine lion runs in a worker process; else the transformers backend).
- ``fsdp``: full fine-tuning under FSDP (``full_shard auto_wrap``) in a 1-process torchrun job, the wrapped class
  read from the model (`lion.student.train.wrap_classes`: LlamaDecoderLayer).

MFU = model FLOPs per second / the device's dense bf16 peak (table below by device name, e.g. H100 SXM 989.4
TFLOP/s; `--peak-tflops` sets it; unknown devices and CPUs report none). Model FLOPs per token: 6N for full
fine-tuning, 4N for (Q)LoRA (no weight gradients for the frozen base), N the matmul parameters (LM head included,
embeddings not), plus causal attention 6 * layers * hidden * ctx, ctx = sum(n^2) / sum(n) over the examples'
lengths n (packed examples attend only within themselves); recomputation is not counted. tokens/s are real (non-pad)
tokens, the steady figure after the first steps. The last line printed is one JSON object; exit 1 when a section
failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched in order against torch.cuda.get_device_name()
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 NVL", 835.5), ("H100 PCIe", 756.5), ("GH200", 989.4), ("H100", 989.4), ("H200", 989.4),
    ("H20", 148.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0),
]
SECTIONS = ("packing", "lora", "lora_fa2", "full", "qlora", "fsdp", "train_then_infer")  # vLLM's start-up last
GPU_SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=32000)
SMOKE_SHAPE = dict(hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2, vocab_size=101)
LORA_R = 16
PROMPT_FORMAT = "plain"  # "Q: ...\nA: ": a short scaffold for a character-level tokenizer


class Skip(Exception):
    """A section that cannot run here (with the reason)."""


def peak_tflops(device: str, override: float | None) -> float | None:
    if override:
        return override
    for name, tf in PEAK_BF16_TFLOPS:
        if name.lower() in device.lower():
            return tf
    return None


def has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def imports(module: str) -> str | None:
    """None when `module` imports, else why not (flash-attn / bitsandbytes can be installed and still fail)."""
    if not has(module):
        return f"{module} is not installed"
    try:
        __import__(module)
    except Exception as e:  # a broken build: an ImportError, an OSError for a missing CUDA library, ...
        return f"{module} does not import: {type(e).__name__}: {e}"[:300]
    return None


# --------------------------------------------------------------------------------------------- model and data


def build_model(path: Path, shape: dict[str, int], cuda: bool) -> dict[str, Any]:
    """A randomly initialised LLaMA-shaped model + lion's character tokenizer, saved to `path` (bf16 on CUDA)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lion.student.tiny import wrap_tokenizer

    t = time.perf_counter()
    tok = wrap_tokenizer(char_tokenizer(shape["vocab_size"]), 4096)
    cfg = LlamaConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      max_position_embeddings=4096, tie_word_embeddings=False, **shape)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16 if cuda else torch.float32)
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    if cuda:
        torch.cuda.empty_cache()
    return {"params": total, "matmul_params": total - emb, "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size, "build_save_s": round(time.perf_counter() - t, 1)}


def char_tokenizer(size: int):  # -> tokenizers.Tokenizer
    """lion's character tokenizer (lion.student.tiny), its vocabulary padded to `size` with entries no text
    encodes to, so that every id a randomly initialised model can emit decodes (vLLM's detokenizer included)."""
    from tokenizers import Tokenizer, decoders, models

    from lion.student.tiny import SPECIALS, UNK, char_vocab

    names = char_vocab()
    names += [f"<unused{i}>" for i in range(size - len(names))]  # "<" never occurs in the random text
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(names)}, merges=[], unk_token=UNK,
                               ignore_merges=True))
    tok.add_special_tokens(SPECIALS)
    tok.decoder = decoders.Fuse()
    return tok


def random_examples(n: int, max_chars: int, seed: int = 0) -> list[dict[str, str]]:
    """Random text of varied lengths (one token per character with lion's character tokenizer)."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz      ,.\n"

    def text(k: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(k))

    return [{"instruction": text(rng.randint(4, max(5, max_chars // 6))), "output": text(rng.randint(4, max_chars // 2))}
            for _ in range(n)]


def attention_context(model_path: Path, examples: list[dict[str, str]], max_length: int) -> float:
    """sum(n^2) / sum(n) over the examples' token lengths: the token-weighted mean example length (a token
    attends, causally, to about half of it)."""
    from transformers import AutoTokenizer

    from lion.student.data import tokenize_examples

    tokd, _ = tokenize_examples(AutoTokenizer.from_pretrained(model_path), examples, max_length=max_length,
                                fmt=PROMPT_FORMAT)
    lens = [len(t) for t in tokd]
    return sum(n * n for n in lens) / max(1, sum(lens))


def flops_per_token(info: dict[str, Any], ctx: float, *, lora: bool) -> float:
    return (4 if lora else 6) * info["matmul_params"] + 6 * info["layers"] * info["hidden"] * ctx


# --------------------------------------------------------------------------------------------- the check


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.cuda = torch.cuda.is_available() and not args.smoke
        self.t0 = time.perf_counter()
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="lion-gpu-check-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.device = torch.cuda.get_device_name(0) if self.cuda else "cpu"
        self.peak = peak_tflops(self.device, args.peak_tflops) if self.cuda else None
        self.out: dict[str, Any] = {"bench": "gpu_check", "smoke": args.smoke, "device": self.device,
                                    "peak_tflops_bf16": self.peak, "sections": {}}
        self.base = self.work / "base"
        self.info: dict[str, Any] = {}
        self.examples: list[dict[str, str]] = []
        self.ctx = 0.0
        self.adapter_a: Path | None = None

    # ----------------------------------------------------------------------------------------- helpers

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {msg}", flush=True)

    def student_cfg(self, **kw: Any):
        from lion.config import StudentConfig

        a = self.args
        opts: dict[str, Any] = dict(model=str(self.base), max_length=a.max_length, packing=True,
                                    prompt_format=PROMPT_FORMAT,
                                    per_device_batch_size=a.rows, grad_accum=1, max_steps=a.steps, lr=1e-4,
                                    warmup_ratio=0.0, lr_scheduler="constant", logging_steps=1, save_minutes=0,
                                    bf16=self.cuda, attn_implementation="sdpa")
        opts.update(kw)
        return StudentConfig(**opts)

    def train(self, name: str, cfg: Any, init_from: Path | None = None, *, lora: bool):
        """train_student on the check's examples; the section's figures (tokens/s, MFU, memory, losses)."""
        import torch

        from lion.student.train import train_student

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        res = train_student(cfg, self.examples, init_from or self.base, self.work / name, progress=False)
        m = res.metrics
        tps = m["steady_tokens_per_s"] or m["tokens_per_s"]
        fig: dict[str, Any] = {
            "mode": cfg.mode, "attn": cfg.attn_implementation, "steps": m["steps"],
            "rows_per_step": m["batch"]["rows_per_step"], "examples_per_row": m["batch"]["examples_per_row"],
            "tokens_per_step": m["batch"]["tokens_per_step"], "tokens_per_s": tps,
            "mfu": round(tps * flops_per_token(self.info, self.ctx, lora=lora) / (self.peak * 1e12), 3)
            if self.peak and tps else None,
            "loss_first": m["train_loss_first"], "loss_last": m["train_loss_last"], "world_size": m["world_size"],
            "fill": round(m["tokens"] / m["padded_tokens"], 3) if m["padded_tokens"] else None,
            "seconds": round(time.perf_counter() - t, 1),
        }
        if self.cuda and m["world_size"] == 1 and not cfg.fsdp:
            fig["max_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        losses = [x for x in m["losses"] if x is not None]
        if not losses or not all(x == x and abs(x) != float("inf") for x in losses):
            raise AssertionError(f"{name}: losses not finite: {losses[:8]}")
        return res, fig

    # ----------------------------------------------------------------------------------------- sections

    def packing(self) -> dict[str, Any]:
        """Each attention implementation, with the layout lion's collator gives it, against unpacked logits."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lion.student.data import PackedCollator, PaddedCollator, build_rows, make_collator, tokenize_examples

        tok = AutoTokenizer.from_pretrained(self.base)
        tokd, _ = tokenize_examples(tok, self.examples[:200], max_length=self.args.max_length, fmt=PROMPT_FORMAT)
        rows = [r for r in build_rows(tokd, packing=True, pack_length=self.args.max_length).items if len(r) > 1]
        rows = rows[:4]
        if len(rows) < 2:
            raise AssertionError("fewer than 2 packed rows with several examples")
        examples = [t for r in rows for t in r]
        dev = "cuda" if self.cuda else "cpu"
        dtype = torch.bfloat16 if self.cuda else torch.float32
        model = AutoModelForCausalLM.from_pretrained(self.base, dtype=dtype, attn_implementation="sdpa").to(dev).eval()

        def run(batch: dict[str, Any]):
            with torch.no_grad():
                b = {k: (v.to(dev) if hasattr(v, "to") else v) for k, v in batch.items()}
                out = model(**b)
            return out.loss.float().item(), out.logits.float()

        ref_loss, ref_logits = run(PaddedCollator(tok.pad_token_id)(examples))  # every example on its own
        scale = ref_logits.abs().max().item()

        def gap(batch: dict[str, Any], logits) -> float:
            """Max |logit - the example's own unpacked logit| over every example of a packed/flat batch."""
            worst, k = 0.0, 0
            flat = batch["input_ids"].shape[0] == 1 and len(rows) > 1
            at_row = [0] * len(rows)
            at = 0
            for r, row in enumerate(rows):
                for t in row:
                    n = len(t)
                    got = logits[0, at : at + n] if flat else logits[r, at_row[r] : at_row[r] + n]
                    worst = max(worst, (got - ref_logits[k, :n]).abs().max().item())
                    at, at_row[r], k = at + n, at_row[r] + n, k + 1
            return worst

        # the yardstick: the same rows with one causal attention over each whole row (examples attend to the ones
        # before them in the row: what FlashAttention did with lion's [B > 1, L] packed batches)
        leaky = PackedCollator(tok.pad_token_id)(rows)
        leaky["attention_mask"] = torch.ones_like(leaky["input_ids"])  # a mask: no packed-sequence detection
        leak = gap(leaky, run(leaky)[1])
        impls = ["sdpa", "eager"]
        why_not = imports("flash_attn") if self.cuda else "no CUDA"
        if why_not is None:
            impls.append("flash_attention_2")
        res: dict[str, Any] = {"rows": len(rows), "examples": len(examples), "ref_loss": round(ref_loss, 5),
                               "logit_scale": round(scale, 3), "leak_logit_gap": round(leak, 5)}
        if not leak > (1e-2 if self.cuda else 1e-4) * max(1.0, scale):
            raise AssertionError(f"the check cannot tell: attending across examples moved the logits by {leak}")
        for impl in impls:
            model.set_attn_implementation(impl)
            batch = make_collator(packing=True, pad_id=tok.pad_token_id, attn_implementation=impl)(rows)
            loss, logits = run(batch)
            g = gap(batch, logits)
            res[impl] = {"layout": list(batch["input_ids"].shape), "loss": round(loss, 5), "max_logit_gap": round(g, 5),
                         "ok": g <= 0.25 * leak and abs(loss - ref_loss) <= 0.01 * max(1.0, abs(ref_loss))}
            if impl == "flash_attention_2":  # the layout before: rows of a [B > 1, L] batch, no flattening
                old = PackedCollator(tok.pad_token_id)(rows)
                o_loss, o_logits = run(old)
                res["flash_attention_2_rows_before"] = {"loss": round(o_loss, 5),
                                                        "max_logit_gap": round(gap(old, o_logits), 5)}
        if why_not is not None:
            res["flash_attention_2"] = {"skipped": why_not}
        model.set_attn_implementation("sdpa")  # the flattened layout (FlashAttention's) is right under sdpa too
        flat = PackedCollator(tok.pad_token_id, flatten=True)(rows)
        flat = {k: v for k, v in flat.items() if not k.startswith(("cu_seq_lens", "max_length"))}
        f_loss, f_logits = run(flat)
        g = gap(flat, f_logits)
        res["sdpa_flattened"] = {"layout": list(flat["input_ids"].shape), "loss": round(f_loss, 5),
                                 "max_logit_gap": round(g, 5), "ok": g <= 0.25 * leak}
        impls.append("sdpa_flattened")
        bad = [i for i in impls if not res[i]["ok"]]
        if bad:
            raise AssertionError(f"packed examples differ from their unpacked logits under {bad}: {res}")
        return res

    def lora(self) -> dict[str, Any]:
        from lion.config import LoraConfig

        cfg = self.student_cfg(mode="lora", lr=2e-4, lora=LoraConfig(r=LORA_R, alpha=2 * LORA_R, dropout=0.0,
                                                                    between_rounds="continue"))
        res, fig = self.train("lora", cfg, lora=True)
        self.adapter_a = res.path
        return fig

    def lora_fa2(self) -> dict[str, Any]:
        from lion.config import LoraConfig

        if not self.cuda:
            raise Skip("no CUDA")
        why = imports("flash_attn")
        if why:
            raise Skip(why)
        cfg = self.student_cfg(mode="lora", lr=2e-4, attn_implementation="flash_attention_2",
                               lora=LoraConfig(r=LORA_R, alpha=2 * LORA_R, dropout=0.0, between_rounds="continue"))
        _, fig = self.train("lora_fa2", cfg, lora=True)
        return fig

    def full(self) -> dict[str, Any]:
        _, fig = self.train("full", self.student_cfg(mode="full", lr=2e-5), lora=False)
        return fig

    def qlora(self) -> dict[str, Any]:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from lion.config import LoraConfig

        if not self.cuda:
            raise Skip("QLoRA needs CUDA")
        why = imports("bitsandbytes")
        if why:
            raise Skip(why)
        if self.adapter_a is None:
            raise Skip("needs the lora section's adapter")
        cfg = self.student_cfg(mode="qlora", lr=2e-4, lora=LoraConfig(r=LORA_R, alpha=2 * LORA_R, dropout=0.0,
                                                                     between_rounds="merge"))
        res, fig = self.train("qlora", cfg, init_from=self.adapter_a, lora=True)
        # the merge on save: the saved student = base + A (the adapter it started from) + B (one rank-r update)
        base = AutoModelForCausalLM.from_pretrained(self.base, dtype=torch.float32)
        start = PeftModel.from_pretrained(base, str(self.adapter_a)).merge_and_unload()
        name = "model.layers.0.self_attn.q_proj.weight"
        w0 = start.state_dict()[name].float()
        del start, base
        saved = AutoModelForCausalLM.from_pretrained(res.path, dtype=torch.float32).state_dict()[name].float()
        s = torch.linalg.svdvals((saved - w0).cuda())
        fig["merge_rank_ratio"] = round((s[LORA_R] / s[0]).item(), 5)  # ~bf16 noise when the update has rank <= r
        if not s[LORA_R] < 0.05 * s[0]:
            raise AssertionError(f"saved - (base + A) is not one rank-{LORA_R} update: s[r]/s[0] = "
                                 f"{fig['merge_rank_ratio']}")
        return fig

    def train_then_infer(self) -> dict[str, Any]:
        import torch

        from lion.config import InferConfig, LoraConfig
        from lion.student.data import format_prompt
        from lion.student.infer import generate, pick_backend

        cfg = self.student_cfg(mode="lora", lr=2e-4, lora=LoraConfig(r=LORA_R, alpha=2 * LORA_R, dropout=0.0,
                                                                    between_rounds="merge"))
        res, fig = self.train("train_then_infer", cfg, lora=True)
        util = 0.85
        if self.cuda:
            free, total = torch.cuda.mem_get_info()
            fig.update(peak_reserved_gb=round(torch.cuda.max_memory_reserved() / 2**30, 1),
                       reserved_after_gb=round(torch.cuda.memory_reserved() / 2**30, 2),
                       free_after_gb=round(free / 2**30, 1), total_gb=round(total / 2**30, 1),
                       free_share=round(free / total, 3), gpu_memory_utilization=util)
            if free < util * total:
                raise AssertionError(f"after training, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free: vLLM at "
                                     f"gpu_memory_utilization {util} would refuse to start ({fig})")
        backend = "vllm" if self.cuda and imports("vllm") is None else "transformers"
        icfg = InferConfig(backend=backend, max_new_tokens=self.args.new_tokens, batch_size=32,
                           gpu_memory_utilization=util)
        prompts = [format_prompt(e["instruction"], fmt=PROMPT_FORMAT) for e in self.examples[: self.args.prompts]]
        t = time.perf_counter()
        answers = generate(res.path, prompts, icfg, progress=False, max_length=self.args.max_length)
        dt = time.perf_counter() - t
        fig.update(infer_backend=pick_backend(icfg), prompts=len(prompts),
                   answered=sum(a is not None for a in answers), infer_seconds=round(dt, 1))
        if backend == "transformers" and self.cuda:
            fig["vllm"] = imports("vllm")
        if fig["answered"] != len(prompts):
            raise AssertionError(f"{fig['answered']} of {len(prompts)} prompts answered")
        return fig

    def fsdp(self) -> dict[str, Any]:
        from lion.student.train import fsdp_config, wrap_classes

        cfg = self.student_cfg(mode="full", lr=2e-5, fsdp="full_shard auto_wrap", num_gpus=1)
        wrap = wrap_classes(str(self.base))
        _, fig = self.train("fsdp", cfg, lora=False)
        fig.update(wrap=wrap, fsdp_config=fsdp_config(cfg, str(self.base)),
                   log=str(self.work / "fsdp.launch" / "train.log"))
        if wrap != ["LlamaDecoderLayer"] or fig["world_size"] != 1:
            raise AssertionError(f"FSDP: wrapped {wrap}, world size {fig['world_size']}")
        return fig

    # ----------------------------------------------------------------------------------------- driver

    def run(self) -> dict[str, Any]:
        import torch
        import transformers

        a = self.args
        self.out.update(torch=torch.__version__, transformers=transformers.__version__,
                        bitsandbytes=imports("bitsandbytes") or "ok", flash_attn=imports("flash_attn") or "ok",
                        vllm=imports("vllm") or "ok")
        self.say(f"device {self.device}, peak {self.peak} TFLOP/s bf16, work dir {self.work}")
        self.info = build_model(self.base, SMOKE_SHAPE if a.smoke else GPU_SHAPE, self.cuda)
        self.out["model"] = self.info
        self.examples = random_examples(a.examples, int(a.max_length * 0.8))  # ~3 examples per packed row
        self.ctx = attention_context(self.base, self.examples, a.max_length)
        self.out["attention_ctx"] = round(self.ctx, 1)
        self.say(f"model {self.info}")
        wanted = a.sections.split(",") if a.sections else list(SECTIONS)
        for name in wanted:
            if name not in SECTIONS:
                raise SystemExit(f"--sections: unknown section {name!r} (one of {', '.join(SECTIONS)})")
        for name in SECTIONS:
            if name not in wanted:
                continue
            fn: Callable[[], dict[str, Any]] = getattr(self, name)
            left = a.budget_s - self.elapsed()
            if left < a.section_s:
                self.out["sections"][name] = {"skipped": f"time budget: {left:.0f} s left of --budget-s {a.budget_s}"}
                self.say(f"{name}: skipped (time budget)")
                continue
            t = time.perf_counter()
            try:
                fig = fn()
            except Skip as e:
                fig = {"skipped": str(e)}
            except Exception as e:  # keep going: the other sections still give figures
                fig = {"error": f"{type(e).__name__}: {e}"[-1500:]}
                traceback.print_exc()
            fig.setdefault("section_s", round(time.perf_counter() - t, 1))
            self.out["sections"][name] = fig
            self.say(f"{name}: {json.dumps(fig)}")
            if self.cuda:
                torch.cuda.empty_cache()
        ran = [s for s in self.out["sections"].values() if "skipped" not in s]
        self.out["ok"] = bool(ran) and not any("error" in s for s in ran)
        self.out["seconds"] = round(self.elapsed(), 1)
        return self.out


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, a tiny model, a few steps: the code path, in CI")
    p.add_argument("--sections", default="", help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per training (default 30; smoke 3)")
    p.add_argument("--rows", type=int, default=None, help="packed rows per micro-batch (default 8; smoke 2)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per row (default 1024; smoke 64)")
    p.add_argument("--examples", type=int, default=None, help="random examples (default 600; smoke 24)")
    p.add_argument("--prompts", type=int, default=None, help="train_then_infer: prompts answered (default 64; smoke 4)")
    p.add_argument("--new-tokens", type=int, default=None, help="train_then_infer: tokens per answer (default 128)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="a section starts only while --section-s of this budget is left (default 420: the run ends "
                        "within 8 minutes on an H100)")
    p.add_argument("--section-s", type=float, default=None, help="time a section needs at least (default 60; smoke 0)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    p.add_argument("--workdir", help="where the model and checkpoints go (default: a temp dir)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    small = args.smoke
    for key, gpu, smoke in (("steps", 30, 3), ("rows", 8, 2), ("max_length", 1024, 128), ("examples", 600, 24),
                            ("prompts", 64, 4), ("new_tokens", 128, 8), ("section_s", 60.0, 0.0)):
        if getattr(args, key) is None:
            setattr(args, key, smoke if small else gpu)
    if small:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the smoke check is the CPU path, GPU or not
    from lion.logs import setup_logging

    setup_logging("info")
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    check = Check(args)
    try:
        out = check.run()
    finally:
        if not args.workdir:  # a temp dir: the ~1B model and five checkpoints are ~11 GB
            import shutil

            shutil.rmtree(check.work, ignore_errors=True)
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
