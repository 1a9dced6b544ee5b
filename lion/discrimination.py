"""Phase 2, discrimination: find the Cache Pool instructions where the student still falls short.

    python -m lion.discrimination --config C --round R

Teacher answers come from the answer store (bought once, ever); the round's student answers the whole
Cache Pool in batches; the referee scores both answers in both orders (`lion.referee.judge_pairs`). The gap
is the teacher's mean score minus the student's, over the two orders; an instruction is hard when
gap >= discrimination.tau, easy otherwise. A pair whose verdict could not be parsed after the retries, or
that has no teacher answer, is excluded and counted: it is never given a number.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .context import RunContext, make_phase_parser, run_phase
from .errors import LionError
from .imitation import teacher_answers
from .pools import prepare_round
from .records import read_json_or_empty, read_jsonl, read_pool, write_json, write_jsonl


def student_answers(ctx: RunContext, r: int, pool: list[Any]) -> dict[str, str]:
    """The round's student answers every instruction (saved, so a resumed phase does not regenerate)."""
    path = ctx.round_dir(r) / "student_answers.jsonl"
    if path.exists():
        saved = {row["id"]: row["answer"] for row in read_jsonl(path)}
        if all(i.id in saved for i in pool):
            return saved
    student = ctx.run.student_dir(r)
    if not student.is_dir():
        raise LionError(f"{student}: round {r}'s student is missing; run round {r}'s imitation first")
    from .student.data import format_prompt
    from .student.infer import generate

    sc = ctx.cfg.student
    tokenizer = None
    if sc.prompt_format == "chat_template":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(student)
    prompts = [format_prompt(i.instruction, i.input, fmt=sc.prompt_format, tokenizer=tokenizer) for i in pool]
    outs = generate(student, prompts, sc.infer, progress=ctx.progress)
    write_jsonl(path, ({"id": i.id, "answer": a} for i, a in zip(pool, outs)))
    return {i.id: a for i, a in zip(pool, outs)}


def split_pairs(judged: list[Any], tau: float) -> list[dict[str, Any]]:
    """hard / easy / excluded per instruction from the referee's judgements."""
    rows = []
    for j in judged:
        if j.ok and j.score_1 is not None and j.score_2 is not None:
            gap = j.score_1 - j.score_2
            label = "hard" if gap >= tau else "easy"
            rows.append(
                {
                    "id": j.id,
                    "teacher_score": j.score_1,
                    "student_score": j.score_2,
                    "gap": gap,
                    "label": label,
                    "flipped": j.flipped,
                }
            )
        else:
            rows.append(
                {
                    "id": j.id,
                    "teacher_score": None,
                    "student_score": None,
                    "gap": None,
                    "label": "excluded",
                    "flipped": None,
                }
            )
    return rows


def discrimination(ctx: RunContext, r: int) -> dict[str, Any]:
    """Run phase 2 of round r (idempotent)."""
    from .referee import judge_pairs

    rd = ctx.round_dir(r)
    if ctx.run.is_done(r, "discrimination"):
        return read_json_or_empty(rd / "discrimination.json")
    prepare_round(ctx, r)
    pool = read_pool(rd / "cache_pool.jsonl")
    t_ans = teacher_answers(ctx, pool, "discrimination")
    s_ans = student_answers(ctx, r, pool)

    items = [
        (i.id, i.instruction + (f"\n\n{i.input}" if i.input else ""), t_ans[i.id], s_ans[i.id])
        for i in pool
        if t_ans[i.id] is not None
    ]
    dc = ctx.cfg.discrimination
    judged = judge_pairs(
        ctx.gateway,
        "referee",
        "discrimination",
        items,
        ctx.template("referee"),
        attempts=dc.referee_attempts,
        both_orders=dc.both_orders,
        desc=f"round {r} referee",
        retry_temperature=dc.referee_retry_temperature,
    )
    by_id = {j.id: j for j in judged}

    judgement_rows = []
    for j in judged:
        for o in j.orders:
            judgement_rows.append(
                {
                    "id": j.id,
                    "order": "ts" if o["order"] == "12" else "st",
                    "raw": o.get("raw"),
                    "teacher_score": o.get("score_1"),
                    "student_score": o.get("score_2"),
                    "ok": o.get("ok"),
                    "error": o.get("error"),
                    "attempts": o.get("attempts"),
                    "rejected": o.get("rejected", []),  # earlier unreadable replies, kept for inspection
                }
            )
    split = split_pairs(judged, dc.tau)
    no_teacher = [i for i in pool if t_ans[i.id] is None]
    split += [
        {
            "id": i.id,
            "teacher_score": None,
            "student_score": None,
            "gap": None,
            "label": "excluded",
            "flipped": None,
            "reason": "no teacher answer",
        }
        for i in no_teacher
    ]
    meta = {i.id: i for i in pool}
    for row in split:
        inst = meta[row["id"]]
        row["instruction"] = inst.instruction
        row["kind"] = inst.kind
        row["round_created"] = inst.round
        row["meta"] = inst.meta
        if row["label"] == "excluded" and "reason" not in row:
            row["reason"] = "referee verdict unparseable" if row["id"] in by_id else "not judged"

    order = {i.id: n for n, i in enumerate(pool)}
    split.sort(key=lambda row: order[row["id"]])
    write_jsonl(rd / "judgements.jsonl", judgement_rows)
    write_jsonl(rd / "split.jsonl", split)
    metrics = discrimination_metrics(split, judgement_rows)
    if ctx.cfg.sim.enabled and ctx.cfg.sim.responder == "oracle":
        metrics["oracle"] = oracle_accuracy(pool, s_ans)
    write_json(rd / "discrimination.json", metrics)
    ctx.run.mark_done(r, "discrimination")
    return metrics


def discrimination_metrics(split: list[dict[str, Any]], judgements: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [s for s in split if s["label"] != "excluded"]
    hard = sum(1 for s in judged if s["label"] == "hard")
    flips = [s["flipped"] for s in judged if s["flipped"] is not None]
    failed_orders = sum(1 for j in judgements if not j["ok"])
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "n": len(split),
        "hard": hard,
        "easy": len(judged) - hard,
        "excluded": len(split) - len(judged),
        "hard_ratio": hard / len(judged) if judged else None,
        "teacher_mean": mean([s["teacher_score"] for s in judged]),
        "student_mean": mean([s["student_score"] for s in judged]),
        "gap_mean": mean([s["gap"] for s in judged]),
        "parse_failures": failed_orders,
        "parse_failure_rate": failed_orders / len(judgements) if judgements else 0.0,
        "swap_flip_rate": sum(flips) / len(flips) if flips else None,
    }


def oracle_accuracy(pool: list[Any], answers: dict[str, str]) -> dict[str, Any]:
    """Offline world only: the student's exact accuracy per task family against the oracle's truth."""
    from .sim.tasks import grade, parse_task

    per: dict[str, list[int]] = {}
    for inst in pool:
        task = parse_task(inst.instruction)
        if task is None:
            continue
        ok = grade(inst.instruction, answers.get(inst.id, ""))
        per.setdefault(task.family, []).append(1 if ok else 0)
    acc = {f: sum(v) / len(v) for f, v in sorted(per.items())}
    n = sum(len(v) for v in per.values())
    return {
        "accuracy": acc,
        "n": {f: len(v) for f, v in sorted(per.items())},
        "overall": sum(sum(v) for v in per.values()) / n if n else None,
    }


def make_parser() -> argparse.ArgumentParser:
    return make_phase_parser("discrimination", __doc__)


def main(argv: list[str] | None = None) -> int:
    return run_phase(
        discrimination,
        make_parser().parse_args(argv),
        lambda m: (
            f"{m['hard']} hard, {m['easy']} easy, {m['excluded']} excluded "
            f"(hard ratio {'-' if m['hard_ratio'] is None else format(m['hard_ratio'], '.2f')})"
        ),
    )


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
