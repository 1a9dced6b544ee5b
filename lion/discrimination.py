"""Phase 2, discrimination: find the Cache Pool instructions where the student still falls short.

    python -m lion.discrimination --config C --round R

Teacher answers come from the answer store (bought once, ever, streamed through the gateway); then the Cache
Pool is taken `discrimination.chunk_size` instructions at a time: the round's student answers the chunk (saved
as they come, lion.answers), the referee scores both answers in both orders
(`lion.referee.judge_pairs`: the teacher's answer is the pair's reference, the student's the candidate). The gap
is the teacher's mean score minus the student's, over the two orders; an instruction is hard when
gap >= discrimination.tau, easy otherwise. A pair whose verdict could not be parsed after the retries, or
that has no teacher answer, is excluded and counted: it is never given a number. Each chunk's judgements and
split rows are appended as it finishes and `discrimination.progress.json` records where the files end, so memory
holds one chunk whatever the pool's size, and an interrupted phase resumes at its last whole chunk (the calls of
the half-done one replay from the cache). The figures are computed from the files at the end.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any, Literal

from .answers import StudentAnswerer, buy_teacher_answers, teacher_identity
from .context import RunContext, make_phase_parser, run_phase
from .errors import LionError
from .layout import RoundPaths
from .pools import prepare_round
from .records import Instruction, append_jsonl_rows, count_rows, iter_jsonl, iter_pool, read_json_or_empty, write_json
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


def split_row(inst: Instruction, judged: PairJudgement | None, tau: float) -> SplitRow:
    """hard / easy / excluded for one instruction, from its judgement (None: it has no teacher answer)."""
    lineage = {"instruction": inst.instruction, "kind": inst.kind, "round_created": inst.round, "meta": inst.meta}
    if judged is None or not judged.ok:
        reason = "no teacher answer" if judged is None else "referee verdict unparseable"
        return SplitRow(inst.id, "excluded", None, None, None, None, reason, **lineage)
    t, s = judged.reference_score, judged.candidate_score
    assert t is not None and s is not None
    gap = t - s
    return SplitRow(inst.id, "hard" if gap >= tau else "easy", t, s, gap, judged.flipped, None, **lineage)


def discrimination(ctx: RunContext, r: int) -> dict[str, Any]:
    """Run phase 2 of round r (idempotent; resumes a phase interrupted between chunks)."""
    rp = ctx.run.round(r)
    if ctx.run.is_done(r, "discrimination"):
        return read_json_or_empty(rp.phase_metrics("discrimination"))
    prepare_round(ctx, r)
    if not rp.student.is_dir():
        raise LionError(f"{rp.student}: round {r}'s student is missing; run round {r}'s imitation first")
    n_pool = count_rows(rp.cache_pool)
    buy_teacher_answers(ctx, iter_pool(rp.cache_pool), "discrimination", total=n_pool,
                        desc=f"round {r} teacher answers")
    progress = _Progress.resume(rp)
    dc = ctx.cfg.discrimination
    who = teacher_identity(ctx.cfg)
    pool = iter_pool(rp.cache_pool)
    for _ in range(progress.rows):  # the chunks judged before an interruption
        next(pool)
    with StudentAnswerer(ctx, rp.student, rp.student_answers, phase="discrimination",
                         resume_from=progress.student_answers) as answerer:
        for chunk in _chunks(pool, dc.chunk_size):
            t_ans = {i.id: (row["answer"] if (row := ctx.answers.get(i.id, who)) else None) for i in chunk}
            s_ans = answerer.answer(chunk)
            pairs = [Pair(i.id, _shown(i), t, s_ans[i.id]) for i in chunk if (t := t_ans[i.id]) is not None]
            judged = judge_pairs(
                ctx.gateway,
                "referee",
                "discrimination",
                pairs,
                ctx.template("referee"),
                attempts=dc.referee_attempts,
                both_orders=dc.both_orders,
                desc=f"round {r} referee ({progress.rows + len(chunk)}/{n_pool})" if n_pool > len(chunk) else
                f"round {r} referee",
                retry_temperature=dc.referee_retry_temperature,
            )
            by_id = {j.id: j for j in judged}
            append_jsonl_rows(rp.judgements, (v.to_row(j.id, "teacher", "student") for j in judged for v in j.verdicts))
            append_jsonl_rows(rp.split, (split_row(i, by_id.get(i.id), dc.tau).to_json() for i in chunk))
            if ctx.world is not None:  # offline world: the student's exact accuracy on the Cache Pool
                progress.add_oracle(family_accuracy(ctx.world, ((i.instruction, s_ans[i.id]) for i in chunk)))
            progress.advance(rp, len(chunk), answerer.end_offset())
    metrics = metrics_from_files(rp)
    if ctx.world is not None:
        metrics["oracle"] = progress.oracle()
    write_json(rp.phase_metrics("discrimination"), metrics)
    ctx.run.mark_done(r, "discrimination")
    rp.discrimination_progress.unlink(missing_ok=True)
    return metrics


def _chunks(items: Iterator[Instruction], n: int) -> Iterator[list[Instruction]]:
    while chunk := list(itertools.islice(items, n)):
        yield chunk


@dataclass
class _Progress:
    """Where an interrupted discrimination stands (round_XX/discrimination.progress.json, rewritten after each
    chunk): Cache Pool rows judged, the byte lengths of judgements.jsonl, split.jsonl and student_answers.jsonl
    at that point, and the offline world's per-family counts so far."""

    rows: int = 0
    judgements: int = 0
    split: int = 0
    student_answers: int = 0
    correct: dict[str, int] = field(default_factory=dict)
    graded: dict[str, int] = field(default_factory=dict)

    @classmethod
    def resume(cls, rp: RoundPaths) -> _Progress:
        """The saved progress, with the appended files cut back to it (rows of a chunk the interruption left
        half-written go, and are produced again, from the caches, with the chunk); a fresh start otherwise."""
        saved = read_json_or_empty(rp.discrimination_progress)
        known = {f.name for f in dataclass_fields(cls)}
        progress = cls(**{k: v for k, v in saved.items() if k in known})
        for path, length in ((rp.judgements, progress.judgements), (rp.split, progress.split)):
            if path.exists() and path.stat().st_size > length:
                with path.open("rb+") as f:
                    f.truncate(length)
        return progress

    def advance(self, rp: RoundPaths, rows: int, student_answers: int) -> None:
        self.rows += rows
        self.judgements = rp.judgements.stat().st_size if rp.judgements.exists() else 0
        self.split = rp.split.stat().st_size if rp.split.exists() else 0
        self.student_answers = student_answers
        write_json(rp.discrimination_progress, asdict(self))

    def add_oracle(self, acc: dict[str, Any]) -> None:
        for fam, n in acc["n"].items():
            self.graded[fam] = self.graded.get(fam, 0) + n
            self.correct[fam] = self.correct.get(fam, 0) + round(acc["accuracy"][fam] * n)

    def oracle(self) -> dict[str, Any]:
        """The same figures as `lion.world.family_accuracy` over the whole Cache Pool."""
        fams = sorted(self.graded)
        n = sum(self.graded.values())
        return {"accuracy": {f: self.correct[f] / self.graded[f] for f in fams}, "n": {f: self.graded[f] for f in fams},
                "overall": sum(self.correct.values()) / n if n else None}


def _shown(inst: Instruction) -> str:
    """The instruction as the referee sees it (its input below it)."""
    return inst.instruction + (f"\n\n{inst.input}" if inst.input else "")


def discrimination_metrics(split: Sequence[SplitRow], judged: Sequence[PairJudgement]) -> dict[str, Any]:
    return _metrics((s.to_json() for s in split), (v.ok for j in judged for v in j.verdicts))


def metrics_from_files(rp: RoundPaths) -> dict[str, Any]:
    """The phase's figures from split.jsonl and judgements.jsonl, streamed (one row in memory at a time)."""
    return _metrics((row for _, row in iter_jsonl(rp.split)), (bool(row.get("ok")) for _, row in iter_jsonl(rp.judgements)))


def _metrics(split_rows: Iterable[dict[str, Any]], verdict_ok: Iterable[bool]) -> dict[str, Any]:
    n = hard = flips = flip_n = 0
    sums = {"teacher_score": 0.0, "student_score": 0.0, "gap": 0.0}
    kept = 0
    for row in split_rows:
        n += 1
        if row["label"] == "excluded":
            continue
        kept += 1
        hard += row["label"] == "hard"
        for k in sums:
            sums[k] += row[k]
        if row.get("flipped") is not None:
            flip_n += 1
            flips += bool(row["flipped"])
    verdicts = failed = 0
    for ok in verdict_ok:
        verdicts += 1
        failed += not ok
    mean = (lambda k: sums[k] / kept if kept else None)  # noqa: E731
    return {
        "n": n,
        "hard": hard,
        "easy": kept - hard,
        "excluded": n - kept,
        "hard_ratio": hard / kept if kept else None,
        "teacher_mean": mean("teacher_score"),
        "student_mean": mean("student_score"),
        "gap_mean": mean("gap"),
        "parse_failures": failed,
        "parse_failure_rate": failed / verdicts if verdicts else 0.0,
        "swap_flip_rate": flips / flip_n if flip_n else None,
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
