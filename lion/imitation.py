"""Phase 1, imitation: the teacher answers the Train Pool, the student is fine-tuned on the answers.

    python -m lion.imitation --config C --round R

Teacher answers are kept per (instruction id, teacher identity) in the run's answer store and reused by
discrimination and by later rounds, so no answer is ever bought twice. An empty, truncated-to-nothing or
failed answer is never a training target: it is counted and left out. An answer cut at the teacher's max_tokens
(finish_reason "length") is counted too, and left out unless `imitation.truncated: keep`.
Round R's student starts from round R-1's student (`student.continue_from_previous`) or from the base model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .answers import teacher_answers, teacher_identity
from .context import RunContext, make_phase_parser, run_phase
from .errors import LionError
from .failures import check_failures
from .pools import prepare_round
from .records import Instruction, read_json_or_empty, read_pool, write_json


def previous_student(ctx: RunContext, r: int) -> str:
    from .student import resolve_base_model

    if r > 1 and ctx.cfg.student.continue_from_previous:
        prev = ctx.run.round(r - 1).student
        if not prev.is_dir():
            raise LionError(
                f"{prev}: round {r - 1}'s student is missing; round {r} continues from it "
                f"(run round {r - 1}'s imitation first, or set student.continue_from_previous: false)"
            )
        return str(prev)
    return str(resolve_base_model(ctx.cfg.student, ctx.run.base_model))


def truncated_answers(ctx: RunContext, pool: Sequence[Instruction], answers: dict[str, str | None]) -> set[str]:
    """Ids whose teacher answer was cut at max_tokens (finish_reason "length"), from the answer store."""
    who = teacher_identity(ctx.cfg)
    out = set()
    for i in pool:
        row = ctx.answers.get(i.id, who) if answers.get(i.id) else None
        if row is not None and row.get("finish_reason") == "length":
            out.add(i.id)
    return out


def imitation(ctx: RunContext, r: int) -> dict[str, Any]:
    """Run phase 1 of round r (idempotent: a finished phase returns its saved metrics)."""
    rp = ctx.run.round(r)
    if ctx.run.is_done(r, "imitation"):
        return read_json_or_empty(rp.phase_metrics("imitation"))
    prepare_round(ctx, r)
    pool = read_pool(rp.train_pool)
    answers = teacher_answers(ctx, pool, "imitation")
    truncated = truncated_answers(ctx, pool, answers)
    drop = ctx.cfg.imitation.truncated == "drop"
    examples = [
        {"instruction": i.instruction, "input": i.input, "output": answers[i.id]}
        for i in pool
        if answers[i.id] and not (drop and i.id in truncated)
    ]
    n_failed = sum(1 for i in pool if not answers[i.id])
    if not examples:
        why = (f"{len(truncated)} answers were cut at llm.teacher.max_tokens and imitation.truncated is drop; "
               "raise llm.teacher.max_tokens" if truncated else "see the gateway errors above")
        raise LionError(
            f"round {r}: none of the {len(pool)} Train Pool instructions has a usable teacher answer ({n_failed} "
            f"failed); {why}"
        )
    check_failures(ctx.cfg, r, "imitation", "teacher answers to the Train Pool",
                   sum(1 for i in pool if answers[i.id] is None), len(pool),
                   "; nothing was trained on the partial Train Pool")
    from .student.train import train_student

    init_from = previous_student(ctx, r)
    result = train_student(
        ctx.cfg.student, examples, init_from, rp.student, seed=ctx.cfg.seed + r, progress=ctx.progress,
        logging_dir=ctx.run.trainer_logs(r) if "tensorboard" in ctx.cfg.student.report_targets() else None,
    )
    metrics = {
        "n_train_pool": len(pool),
        "n_train": len(examples),
        "n_failed_answers": n_failed,
        "n_truncated_answers": len(truncated),
        "truncated_policy": ctx.cfg.imitation.truncated,
        "init_from": init_from,
        "student": str(result.path),
        "train": result.metrics,
    }
    write_json(rp.phase_metrics("imitation"), metrics)
    ctx.run.mark_done(r, "imitation")
    return metrics


def make_parser() -> argparse.ArgumentParser:
    return make_phase_parser("imitation", __doc__)


def main(argv: list[str] | None = None) -> int:
    return run_phase(
        imitation,
        make_parser().parse_args(argv),
        lambda m: (
            f"{m['n_train']} examples ({m['n_failed_answers']} without a usable teacher answer, "
            f"{m.get('n_truncated_answers', 0)} truncated ones "
            f"{'kept' if m.get('truncated_policy') == 'keep' else 'dropped'}), "
            f"student at {m['student']}"
        ),
    )


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
