"""SFT vs top-k distillation from the teacher's logprobs, on the same paid teacher calls (issue 22, item 4).

    nice -n 10 python bench/topk_kd.py                       # ~1 h on 2 CPU cores; resumes job by job
    python bench/topk_kd.py --train 24 --heldout 6 --seeds 0 --epochs 1    # a quick look (~10 min)

The teacher is SmolLM2-135M-Instruct behind lion's local server (`hf` responder, greedy), asked once through the
gateway with `llm.teacher.top_logprobs: 20` for the Train Pool of configs/local-real.yaml (data/local_real_seed.jsonl)
and for held-out instructions (data/local_real_heldout.jsonl). Every arm trains on those very answers: K = 5 is the
top 5 of the same K = 20 records (`student.kd_top_k: 5`), so no arm buys anything the others do not. The student is
configs/local-real.yaml's: SmolLM2 pruned to 8 of its 30 layers, LoRA r=16, its chat template (the teacher's
tokenizer: the alignment is exact).

Arms, each trained from the same pruned base with the same seeds (paired by seed): `sft` (cross-entropy),
`kd5` and `kd20` (student.objective: topk_kd, kd_weight 0.5, K = 5 / 20). Figures per arm: the held-out loss of
the student on the teacher's answers and its KL to the teacher's top-20 (+ tail) on them, both also for the
untrained base ("before"); the ROUGE-L F of the student's greedy answers against the teacher's; training tokens/s;
and the bytes stored per answer token (the side file at K = 20, and re-encoded at K = 5). Deltas (kd - sft) are
paired by seed: mean and standard deviation over the seeds. Training speed is also measured side by side (`speed`:
the same batch through the SFT and the KD loss in turn), since the trainings run minutes apart on shared cores.

Resumable: the teacher's answers replay from OUT/run (call cache + answer store); a finished training is found by
its fingerprint in OUT/students/<arm>-s<seed> and not trained again; each evaluation is saved in OUT/eval/. Ends with
one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARMS = {"sft": {"objective": "sft"}, "kd5": {"objective": "topk_kd", "kd_top_k": 5},
        "kd20": {"objective": "topk_kd", "kd_top_k": 0}}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def buy(out: Path, n_train: int, n_heldout: int, progress: bool) -> dict[str, Any]:
    """The teacher's answers (with K=20 logprobs) to the Train Pool and the held-out instructions; the pruned base."""
    from lion.answers import teacher_answers, teacher_identity
    from lion.config import load_config
    from lion.context import RunContext
    from lion.imitation import previous_student
    from lion.pools import prepare_round
    from lion.records import load_instructions, read_pool

    cfg = load_config(ROOT / "configs" / "local-real.yaml", [
        f"run_dir={out / 'run'}", "llm.teacher.top_logprobs=20", "student.objective=topk_kd",
        f"pools.limit={n_train}"])
    t0 = time.perf_counter()
    with RunContext(cfg, progress=progress) as ctx:
        prepare_round(ctx, 1)
        base = previous_student(ctx, 1)
        pool = read_pool(ctx.run.round(1).train_pool)
        questions = load_instructions(ROOT / "data" / "local_real_heldout.jsonl")[0][:n_heldout]
        teacher_answers(ctx, pool, "imitation")
        teacher_answers(ctx, questions, "eval")
        who = teacher_identity(cfg)

        def rows(items: list[Any]) -> list[dict[str, Any]]:
            out_rows = []
            for it in items:
                row = ctx.answers.get(it.id, who)
                if row is None or not row["answer"]:
                    continue
                blob = ctx.answers.logprobs(row)
                out_rows.append({"id": it.id, "instruction": it.instruction, "input": it.input,
                                 "output": row["answer"], "finish_reason": row.get("finish_reason"),
                                 "teacher_logprobs": base64.b64encode(blob).decode() if blob else None})
            return out_rows

        train, heldout = rows(pool), rows(questions)
        side = ctx.answers.logprobs_path
        usage = ctx.gateway.usage_summary()["total"]
    tokens = 0
    size20 = size5 = 0
    from lion.teachers.logprobs import TokenLogprobs

    for r in train + heldout:
        if r["teacher_logprobs"]:
            blob = base64.b64decode(r["teacher_logprobs"])
            lp = TokenLogprobs.decode(blob)
            tokens += len(lp)
            size20 += len(blob) + 12  # + the side file's record header
            size5 += len(lp.truncate(5).encode()) + 12
    return {"cfg": cfg, "base": str(base), "train": train, "heldout": heldout, "seconds": time.perf_counter() - t0,
            "teacher_calls": usage["calls"], "teacher_tokens_out": usage["tokens_out"],
            "storage": {"answers": len(train) + len(heldout), "answer_tokens": tokens,
                        "side_file_bytes": side.stat().st_size if side.exists() else 0,
                        "bytes_per_token_k20": round(size20 / tokens, 2) if tokens else None,
                        "bytes_per_token_k5": round(size5 / tokens, 2) if tokens else None}}


def train_arm(cfg: Any, arm: str, seed: int, data: dict[str, Any], out: Path, epochs: float,
              progress: bool) -> dict[str, Any]:
    import dataclasses

    from lion.student.train import train_student

    sc = dataclasses.replace(cfg.student, epochs=epochs, **ARMS[arm])
    examples = [{k: r[k] for k in ("instruction", "input", "output", "teacher_logprobs")
                 if k != "teacher_logprobs" or (arm != "sft" and r[k])} for r in data["train"]]
    t0 = time.perf_counter()
    res = train_student(sc, examples, data["base"], out / "students" / f"{arm}-s{seed}", seed=seed,
                        progress=progress)
    m = res.metrics
    log(f"{arm} seed {seed}: {m['steps']} steps, loss {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}, "
        f"{m['tokens_per_s']} tokens/s ({time.perf_counter() - t0:.0f} s)")
    return {"path": str(res.path), "steps": m["steps"], "tokens_per_s": m["tokens_per_s"],
            "steady_tokens_per_s": m.get("steady_tokens_per_s"), "train_seconds": m.get("train_seconds"),
            "loss_first": m["train_loss_first"], "loss_last": m["train_loss_last"], "kd": m.get("kd")}


def evaluate(cfg: Any, name: str, model: str, data: dict[str, Any], out: Path) -> dict[str, Any]:
    """Held-out: loss on the teacher's answers, KL to its top-20, ROUGE-L of greedy answers (saved per model)."""
    from lion.dedup import rouge_l_f
    from lion.student.data import format_prompt
    from lion.student.infer import generate, load_prompt_tokenizer
    from lion.student.score import answer_losses, topk_kl

    path = out / "eval" / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    sc = cfg.student
    t0 = time.perf_counter()
    tok = load_prompt_tokenizer(model)
    held = data["heldout"]
    prompts = [format_prompt(r["instruction"], r["input"], fmt=sc.prompt_format, tokenizer=tok) for r in held]
    targets = [r["output"] for r in held]
    losses = answer_losses(model, prompts, targets, sc.infer, max_length=sc.max_length)
    kls = topk_kl(model, prompts, targets,
                  [base64.b64decode(r["teacher_logprobs"]) if r["teacher_logprobs"] else None for r in held],
                  sc.infer, max_length=sc.max_length)
    answers = generate(model, prompts, sc.infer, progress=False, max_length=sc.max_length)
    rouge = [rouge_l_f(t, a) if a is not None else None for t, a in zip(targets, answers, strict=True)]
    res = {"name": name, "loss": _mean(losses), "kl": _mean(kls), "rouge_l": _mean(rouge),
           "scored": {"loss": sum(x is not None for x in losses), "kl": sum(x is not None for x in kls),
                      "rouge": sum(x is not None for x in rouge)},
           "seconds": round(time.perf_counter() - t0, 1), "example_answer": answers[0] if answers else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    log(f"eval {name}: loss {res['loss']:.4f}, KL {res['kl']:.4f}, ROUGE-L {res['rouge_l']:.4f} ({res['seconds']} s)")
    return res


def speed(cfg: Any, data: dict[str, Any], out: Path, reps: int = 6) -> dict[str, Any]:
    """Training throughput of each objective measured side by side: the same LoRA student and the same batch (the
    first `per_device_batch_size` training answers, padded), forward + backward of the SFT loss and of the top-k KD
    loss (K = 20 and 5) in turn, `reps` times; medians. (The trainings' own tokens/s above ran minutes apart on
    shared cores.)"""
    import dataclasses
    import statistics as st

    import torch

    from lion.student.data import PaddedCollator, tokenize_examples
    from lion.student.kd import TokenAligner, topk_kd_loss
    from lion.student.threads import cpu_threads
    from lion.student.train import _load_tokenizer, _prepare_model

    path = out / "eval" / "speed.json"
    if path.is_file():
        return json.loads(path.read_text())
    sc = dataclasses.replace(cfg.student, objective="topk_kd")
    tok = _load_tokenizer(data["base"], data["base"])
    torch.manual_seed(0)
    model, _ = _prepare_model(sc, data["base"])
    model.train()
    rows = [r for r in data["train"] if r["teacher_logprobs"]][: sc.per_device_batch_size]
    batches = {}
    for name, k in (("kd20", 0), ("kd5", 5)):
        tokenized, _ = tokenize_examples(tok, rows, max_length=sc.max_length, fmt=sc.prompt_format,
                                         aligner=TokenAligner(tok, k))
        batches[name] = PaddedCollator(tok.pad_token_id)(tokenized)
    batch = batches["kd20"]
    n_tokens = int(batch["attention_mask"].sum())
    times: dict[str, list[float]] = {"sft": [], "kd5": [], "kd20": []}
    with cpu_threads(model, sc.cpu_threads):
        for _ in range(reps):
            for name in times:
                b = batches.get(name, batch)
                t0 = time.perf_counter()
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                if name == "sft":
                    total, n = topk_kd_loss(logits, b["labels"], torch.full_like(b["kd_ids"][..., :1], -1),
                                            torch.zeros_like(b["kd_logp"][..., :1]), 0.0)
                else:
                    total, n = topk_kd_loss(logits, b["labels"], b["kd_ids"], b["kd_logp"], sc.kd_weight)
                (total / n).backward()
                model.zero_grad(set_to_none=True)
                times[name].append(time.perf_counter() - t0)
    res = {"tokens_per_batch": n_tokens, "reps": reps,
           "tokens_per_s": {k: round(n_tokens / st.median(v), 1) for k, v in times.items()}}
    res["kd20_over_sft"] = round(res["tokens_per_s"]["kd20"] / res["tokens_per_s"]["sft"], 3)
    res["kd5_over_sft"] = round(res["tokens_per_s"]["kd5"] / res["tokens_per_s"]["sft"], 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    log(f"speed (side by side, {n_tokens} tokens a batch): {res['tokens_per_s']} tokens/s; kd20/sft "
        f"{res['kd20_over_sft']}, kd5/sft {res['kd5_over_sft']}")
    return res


def paired(evals: dict[str, dict[str, Any]], arm: str, seeds: list[int], key: str) -> dict[str, Any]:
    deltas = [evals[f"{arm}-s{s}"][key] - evals[f"sft-s{s}"][key] for s in seeds
              if evals[f"{arm}-s{s}"][key] is not None and evals[f"sft-s{s}"][key] is not None]
    return {"mean": round(statistics.mean(deltas), 5) if deltas else None,
            "sd": round(statistics.stdev(deltas), 5) if len(deltas) > 1 else None,
            "per_seed": [round(d, 5) for d in deltas]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/topk_kd.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench-topk-kd"))
    p.add_argument("--train", type=int, default=100, help="Train Pool instructions (of data/local_real_seed.jsonl)")
    p.add_argument("--heldout", type=int, default=20, help="held-out instructions (of data/local_real_heldout.jsonl)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default="sft,kd5,kd20")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",")
    t_all = time.perf_counter()
    log(f"teacher answers with top-20 logprobs ({args.train} train, {args.heldout} held-out)")
    data = buy(args.out, args.train, args.heldout, args.progress)
    cfg = data["cfg"]
    st = data["storage"]
    log(f"teacher: {len(data['train'])} + {len(data['heldout'])} answers, {st['answer_tokens']} answer tokens, "
        f"{data['teacher_calls']} paid calls in {data['seconds']:.0f} s; {st['bytes_per_token_k20']} bytes per answer "
        f"token at K=20, {st['bytes_per_token_k5']} at K=5")
    evals = {"base": evaluate(cfg, "base", data["base"], data, args.out)}
    trained: dict[str, dict[str, Any]] = {}
    for seed in seeds:  # seed by seed: an interrupted bench has whole pairs to compare
        for arm in arms:
            name = f"{arm}-s{seed}"
            trained[name] = train_arm(cfg, arm, seed, data, args.out, args.epochs, args.progress)
            evals[name] = evaluate(cfg, name, trained[name]["path"], data, args.out)
    fast = speed(cfg, data, args.out)
    summary: dict[str, Any] = {"arms": {}, "speed": fast}
    for arm in arms:
        names = [f"{arm}-s{s}" for s in seeds]
        summary["arms"][arm] = {
            "heldout_loss": _mean([evals[n]["loss"] for n in names]),
            "heldout_kl": _mean([evals[n]["kl"] for n in names]),
            "rouge_l": _mean([evals[n]["rouge_l"] for n in names]),
            "tokens_per_s": _mean([trained[n]["tokens_per_s"] for n in names]),
            "steady_tokens_per_s": _mean([trained[n]["steady_tokens_per_s"] for n in names]),
            "kd": trained[names[0]]["kd"],
        }
        if arm != "sft" and "sft" in arms:
            summary["arms"][arm]["vs_sft"] = {k: paired(evals, arm, seeds, k) for k in ("loss", "kl", "rouge_l")}
    base = evals["base"]
    figures = {"teacher": "SmolLM2-135M-Instruct (greedy, max 96 tokens, top_logprobs 20)",
               "student": "SmolLM2 pruned to 8 layers, LoRA r=16, chat template",
               "train_answers": len(data["train"]), "heldout_answers": len(data["heldout"]), "seeds": seeds,
               "epochs": args.epochs, "steps": trained[f"{arms[0]}-s{seeds[0]}"]["steps"],
               "teacher_calls": data["teacher_calls"], "storage": st,
               "before": {"heldout_loss": base["loss"], "heldout_kl": base["kl"], "rouge_l": base["rouge_l"]},
               **summary, "wall_s": round(time.perf_counter() - t_all, 1)}
    print(f"before training: held-out loss {base['loss']:.4f}, KL {base['kl']:.4f}, ROUGE-L {base['rouge_l']:.4f}")
    for arm, a in summary["arms"].items():
        line = (f"{arm:>5}: held-out loss {a['heldout_loss']:.4f}, KL to the teacher's top-20 {a['heldout_kl']:.4f}, "
                f"ROUGE-L {a['rouge_l']:.4f}, {a['tokens_per_s']:.1f} training tokens/s")
        if "vs_sft" in a:
            v = a["vs_sft"]
            line += (f"; vs sft (paired, mean±sd): loss {v['loss']['mean']:+.4f}±{v['loss']['sd'] or 0:.4f}, "
                     f"KL {v['kl']['mean']:+.4f}±{v['kl']['sd'] or 0:.4f}, "
                     f"ROUGE-L {v['rouge_l']['mean']:+.4f}±{v['rouge_l']['sd'] or 0:.4f}")
        print(line)
    print(f"training speed side by side (forward + backward, same batch): {fast['tokens_per_s']} tokens/s; "
          f"kd20/sft {fast['kd20_over_sft']}, kd5/sft {fast['kd5_over_sft']}")
    print(f"stored: {st['bytes_per_token_k20']} bytes per answer token at K=20, {st['bytes_per_token_k5']} at K=5 "
          f"({st['side_file_bytes']} bytes for {st['answers']} answers)")
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    from lion.errors import cli_main

    cli_main(main)
