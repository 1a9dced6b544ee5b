"""Phase 2, discrimination: find the Cache Pool instructions where the student still falls short.

    python -m lion.discrimination --config C --round R

Teacher answers come from the answer store (bought once, ever); the round's student answers the whole
Cache Pool in batches, saved as they come (lion.answers); then the selector (`discrimination.selector`,
lion.selectors) labels every instruction. The paper's `referee` scores both answers in both orders
(`lion.referee.judge_pairs`: the teacher's answer is the pair's reference, the student's the candidate), with the
prompts/ referee template or, when `discrimination.referee_prompts` names a FastChat-style prompt file, the prompt
of each instruction's category, each read in the verdict format it declares; the gap
is the teacher's mean score minus the student's, over the two orders; an instruction is hard when
gap >= discrimination.tau, easy otherwise. A pair whose verdict could not be parsed after the retries, or
that has no teacher answer, is excluded and counted: it is never given a number. With
`discrimination.only_unseen`, only Cache Pool items the student was never trained on are judged.
Each of `discrimination.shadow_selectors` splits the same items too, for the record: its split (and a referee's
verdicts) is saved beside the run's, and discrimination.json's `shadows` gives its hard share, parse failures and
agreement with the run's own split; the run goes on with its own split.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .answers import student_answers, teacher_answers
from .context import RunContext, make_phase_parser, run_phase
from .errors import LionError
from .failures import check_failures
from .judge_prompts import load_judge_prompts
from .pools import prepare_round
from .records import read_json_or_empty, read_pool, write_json, write_jsonl
from .referee import PairJudgement
from .selectors import SplitRow, excluded, make_selector
from .world import family_accuracy


def discrimination(ctx: RunContext, r: int) -> dict[str, Any]:
    """Run phase 2 of round r (idempotent)."""
    rp = ctx.run.round(r)
    if ctx.run.is_done(r, "discrimination"):
        return read_json_or_empty(rp.phase_metrics("discrimination"))
    prepare_round(ctx, r)
    dc = ctx.cfg.discrimination
    judge = load_judge_prompts(dc.referee_prompts, "discrimination.referee_prompts") if dc.referee_prompts else None
    pool = read_pool(rp.cache_pool)
    t_ans = teacher_answers(ctx, pool, "discrimination")
    check_failures(ctx.cfg, r, "discrimination", "teacher answers to the Cache Pool",
                   sum(1 for i in pool if t_ans[i.id] is None), len(pool))
    if not rp.student.is_dir():
        raise LionError(f"{rp.student}: round {r}'s student is missing; run round {r}'s imitation first")
    s_ans = student_answers(ctx, rp.student, pool, rp.student_answers)

    selector = make_selector(dc.selector, learnable_base=dc.learnable_base, stuck_rounds=dc.stuck_rounds, judge=judge)
    trained = trained_on(ctx, r) if dc.only_unseen else set()
    candidates = [i for i in pool if i.id not in trained]
    sel = selector.select(ctx, r, candidates, t_ans, s_ans)
    verdicts = [v for j in sel.judged for v in j.verdicts]
    check_failures(ctx.cfg, r, "discrimination", "referee calls",
                   sum(1 for v in verdicts if (v.error or "").startswith("call failed")), len(verdicts))
    by_id = {row.id: row for row in sel.rows}
    split = [by_id.get(i.id) or excluded(i, "in a Train Pool (discrimination.only_unseen)") for i in pool]
    if sel.judged:
        write_jsonl(rp.judgements, (v.to_row(j.id, "teacher", "student") for j in sel.judged for v in j.verdicts))
    write_jsonl(rp.split, (row.to_json() for row in split))
    metrics = {"selector": selector.name, **discrimination_metrics(split, sel.judged)}
    if dc.shadow_selectors:
        metrics["shadows"] = {name: shadow(ctx, r, name, judge, candidates, t_ans, s_ans, split)
                              for name in dc.shadow_selectors}
    if ctx.world is not None:  # offline world: the student's exact accuracy on the Cache Pool
        metrics["oracle"] = family_accuracy(ctx.world, ((i.instruction, s_ans.get(i.id, "")) for i in pool))
    write_json(rp.phase_metrics("discrimination"), metrics)
    ctx.run.mark_done(r, "discrimination")
    return metrics


def shadow(ctx: RunContext, r: int, name: str, judge: Any, candidates: Sequence[Any], t_ans: dict[str, str | None],
           s_ans: dict[str, str], split: Sequence[SplitRow]) -> dict[str, Any]:
    """Split the candidates with selector `name` as well, for the record (its split and verdicts are saved, the
    run goes on with its own split); its figures and its agreement with the run's split."""
    rp = ctx.run.round(r)
    sel = make_selector(name, judge=judge).select(ctx, r, candidates, t_ans, s_ans)
    verdicts = [v for j in sel.judged for v in j.verdicts]
    check_failures(ctx.cfg, r, "discrimination", f"{name} (shadow) calls",
                   sum(1 for v in verdicts if (v.error or "").startswith("call failed")), len(verdicts))
    if sel.judged:
        write_jsonl(rp.shadow_judgements(name), (v.to_row(j.id, "teacher", "student") for j in sel.judged
                                                 for v in j.verdicts))
    write_jsonl(rp.shadow_split(name), (row.to_json() for row in sel.rows))
    return {**discrimination_metrics(sel.rows, sel.judged), **agreement(sel.rows, split)}


def agreement(rows: Sequence[SplitRow], split: Sequence[SplitRow]) -> dict[str, Any]:
    """How often two splits give an instruction the same label, over the ones both label hard or easy."""
    mine = {s.id: s.label for s in rows if s.label in ("hard", "easy")}
    both = [(mine[s.id], s.label) for s in split if s.label in ("hard", "easy") and s.id in mine]
    same = sum(1 for a, b in both if a == b)
    hard_both = sum(1 for a, b in both if a == b == "hard")
    hard_any = sum(1 for a, b in both if "hard" in (a, b))
    return {"n_compared": len(both), "agreement": same / len(both) if both else None,
            "hard_overlap": hard_both / hard_any if hard_any else None}


def trained_on(ctx: RunContext, r: int) -> set[str]:
    """Ids of every instruction in a Train Pool of rounds 1 .. r (what the round's student was trained on)."""
    return {i.id for q in range(1, r + 1) for i in read_pool(ctx.run.round(q).train_pool)}


def discrimination_metrics(split: Sequence[SplitRow], judged: Sequence[PairJudgement]) -> dict[str, Any]:
    rows = [s for s in split if s.label in ("hard", "easy", "stuck")]
    hard = sum(1 for s in rows if s.label == "hard")
    flips = [s.flipped for s in rows if s.flipped is not None]
    verdicts = [v for j in judged for v in j.verdicts]
    failed_orders = sum(1 for v in verdicts if not v.ok)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "n": len(split),
        "hard": hard,
        "easy": sum(1 for s in rows if s.label == "easy"),
        "stuck": sum(1 for s in rows if s.label == "stuck"),
        "unjudged": sum(1 for s in split if s.label == "unjudged"),
        "excluded": sum(1 for s in split if s.label == "excluded"),
        "hard_ratio": hard / len(rows) if rows else None,
        "teacher_mean": mean([s.teacher_score for s in rows if s.teacher_score is not None]),
        "student_mean": mean([s.student_score for s in rows if s.student_score is not None]),
        "gap_mean": mean([s.gap for s in rows if s.gap is not None]),
        "loss_mean": mean([s.loss for s in rows if s.loss is not None]),
        "similarity_mean": mean([s.similarity for s in rows if s.similarity is not None]),
        "n_verdicts": len(verdicts),
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
