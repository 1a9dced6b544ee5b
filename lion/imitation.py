"""Phase 1, imitation: the teacher answers the Train Pool, the student is fine-tuned on the answers.

    python -m lion.imitation --config C --round R

Teacher answers are kept per (instruction id, teacher identity) in the run's answer store and reused by
discrimination and by later rounds, so no answer is ever bought twice. An empty, truncated-to-nothing or
failed answer is never a training target: it is counted and left out. An answer cut at the teacher's max_tokens
(finish_reason "length") is counted too, and left out unless `imitation.truncated: keep`.
Round R's student starts from round R-1's student (`student.continue_from_previous`; after round R-1's preference
stage, when `imitation.preference` is set, its result) or from the base model.
With `student.objective: topk_kd` each example carries its answer's top-k logprobs from the answer store.
"""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

from .answers import buy_teacher_answers, teacher_identity
from .context import RunContext, make_phase_parser, run_phase
from .errors import LionError
from .failures import check_failures
from .layout import RoundPaths
from .pools import prepare_round
from .records import count_rows, iter_pool, read_json_or_empty, write_json


def previous_student(ctx: RunContext, r: int) -> str:
    from .student import resolve_base_model

    if r > 1 and ctx.cfg.student.continue_from_previous:
        rp = ctx.run.round(r - 1)
        if ctx.run.is_done(r - 1, "preference") and rp.preference_student.is_dir():
            return str(rp.preference_student)  # the round's student after its preference stage (lion.preference)
        prev = rp.student
        if not prev.is_dir():
            raise LionError(
                f"{prev}: round {r - 1}'s student is missing; round {r} continues from it "
                f"(run round {r - 1}'s imitation first, or set student.continue_from_previous: false)"
            )
        return str(prev)
    return str(resolve_base_model(ctx.cfg.student, ctx.run.base_model))


def imitation(ctx: RunContext, r: int) -> dict[str, Any]:
    """Run phase 1 of round r (idempotent: a finished phase returns its saved metrics)."""
    rp = ctx.run.round(r)
    if ctx.run.is_done(r, "imitation"):
        return read_json_or_empty(rp.phase_metrics("imitation"))
    prepare_round(ctx, r)
    metrics = imitate(ctx, r, rp, previous_student(ctx, r), phase="imitation")
    write_json(rp.phase_metrics("imitation"), metrics)
    ctx.run.mark_done(r, "imitation")
    return metrics


def imitate(ctx: RunContext, r: int, rp: RoundPaths, init_from: str, *, phase: str, track: str = "") -> dict[str, Any]:
    """Buy the teacher's answers to `rp.train_pool` (ledger phase `phase`) and train `init_from` on them into
    `rp.student` with round r's recipe and seed; the figures. Shared by the loop's imitation and the control student
    (lion.control: `rp` its ControlPaths, phase "control-imitation", track "control")."""
    n_pool = count_rows(rp.train_pool)
    buy_teacher_answers(ctx, iter_pool(rp.train_pool), phase, total=n_pool,
                        desc=f"round {r} {track + ' ' if track else ''}teacher answers")
    who = teacher_identity(ctx.cfg)
    drop = ctx.cfg.imitation.truncated == "drop"
    kd = ctx.cfg.student.objective == "topk_kd"
    examples, n_failed, n_truncated = [], 0, 0
    for i in iter_pool(rp.train_pool):  # streamed; the answers come from the store one by one
        row = ctx.answers.get(i.id, who)
        if row is None or not row["answer"]:
            n_failed += 1
            continue
        cut = row.get("finish_reason") == "length"  # cut at llm.teacher.max_tokens
        n_truncated += cut
        if not (drop and cut):
            ex = {"instruction": i.instruction, "input": i.input, "output": row["answer"]}
            if kd and (blob := ctx.answers.logprobs(row)) is not None:  # the teacher's top-k (objective topk_kd)
                ex["teacher_logprobs"] = base64.b64encode(blob).decode("ascii")
            examples.append(ex)
    what = f"{track} Train Pool" if track else "Train Pool"
    if not examples:
        why = (f"{n_truncated} answers were cut at llm.teacher.max_tokens and imitation.truncated is drop; "
               "raise llm.teacher.max_tokens" if n_truncated else "see the gateway errors above")
        raise LionError(
            f"round {r}: none of the {n_pool} {what} instructions has a usable teacher answer ({n_failed} "
            f"failed); {why}"
        )
    check_failures(ctx.cfg, r, phase, f"teacher answers to the {what}", n_failed, n_pool,
                   f"; nothing was trained on the partial {what}")
    from .student.train import train_student

    result = train_student(
        ctx.cfg.student, examples, init_from, rp.student, seed=ctx.cfg.seed + r, progress=ctx.progress,
        logging_dir=ctx.run.trainer_logs(r, track) if "tensorboard" in ctx.cfg.student.report_targets() else None,
    )
    return {
        "n_train_pool": n_pool,
        "n_train": len(examples),
        "n_failed_answers": n_failed,
        "n_truncated_answers": n_truncated,
        "truncated_policy": ctx.cfg.imitation.truncated,
        "init_from": init_from,
        "student": str(result.path),
        "train": result.metrics,
    }


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
