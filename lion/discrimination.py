"""Phase 2, discrimination: find the Cache Pool instructions where the student still falls short.

    python -m lion.discrimination --config C --round R

Teacher answers come from the answer store (bought once, ever, streamed through the gateway); then the Cache
Pool is taken `discrimination.chunk_size` instructions at a time: the round's student answers the chunk (saved
as they come, lion.answers) and the selector (`discrimination.selector`, lion.selectors) labels it. The paper's
`referee` scores both answers in both orders (`lion.referee.judge_pairs`: the teacher's answer is the pair's
reference, the student's the candidate), with the prompts/ referee template or, when
`discrimination.referee_prompts` names a FastChat-style prompt file, the prompt of each instruction's category,
each read in the verdict format it declares; the gap is the teacher's mean score minus the student's, over the
two orders; an instruction is hard when gap >= discrimination.tau, easy otherwise. A pair whose verdict could not
be parsed after the retries, that has no teacher answer, or whose prompt the student skipped (longer than its
context, lion.student.infer), is excluded and counted: it is never given a number. Gates (lion.failures): failed
referee calls above llm.max_failure_rate, and pairs left without a readable verdict above llm.max_unparsed_rate
(over the pairs judged so far, checked after each chunk), stop the phase without its .done marker (exit status 4).
With `discrimination.only_unseen`, only Cache Pool items the student was never trained on are judged.
A student answer cut at `student.infer.max_new_tokens` is counted (`student_truncated`, and how many of them were
labelled hard) and judged as it is, or excluded with `discrimination.truncated_student: exclude`.
discrimination.json records how the student answered (`student_infer`: backend, dtype, sampling).

Each chunk's judgements and split rows are appended as it finishes and `discrimination.progress.json` records
where the files end, so memory holds one chunk whatever the pool's size, and an interrupted phase resumes at
its last whole chunk (the calls of the half-done one replay from the cache). The figures are computed from the
files at the end. `student_loss` and `learnable` label by a ranking or a history over the whole pool, so they
take the pool as one chunk.
Each of `discrimination.shadow_selectors` splits the same items too (or a fixed share of them,
`discrimination.shadow_sample`), for the record: its split (and a referee's
verdicts) is appended beside the run's, chunk by chunk, and discrimination.json's `shadows` gives its hard share,
parse failures and agreement with the run's own split; the run goes on with its own split.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

from .answers import StudentAnswerer, buy_teacher_answers, read_truncated, teacher_identity
from .context import RunContext, make_phase_parser, run_phase
from .errors import LionError
from .failures import check_failures, check_unparsed
from .judge_prompts import load_judge_prompts
from .layout import RoundPaths
from .pools import prepare_round
from .records import (
    IdSet,
    Instruction,
    append_jsonl_rows,
    count_rows,
    iter_jsonl,
    iter_pool,
    read_json_or_empty,
    write_json,
)
from .referee import PairJudgement
from .selectors import SplitRow, excluded, make_selector
from .student.infer import inference_settings
from .world import family_accuracy

CHUNKED_SELECTORS = ("referee", "none")  # label each item on its own; the others need the whole pool
TRUNCATED_REASON = "student answer cut at student.infer.max_new_tokens (discrimination.truncated_student: exclude)"


def discrimination(ctx: RunContext, r: int) -> dict[str, Any]:
    """Run phase 2 of round r (idempotent; resumes a phase interrupted between chunks)."""
    rp = ctx.run.round(r)
    if ctx.run.is_done(r, "discrimination"):
        return read_json_or_empty(rp.phase_metrics("discrimination"))
    prepare_round(ctx, r)
    dc = ctx.cfg.discrimination
    judge = load_judge_prompts(dc.referee_prompts, "discrimination.referee_prompts") if dc.referee_prompts else None
    n_pool = count_rows(rp.cache_pool)
    bought = buy_teacher_answers(ctx, iter_pool(rp.cache_pool), "discrimination", total=n_pool,
                                 desc=f"round {r} teacher answers")
    check_failures(ctx.cfg, r, "discrimination", "teacher answers to the Cache Pool", bought["failed"], n_pool)
    if not rp.student.is_dir():
        raise LionError(f"{rp.student}: round {r}'s student is missing; run round {r}'s imitation first")

    selector = make_selector(dc.selector, learnable_base=dc.learnable_base, stuck_rounds=dc.stuck_rounds, judge=judge)
    trained = trained_on(ctx, r) if dc.only_unseen else IdSet()
    shadows = {name: make_selector(name, judge=judge) for name in dc.shadow_selectors}
    whole_pool = any(sel.name not in CHUNKED_SELECTORS for sel in (selector, *shadows.values()))
    chunk_size = max(n_pool, 1) if whole_pool else dc.chunk_size
    progress = _Progress.resume(rp)
    who = teacher_identity(ctx.cfg)
    pool = iter_pool(rp.cache_pool)
    for _ in range(progress.rows):  # the chunks judged before an interruption
        next(pool)
    with StudentAnswerer(ctx, rp.student, rp.student_answers, phase="discrimination",
                         resume_from=progress.student_answers) as answerer:
        for chunk in _chunks(pool, chunk_size):
            t_ans = {i.id: (row["answer"] if (row := ctx.answers.get(i.id, who)) else None) for i in chunk}
            s_ans = answerer.answer(chunk)
            cut = answerer.truncated_ids if dc.truncated_student == "exclude" else set()
            candidates = [i for i in chunk if i.id not in trained and i.id not in cut]
            sel = selector.select(ctx, r, candidates, t_ans, s_ans)
            verdicts = [v for j in sel.judged for v in j.verdicts]
            failed = sum(1 for v in verdicts if v.call_failed)
            check_failures(ctx.cfg, r, "discrimination", "referee calls", failed, len(verdicts))  # this chunk
            unparsed = sum(1 for j in sel.judged if j.unparsed)
            by_id = {row.id: row for row in sel.rows}
            split = [by_id.get(i.id) or excluded(i, TRUNCATED_REASON if i.id in cut else
                                                 "in a Train Pool (discrimination.only_unseen)") for i in chunk]
            if sel.judged:
                append_jsonl_rows(rp.judgements, (v.to_row(j.id, "teacher", "student") for j in sel.judged
                                                  for v in j.verdicts))
            append_jsonl_rows(rp.split, (row.to_json() for row in split))
            # the pairs so far (the replies of this chunk are in judgements.jsonl; a resume cuts them and replays)
            _check_unparsed(ctx, r, progress.unparsed + unparsed, progress.pairs + len(sel.judged))
            sampled = [i for i in candidates if in_shadow_sample(ctx.cfg.seed, r, i.id, dc.shadow_sample)]
            for name, shadow_selector in shadows.items():
                if sampled:
                    shadow_chunk(ctx, r, name, shadow_selector, sampled, t_ans, s_ans)
            if ctx.world is not None:  # offline world: the student's exact accuracy on the Cache Pool
                progress.add_oracle(family_accuracy(ctx.world, ((i.instruction, s_ans[i.id] or "") for i in chunk)))
            progress.advance(rp, len(chunk), answerer.end_offset(), failed, len(verdicts), len(sel.judged), unparsed)
    try:  # the whole pool's share (each chunk passed on its own)
        check_failures(ctx.cfg, r, "discrimination", "referee calls", progress.call_failures, progress.verdicts)
        _check_unparsed(ctx, r, progress.unparsed, progress.pairs)
    except LionError:
        rp.discrimination_progress.unlink(missing_ok=True)  # a re-run judges every chunk again (cache replays)
        raise
    metrics = {"selector": selector.name, **metrics_from_files(rp), "truncated_student": dc.truncated_student,
               "student_infer": answerer.settings or inference_settings(ctx.cfg.student.infer)}
    if shadows:
        metrics["shadows"] = {name: shadow_metrics(rp, name) for name in shadows}
    if ctx.world is not None:
        metrics["oracle"] = progress.oracle()
    write_json(rp.phase_metrics("discrimination"), metrics)
    ctx.run.mark_done(r, "discrimination")
    rp.discrimination_progress.unlink(missing_ok=True)
    return metrics


def _check_unparsed(ctx: RunContext, r: int, unparsed: int, pairs: int) -> None:
    """The gate on referee pairs excluded for want of a readable verdict (llm.max_unparsed_rate)."""
    dc = ctx.cfg.discrimination
    check_unparsed(ctx.cfg, r, "discrimination", "referee pairs", unparsed, pairs,
                   replies=str(ctx.run.round(r).judgements),
                   remedy=f"raise discrimination.referee_attempts (now {dc.referee_attempts}; "
                          "discrimination.referee_retry_temperature makes the retries differ), or give llm.referee a "
                          "model or a prompt (discrimination.referee_prompts) whose replies follow the verdict format")


def _chunks(items: Iterator[Instruction], n: int) -> Iterator[list[Instruction]]:
    while chunk := list(itertools.islice(items, n)):
        yield chunk


@dataclass
class _Progress:
    """Where an interrupted discrimination stands (round_XX/discrimination.progress.json, rewritten after each
    chunk): Cache Pool rows judged, the byte lengths of judgements.jsonl, split.jsonl and student_answers.jsonl
    at that point, referee call failures so far, and the offline world's per-family counts so far."""

    rows: int = 0
    judgements: int = 0
    split: int = 0
    student_answers: int = 0
    call_failures: int = 0
    verdicts: int = 0
    pairs: int = 0  # referee pairs judged so far
    unparsed: int = 0  # of them, left without a readable verdict (excluded)
    correct: dict[str, int] = field(default_factory=dict)
    graded: dict[str, int] = field(default_factory=dict)
    shadow_files: dict[str, int] = field(default_factory=dict)  # the shadow selectors' files: name -> byte length

    @classmethod
    def resume(cls, rp: RoundPaths) -> _Progress:
        """The saved progress, with the appended files cut back to it (rows of a chunk the interruption left
        half-written go, and are produced again, from the caches, with the chunk); a fresh start otherwise."""
        saved = read_json_or_empty(rp.discrimination_progress)
        known = {f.name for f in dataclass_fields(cls)}
        progress = cls(**{k: v for k, v in saved.items() if k in known})
        shadows = [(rp.dir / name, length) for name, length in progress.shadow_files.items()]
        if not saved:  # a fresh start: no shadow rows of an earlier attempt are kept either
            shadows = [(p, 0) for p in rp.shadow_files()]
        for path, length in ((rp.judgements, progress.judgements), (rp.split, progress.split), *shadows):
            if path.exists() and path.stat().st_size > length:
                with path.open("rb+") as f:
                    f.truncate(length)
        return progress

    def advance(self, rp: RoundPaths, rows: int, student_answers: int, call_failures: int, verdicts: int,
                pairs: int = 0, unparsed: int = 0) -> None:
        self.rows += rows
        self.judgements = rp.judgements.stat().st_size if rp.judgements.exists() else 0
        self.split = rp.split.stat().st_size if rp.split.exists() else 0
        self.shadow_files = {p.name: p.stat().st_size for p in rp.shadow_files()}
        self.student_answers = student_answers
        self.call_failures += call_failures
        self.verdicts += verdicts
        self.pairs += pairs
        self.unparsed += unparsed
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


def in_shadow_sample(seed: int, r: int, item_id: str, share: float) -> bool:
    """Whether the shadow selectors split this item in round r (discrimination.shadow_sample): a fixed draw by
    (seed, round, id), so a resumed phase, and every shadow, sees the same items."""
    if share >= 1.0:
        return True
    h = int.from_bytes(hashlib.sha256(f"{seed}/{r}/{item_id}".encode()).digest()[:8], "big")
    return h < share * 2**64


def shadow_chunk(ctx: RunContext, r: int, name: str, selector: Any, candidates: Sequence[Instruction],
                 t_ans: dict[str, str | None], s_ans: dict[str, str | None]) -> None:
    """Split one chunk's candidates with shadow selector `name` as well, for the record: its split rows (and a
    referee's verdicts) are appended to round_XX/shadow_<name>_*.jsonl; the run goes on with its own split."""
    rp = ctx.run.round(r)
    sel = selector.select(ctx, r, candidates, t_ans, s_ans)
    verdicts = [v for j in sel.judged for v in j.verdicts]
    check_failures(ctx.cfg, r, "discrimination", f"{name} (shadow) calls",
                   sum(1 for v in verdicts if v.call_failed), len(verdicts))
    if sel.judged:
        append_jsonl_rows(rp.shadow_judgements(name), (v.to_row(j.id, "teacher", "student") for j in sel.judged
                                                       for v in j.verdicts))
    append_jsonl_rows(rp.shadow_split(name), (row.to_json() for row in sel.rows))


def shadow_metrics(rp: RoundPaths, name: str) -> dict[str, Any]:
    """A shadow selector's figures, from its files, and its agreement with the run's own split."""
    split, judgements = rp.shadow_split(name), rp.shadow_judgements(name)
    verdicts = (bool(row.get("ok")) for _, row in iter_jsonl(judgements)) if judgements.exists() else ()
    rows = [row for _, row in iter_jsonl(split)] if split.exists() else []
    own = {row["id"]: row["label"] for _, row in iter_jsonl(rp.split)}
    return {**_metrics(rows, verdicts, read_truncated(rp.student_answers)),
            **agreement({row["id"]: row["label"] for row in rows}, own)}


def agreement(mine: dict[str, str], split: dict[str, str]) -> dict[str, Any]:
    """How often two splits (id -> label) give an instruction the same label, over the ones both label hard or
    easy."""
    both = [(mine[i], label) for i, label in split.items() if label in ("hard", "easy")
            and mine.get(i) in ("hard", "easy")]
    same = sum(1 for a, b in both if a == b)
    hard_both = sum(1 for a, b in both if a == b == "hard")
    hard_any = sum(1 for a, b in both if "hard" in (a, b))
    return {"n_compared": len(both), "agreement": same / len(both) if both else None,
            "hard_overlap": hard_both / hard_any if hard_any else None}


def trained_on(ctx: RunContext, r: int) -> IdSet:
    """Ids of every instruction in a Train Pool of rounds 1 .. r (what the round's student was trained on)."""
    return IdSet(i.id for q in range(1, r + 1) for i in iter_pool(ctx.run.round(q).train_pool))


def discrimination_metrics(split: Sequence[SplitRow], judged: Sequence[PairJudgement]) -> dict[str, Any]:
    return _metrics((s.to_json() for s in split), (v.ok for j in judged for v in j.verdicts))


def metrics_from_files(rp: RoundPaths) -> dict[str, Any]:
    """The phase's figures from split.jsonl, judgements.jsonl and student_answers.jsonl (which answers were cut at
    max_new_tokens), streamed (one row in memory at a time; the ids of the cut answers as a set)."""
    verdicts = (bool(row.get("ok")) for _, row in iter_jsonl(rp.judgements)) if rp.judgements.exists() else ()
    return _metrics((row for _, row in iter_jsonl(rp.split)), verdicts, read_truncated(rp.student_answers))


def _metrics(split_rows: Iterable[dict[str, Any]], verdict_ok: Iterable[bool],
             truncated: set[str] | None = None) -> dict[str, Any]:
    n = 0
    labels = {"hard": 0, "easy": 0, "stuck": 0, "unjudged": 0, "excluded": 0}
    reasons: dict[str, int] = {}
    cut = {"n": 0, "hard": 0}
    truncated = truncated or set()
    sums = {k: [0.0, 0] for k in ("teacher_score", "student_score", "gap", "loss", "similarity")}
    flips = flip_n = 0
    for row in split_rows:
        n += 1
        label = row["label"]
        labels[label] = labels.get(label, 0) + 1
        if row["id"] in truncated:
            cut["n"] += 1
            cut["hard"] += label == "hard"
        if label == "excluded":
            reasons[str(row.get("reason"))] = reasons.get(str(row.get("reason")), 0) + 1
        if label not in ("hard", "easy", "stuck"):
            continue
        for k, acc in sums.items():
            if row.get(k) is not None:
                acc[0] += row[k]
                acc[1] += 1
        if row.get("flipped") is not None:
            flip_n += 1
            flips += bool(row["flipped"])
    verdicts = failed = 0
    for ok in verdict_ok:
        verdicts += 1
        failed += not ok
    kept = labels["hard"] + labels["easy"] + labels["stuck"]
    mean = (lambda k: sums[k][0] / sums[k][1] if sums[k][1] else None)  # noqa: E731
    return {
        "n": n,
        "hard": labels["hard"],
        "easy": labels["easy"],
        "stuck": labels["stuck"],
        "unjudged": labels["unjudged"],
        "excluded": labels["excluded"],
        "excluded_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "student_truncated": cut["n"],  # student answers cut at student.infer.max_new_tokens
        "student_truncated_hard": cut["hard"],  # of those, labelled hard (kept: discrimination.truncated_student)
        "hard_ratio": labels["hard"] / kept if kept else None,
        "teacher_mean": mean("teacher_score"),
        "student_mean": mean("student_score"),
        "gap_mean": mean("gap"),
        "loss_mean": mean("loss"),
        "similarity_mean": mean("similarity"),
        "n_verdicts": verdicts,
        "parse_failures": failed if verdicts else None,  # None: no verdict was asked for (an LLM-free selector)
        "parse_failure_rate": failed / verdicts if verdicts else None,
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
            f"(hard ratio {'-' if m['hard_ratio'] is None else format(m['hard_ratio'], '.2f')}); "
            f"{m.get('student_truncated', 0)} student answers cut at max_new_tokens "
            f"({m.get('truncated_student', 'keep').replace('keep', 'kept').replace('exclude', 'excluded')})"
        ),
    )


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
