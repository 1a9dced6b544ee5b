"""One round of configs/local-real.yaml, phase by phase, with the figures of an all-real run.

    python bench/local_real.py [--config configs/local-real.yaml] [--run-dir runs/bench-local-real] [--set K=V ...]
    python bench/local_real.py --set pools.limit=12 --set generation.n_hard=4 --set generation.n_easy=4   # quick look

Runs the round the way `python -m lion.run` does (same phase functions, same run directory), but times each step
apart: building the student (GGUF conversion on first use, depth pruning), the teacher's answers (bought before
imitation so that their time is not the training's), the training, the student's answers, the rest of
discrimination (the run's selector and each shadow selector), and generation. Then the teacher answers the
held-out instructions (data/local_real_heldout.jsonl: never in any pool) and the student's mean per-token loss on
those answers is measured before imitation (the pruned base) and after it (the round's student).

Prints, measured side by side in one run: teacher answers/s and tokens/s (and the student's own tokens/s on the
same kind of prompt), the referee's parse-failure rate, the hard share under each selector and their agreement,
generation acceptance and each rejection reason, the held-out loss before/after (and its ratio), wall time per
phase; and ends with one JSON line. The run directory stays for `python -m lion.report RUN_DIR`. An existing run
directory is removed first unless --resume is given (then finished phases are skipped and cached calls replayed,
so the times are not those of a fresh run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lion.answers import student_answers, teacher_answers  # noqa: E402
from lion.config import load_config  # noqa: E402
from lion.context import RunContext  # noqa: E402
from lion.discrimination import discrimination  # noqa: E402
from lion.generation import generation  # noqa: E402
from lion.imitation import imitation, previous_student  # noqa: E402
from lion.pools import prepare_round  # noqa: E402
from lion.records import load_instructions, read_pool  # noqa: E402
from lion.run import round_metrics  # noqa: E402


def _usage(ctx: RunContext) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = {}
    for row in ctx.gateway.usage_summary()["by"]:
        acc = out.setdefault((str(row["role"]), str(row["phase"])), Counter())
        for k in ("calls", "cached", "failed", "tokens_in", "tokens_out"):
            acc[k] += float(row.get(k) or 0)
    return out


def _delta(before: dict, after: dict, role: str, phase: str) -> dict[str, float]:
    a, b = after.get((role, phase), {}), before.get((role, phase), {})
    return {k: a.get(k, 0) - b.get(k, 0) for k in ("calls", "cached", "failed", "tokens_in", "tokens_out")}


def _rate(n: float, s: float) -> float | None:
    return round(n / s, 2) if s > 0 else None


def bench(cfg_path: str, overrides: list[str], heldout: Path, progress: bool) -> dict[str, Any]:
    from lion.student.score import answer_losses

    cfg = load_config(cfg_path, overrides)
    wall: dict[str, float] = {}
    t_all = time.perf_counter()
    with RunContext(cfg, progress=progress) as ctx:
        rp = ctx.run.round(1)
        t = time.perf_counter()
        prepare_round(ctx, 1)
        base = previous_student(ctx, 1)  # GGUF -> HF folder (once per machine), pruned to keep_layers (once per run)
        wall["student_base"] = time.perf_counter() - t

        pool = read_pool(rp.train_pool)
        u0 = _usage(ctx)
        t = time.perf_counter()
        t_ans = teacher_answers(ctx, pool, "imitation")
        wall["teacher_answers"] = time.perf_counter() - t
        teacher = _delta(u0, _usage(ctx), "teacher", "imitation")
        n_answered = sum(1 for v in t_ans.values() if v)

        t = time.perf_counter()
        im = imitation(ctx, 1)
        wall["training"] = time.perf_counter() - t

        cache = read_pool(rp.cache_pool)
        t = time.perf_counter()
        s_ans = student_answers(ctx, rp.student, cache, rp.student_answers)
        wall["student_answers"] = time.perf_counter() - t
        student_tokens = _student_tokens(rp.student, list(s_ans.values()))

        u1 = _usage(ctx)
        t = time.perf_counter()
        disc = discrimination(ctx, 1)
        wall["discrimination_rest"] = time.perf_counter() - t
        referee = _delta(u1, _usage(ctx), "referee", "discrimination")

        u2 = _usage(ctx)
        t = time.perf_counter()
        gen = generation(ctx, 1)
        wall["generation"] = time.perf_counter() - t
        generator = _delta(u2, _usage(ctx), "generator", "generation")
        round_metrics(ctx, 1)
        ctx.run.set_rounds_completed(1)
        wall["round"] = time.perf_counter() - t_all

        # held-out: the student's loss on the teacher's answers, before and after imitation
        questions, _ = load_instructions(heldout)
        t = time.perf_counter()
        h_ans = teacher_answers(ctx, questions, "eval")
        wall["heldout_teacher_answers"] = time.perf_counter() - t
        answered = [q for q in questions if h_ans[q.id]]
        sc = cfg.student
        from lion.student.data import format_prompt
        from lion.student.infer import load_prompt_tokenizer

        tok = load_prompt_tokenizer(base) if sc.prompt_format == "chat_template" else None
        prompts = [format_prompt(q.instruction, q.input, fmt=sc.prompt_format, tokenizer=tok) for q in answered]
        targets = [h_ans[q.id] or "" for q in answered]
        t = time.perf_counter()
        before = answer_losses(base, prompts, targets, sc.infer, max_length=sc.max_length, progress=progress)
        after = answer_losses(rp.student, prompts, targets, sc.infer, max_length=sc.max_length, progress=progress)
        wall["heldout_losses"] = time.perf_counter() - t
        responder = getattr(getattr(ctx._server, "responder", None), "stats", None)
    wall["total"] = time.perf_counter() - t_all

    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    pairs = [(b, a) for b, a in zip(before, after, strict=True) if b is not None and a is not None]
    loss_before, loss_after = mean([b for b, _ in pairs]), mean([a for _, a in pairs])
    shadows = disc.get("shadows") or {}
    ref = disc if disc.get("n_verdicts") else shadows.get("referee", {})
    requests = sum(gen["requests"].values())
    accepted = sum(gen["accepted"].values())
    train = im.get("train", {})
    figures: dict[str, Any] = {
        "config": cfg_path,
        "pool": len(pool),
        "teacher": {"answers": n_answered, "calls": teacher["calls"], "failed": teacher["failed"],
                    "tokens_out": teacher["tokens_out"], "tokens_in": teacher["tokens_in"],
                    "answers_per_s": _rate(n_answered, wall["teacher_answers"]),
                    "tokens_per_s": _rate(teacher["tokens_out"], wall["teacher_answers"])},
        "student_answers": {"answers": len(s_ans), "tokens_out": student_tokens,
                            "tokens_per_s": _rate(student_tokens, wall["student_answers"])},
        "training": {"examples": im.get("n_train"), "steps": train.get("steps"), "loss_first": train.get("train_loss_first"),
                     "loss_last": train.get("train_loss_last"), "tokens_per_s": train.get("tokens_per_s")},
        "referee": {"verdicts": ref.get("n_verdicts", 0), "parse_failures": ref.get("parse_failures", 0),
                    "parse_failure_rate": ref.get("parse_failure_rate"), "calls": referee["calls"],
                    "tokens_out": referee["tokens_out"], "excluded_pairs": ref.get("excluded")},
        "hard_share": {disc["selector"]: disc.get("hard_ratio"),
                       **{f"{k} (shadow)": v.get("hard_ratio") for k, v in shadows.items()}},
        "agreement": {k: v.get("agreement") for k, v in shadows.items()},
        "generation": {"requests": requests, "accepted": gen["accepted"], "wanted": gen["wanted"],
                       "acceptance": round(accepted / requests, 4) if requests else None,
                       "rejected": gen["rejected"], "stopped": gen["stopped"],
                       "tokens_out": generator["tokens_out"]},
        "heldout": {"questions": len(questions), "scored": len(pairs), "loss_before": loss_before,
                    "loss_after": loss_after,
                    "after_over_before": round(loss_after / loss_before, 4) if loss_before and loss_after else None},
        "wall_s": {k: round(v, 1) for k, v in wall.items()},
        "run_dir": cfg.run_dir,
    }
    if responder is not None:
        figures["responder"] = {"batches": responder.batches, "requests": responder.requests,
                                "mean_batch": round(responder.requests / responder.batches, 2) if responder.batches else None,
                                "largest_batch": responder.largest_batch,
                                "generate_tokens_per_s": _rate(responder.completion_tokens, responder.generate_s)}
    if figures["teacher"]["tokens_per_s"] and figures["student_answers"]["tokens_per_s"]:
        figures["student_over_teacher_tokens_per_s"] = round(
            figures["student_answers"]["tokens_per_s"] / figures["teacher"]["tokens_per_s"], 2)
    return figures


def _student_tokens(model: Path, answers: list[str]) -> int:
    from lion.student.infer import load_prompt_tokenizer

    tok = load_prompt_tokenizer(model)
    return sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)


def show(f: dict[str, Any]) -> None:
    t, s, r, g, h, w = f["teacher"], f["student_answers"], f["referee"], f["generation"], f["heldout"], f["wall_s"]
    print(f"pool {f['pool']} instructions ({f['config']})")
    print(f"teacher: {t['answers']} answers, {t['tokens_out']:.0f} tokens in {w['teacher_answers']} s: "
          f"{t['answers_per_s']} answers/s, {t['tokens_per_s']} tokens/s ({t['failed']:.0f} failed calls)")
    print(f"student answers: {s['answers']}, {s['tokens_out']} tokens in {w['student_answers']} s: {s['tokens_per_s']} "
          f"tokens/s (x{f.get('student_over_teacher_tokens_per_s', '-')} the teacher's)")
    print(f"training: {f['training']['examples']} examples, {f['training']['steps']} steps, loss "
          f"{f['training']['loss_first']} -> {f['training']['loss_last']}, {f['training']['tokens_per_s']} tokens/s")
    print(f"referee (LLM): {r['parse_failures']}/{r['verdicts']} verdicts unparseable "
          f"({r['parse_failure_rate'] if r['parse_failure_rate'] is None else round(100 * r['parse_failure_rate'], 1)}%),"
          f" {r['excluded_pairs']} pairs excluded, {r['tokens_out']:.0f} tokens")
    print("hard share: " + ", ".join(f"{k} {v if v is None else round(v, 3)}" for k, v in f["hard_share"].items())
          + "; agreement with the run's split: "
          + (", ".join(f"{k} {v if v is None else round(v, 3)}" for k, v in f["agreement"].items()) or "-"))
    print(f"generation: {sum(g['accepted'].values())} accepted of {g['requests']} requests "
          f"(acceptance {g['acceptance']}), rejected by reason {g['rejected']}, stopped: {g['stopped']}")
    print(f"held-out ({h['scored']}/{h['questions']} scored): student loss on the teacher's answers "
          f"{h['loss_before']} before imitation -> {h['loss_after']} after (x{h['after_over_before']})")
    if "responder" in f:
        rr = f["responder"]
        print(f"local server: {rr['requests']} requests in {rr['batches']} batches (mean {rr['mean_batch']}, largest "
              f"{rr['largest_batch']}), {rr['generate_tokens_per_s']} tokens/s inside generate")
    print("wall time (s): " + ", ".join(f"{k} {v}" for k, v in w.items()))


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/local_real.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "local-real.yaml"))
    p.add_argument("--run-dir", default="runs/bench-local-real")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--heldout", type=Path, default=ROOT / "data" / "local_real_heldout.jsonl")
    p.add_argument("--resume", action="store_true", help="keep an existing run directory (times then include replays)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    if run_dir.exists() and not args.resume:
        shutil.rmtree(run_dir)
    figures = bench(args.config, [*args.overrides, f"run_dir={run_dir}"], args.heldout, args.progress)
    show(figures)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    from lion.errors import cli_main

    cli_main(main)
