"""Phase 2, discrimination: find the Cache Pool instructions where the student still falls short.

    python -m lion.discrimination --config C --round R

Teacher answers come from the answer store (bought once, ever); the round's student answers the whole
Cache Pool in batches, saved as they come (lion.answers); the referee scores both answers in both orders
(`lion.referee.judge_pairs`: the teacher's answer is the pair's reference, the student's the candidate). The gap
is the teacher's mean score minus the student's, over the two orders; an instruction is hard when
gap >= discrimination.tau, easy otherwise. A pair whose verdict could not be parsed after the retries, that has
no teacher answer, or whose prompt the student skipped (longer than its context, lion.student.infer), is excluded
and counted: it is never given a number.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .answers import student_answers, teacher_answers
from .context import RunContext, make_phase_parser, run_phase
from .errors import LionError
from .pools import prepare_round
from .records import Instruction, read_json_or_empty, read_pool, write_json, write_jsonl
from .referee import Pair, PairJudgement, judge_pairs
from .world import family_accuracy

Label = Literal["hard", "easy", "excluded"]


@dataclass
class SplitRow:
    """One Cache Pool instruction's fate this round (a row of split.jsonl)."""

    id: str
    label: Label
    teacher_score: float | None  # mean over both orders; None when excluded
    student_score: float | None
    gap: float | None  # teacher_score - student_score
    flipped: bool | None  # the referee's preference changed when the order was swapped
    reason: str | None  # why it was excluded
    instruction: str
    kind: str  # seed | hard | easy (lineage of the instruction)
    round_created: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def split_row(
    inst: Instruction, judged: PairJudgement | None, tau: float, unjudged: str = "no teacher answer"
) -> SplitRow:
    """hard / easy / excluded for one instruction, from its judgement (None: not judged, for reason `unjudged`)."""
    lineage = {"instruction": inst.instruction, "kind": inst.kind, "round_created": inst.round, "meta": inst.meta}
    if judged is None or not judged.ok:
        reason = unjudged if judged is None else "referee verdict unparseable"
        return SplitRow(inst.id, "excluded", None, None, None, None, reason, **lineage)
    t, s = judged.reference_score, judged.candidate_score
    assert t is not None and s is not None
    gap = t - s
    return SplitRow(inst.id, "hard" if gap >= tau else "easy", t, s, gap, judged.flipped, None, **lineage)


def discrimination(ctx: RunContext, r: int) -> dict[str, Any]:
    """Run phase 2 of round r (idempotent)."""
    rp = ctx.run.round(r)
    if ctx.run.is_done(r, "discrimination"):
        return read_json_or_empty(rp.phase_metrics("discrimination"))
    prepare_round(ctx, r)
    pool = read_pool(rp.cache_pool)
    t_ans = teacher_answers(ctx, pool, "discrimination")
    if not rp.student.is_dir():
        raise LionError(f"{rp.student}: round {r}'s student is missing; run round {r}'s imitation first")
    s_ans = student_answers(ctx, rp.student, pool, rp.student_answers)

    pairs = [
        Pair(i.id, _shown(i), t_ans[i.id], s_ans[i.id])  # type: ignore[arg-type]
        for i in pool
        if t_ans[i.id] is not None and s_ans[i.id] is not None
    ]
    dc = ctx.cfg.discrimination
    judged = judge_pairs(
        ctx.gateway,
        "referee",
        "discrimination",
        pairs,
        ctx.template("referee"),
        attempts=dc.referee_attempts,
        both_orders=dc.both_orders,
        desc=f"round {r} referee",
        retry_temperature=dc.referee_retry_temperature,
    )
    by_id = {j.id: j for j in judged}
    judgement_rows = [v.to_row(j.id, "teacher", "student") for j in judged for v in j.verdicts]
    split = [split_row(i, by_id.get(i.id), dc.tau, _unjudged(t_ans[i.id], s_ans[i.id])) for i in pool]
    write_jsonl(rp.judgements, judgement_rows)
    write_jsonl(rp.split, (row.to_json() for row in split))
    metrics = discrimination_metrics(split, judged)
    if ctx.world is not None:  # offline world: the student's exact accuracy on the Cache Pool
        metrics["oracle"] = family_accuracy(ctx.world, ((i.instruction, s_ans.get(i.id) or "") for i in pool))
    write_json(rp.phase_metrics("discrimination"), metrics)
    ctx.run.mark_done(r, "discrimination")
    return metrics


def _unjudged(teacher: str | None, student: str | None) -> str:
    return "no teacher answer" if teacher is None else "student skipped the prompt (longer than its context)"


def _shown(inst: Instruction) -> str:
    """The instruction as the referee sees it (its input below it)."""
    return inst.instruction + (f"\n\n{inst.input}" if inst.input else "")


def discrimination_metrics(split: Sequence[SplitRow], judged: Sequence[PairJudgement]) -> dict[str, Any]:
    rows = [s for s in split if s.label != "excluded"]
    hard = sum(1 for s in rows if s.label == "hard")
    flips = [s.flipped for s in rows if s.flipped is not None]
    verdicts = [v for j in judged for v in j.verdicts]
    failed_orders = sum(1 for v in verdicts if not v.ok)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "n": len(split),
        "hard": hard,
        "easy": len(rows) - hard,
        "excluded": len(split) - len(rows),
        "hard_ratio": hard / len(rows) if rows else None,
        "teacher_mean": mean([s.teacher_score for s in rows]),
        "student_mean": mean([s.student_score for s in rows]),
        "gap_mean": mean([s.gap for s in rows]),
        "parse_failures": failed_orders,
        "parse_failure_rate": failed_orders / len(verdicts) if verdicts else 0.0,
        "swap_flip_rate": sum(flips) / len(flips) if flips else None,
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
