"""The control student: what plain distillation of as many new instructions would have given (eval.control).

    python -m lion.control --config C --round R        # round R's control step alone (after its imitation)

Does the loop pay? Beside the loop's student, a control student gets each round the same number of new
instructions as the loop's, chosen by a rule without the referee, and the same training recipe, seed and steps;
both answer the same held-out questions, judged against the same reference by the same judge:

    control(r), for r >= the round the control joined (2 for a run that has it from the start):
        C_r = as many new instructions as the loop's N_{r-1}, by the control rule
                plain:          seed-file instructions no pool has used (lion.pools.unused_seeds)
                self_instruct:  grown by the generator from the control's Cache Pool, seeds drawn at random
                                (the hard and easy templates in the loop's own proportion of round r-1)
        control Train Pool(r) = C_r (pools.train_pool: replace) or control Train Pool(r-1) ∪ C_r (accumulate)
        control Cache Pool(r) = control Cache Pool(r-1) ∪ C_r                                  (self_instruct)
        the control student of r: trained on its Train Pool from the control student of r-1 (lion.imitation)
        evaluated like the loop's (lion.evaluate), compared with it question by question: the paired difference
        loop - control of the relative score with a bootstrap 95% CI (lion.evalscore.paired_difference)
        the standard benchmarks on it (eval.benchmarks, lion.benchmarks)

Where it joins (round r) the control branches off the loop: its round r-1 is the loop's (student, Train Pool, Cache
Pool); round 1 has no new instructions, so its control would be the loop's student. A control switched on in a run
already going joins at the first round not completed yet (recorded in state.json; lion.rundir.control_track).

Every step resumes like the loop's phases: files under round_XX/control/ (lion.layout.ControlPaths), written
atomically, with `selection.done` and `imitation.done` markers; the training checkpoints like the loop's; the
evaluation by its summary. Its calls are booked in the ledger under their own phases, `control-generation`,
`control-imitation` and `control-eval`, so `lion status`, the report and `lion plan` show what the control costs.
The control's generator calls are samples the loop never asks for (sample numbers from SAMPLE_BASE on), so no
reply is shared between the two tracks and each pays for its own.
"""

from __future__ import annotations

import argparse
import array
import json
import logging
import random
import sys
from collections import Counter
from typing import Any

from .context import RunContext, make_phase_parser, run_phase
from .errors import ConfigError, LionError
from .evalscore import paired_difference, rows_from_table
from .generation import KINDS, PoolRows, candidate_filter, grow
from .imitation import imitate
from .layout import ControlPaths, RoundPaths
from .pools import count_unused_seeds, unused_seeds
from .records import (
    Instruction,
    count_rows,
    iter_jsonl,
    iter_pool,
    read_json_or_empty,
    read_jsonl,
    union_pools,
    write_json,
    write_jsonl,
    write_pool,
)

log = logging.getLogger("lion.control")

TRACK = "control"
SAMPLE_BASE = 1_000_000  # the control's generator samples: never one the loop's generation asks for
PHASES = {"selection": "control-generation", "imitation": "control-imitation", "eval": "control-eval"}


def control_student(ctx: RunContext, r: int) -> dict[str, Any] | None:
    """The control step of round r (idempotent): its new instructions, its student, its evaluation, the comparison
    with the loop's student and its benchmarks; the control's figures, or None when there is no control this round."""
    rule = ctx.cfg.eval.control
    if rule == "none" or r < ctx.run.control_track(rule):
        return None
    if not ctx.run.is_done(r, "imitation"):
        raise LionError(f"round {r} control needs round {r}'s imitation first ({ctx.run.round(r).done('imitation')} "
                        "missing): the control is compared with the loop's student of the same round")
    cp = ctx.run.round(r).control
    select(ctx, r, cp)
    train(ctx, r, cp)
    if ctx.cfg.eval.every_round:
        from .evaluate import evaluate_round

        evaluate_round(ctx, r)  # the loop's own (done by then in the loop; here for the step run alone)
        evaluate_round(ctx, r, cp, name=f"round {r} control", phase=PHASES["eval"])
        compare(ctx, r, cp)
    from .benchmarks import benchmark_round

    benchmark_round(ctx.cfg, cp, f"round {r} control")
    return figures(cp)


def check_control(ctx: RunContext) -> None:
    """Before anything is spent: the control's rule is the run's (state.json), and the plain rule has enough unused
    seed instructions for the rounds left (up to generation.n_hard + n_easy each): a ConfigError with the counts."""
    rule = ctx.cfg.eval.control
    if rule == "none":
        return
    start = ctx.run.control_track(rule)
    if rule != "plain":
        return
    cfg = ctx.cfg
    last = cfg.rounds + (1 if cfg.final_imitation and cfg.rounds > 0 else 0)
    left = [r for r in range(start, last + 1) if not ctx.run.round(r).control.done("selection").exists()]
    per_round = cfg.generation.n_hard + cfg.generation.n_easy
    need = per_round * len(left)
    if not need:
        return
    have = count_unused_seeds(ctx, ctx.run.control_pools())
    if have < need:
        seeds = cfg.pools.train_seed + (f" and {cfg.pools.cache_seed}" if cfg.pools.cache_seed else "")
        raise ConfigError(
            f"eval.control: plain draws the control's new instructions from seed-file instructions no pool has used: "
            f"up to {need} ({per_round} a round, generation.n_hard + n_easy, for round"
            f"{'s' if len(left) > 1 else ''} {left[0]}{f'-{left[-1]}' if len(left) > 1 else ''}), but {seeds} "
            f"hold{'s' if not cfg.pools.cache_seed else ''} only {have} beyond the pools"
            + (f" (pools.limit {cfg.pools.limit})" if cfg.pools.limit else " (pools.limit is unset: every seed row "
               "is in round 1's pools)")
            + "; use a larger seed file, a smaller pools.limit, fewer rounds, or eval.control: self_instruct"
        )


def branch(ctx: RunContext, r: int) -> tuple[RoundPaths, str]:
    """The control's round r-1: its own when it trained then, else the loop's (the control branches off there)."""
    prev = ctx.run.round(r - 1)
    if prev.control.done("imitation").exists():
        return prev.control, f"control round {r - 1}"
    return prev, f"loop round {r - 1}"


# --------------------------------------------------------------------------------------------- the steps


def select(ctx: RunContext, r: int, cp: ControlPaths) -> dict[str, Any]:
    """The control's new instructions of round r and its pools (idempotent: selection.done)."""
    if cp.done("selection").exists():
        return read_json_or_empty(cp.phase_metrics("selection"))
    prev = ctx.run.round(r - 1)
    if not ctx.run.is_done(r - 1, "generation"):
        raise LionError(f"round {r} control: round {r - 1}'s generation has not finished ({prev.done('generation')} "
                        "missing); the control gets as many new instructions as it made")
    n = count_rows(prev.generated)
    base, branched = branch(ctx, r)
    rule = ctx.cfg.eval.control
    metrics: dict[str, Any] = {"round": r, "rule": rule, "wanted": n, "branched_from": branched}
    if rule == "plain":
        new = draw_unused(ctx, r, n)
    else:
        new, metrics["generation"] = grow_from_cache(ctx, r, cp, base, prev)
        write_pool(cp.cache_pool, union_pools(iter_pool(base.cache_pool), new))
    metrics["new"] = len(new)
    write_pool(cp.new, new)
    if ctx.cfg.pools.train_pool == "replace":
        write_pool(cp.train_pool, new)
    else:
        write_pool(cp.train_pool, union_pools(iter_pool(base.train_pool), new))
    metrics["n_train_pool"] = count_rows(cp.train_pool)
    write_json(cp.phase_metrics("selection"), metrics)
    write_json(cp.done("selection"), {"round": r, "new": len(new)})
    log.info("round %d control (%s): %d new instructions (the loop's: %d), branched from %s", r, rule, len(new), n,
             branched)
    return metrics


def draw_unused(ctx: RunContext, r: int, n: int) -> list[Instruction]:
    """plain: n seed-file instructions no pool has used, drawn by (seed, round); with pools.seed_answers: teacher
    the answers the drawn rows carry are recorded as the teacher's (never bought), as round 1's are."""
    who = None
    if ctx.cfg.pools.seed_answers == "teacher":
        from .answers import teacher_identity

        who = teacher_identity(ctx.cfg)

    def keep(id: str, answer: str) -> None:
        if who is not None and not ctx.answers.has(id, who):
            ctx.answers.put(id, who, answer, None, source="seed")

    drawn = unused_seeds(ctx, n, r, exclude=ctx.run.control_pools(), salt=TRACK, on_answer=keep)
    ctx.answers.commit()
    if len(drawn) < n:
        raise LionError(f"eval.control: round {r} needs {n} seed instructions no pool has used (as many as the loop's "
                        f"new ones) and the seed files hold {len(drawn)}; use a larger seed file or a smaller "
                        "pools.limit in a new run_dir, or eval.control: none to stop the control here")
    return [Instruction(i.instruction, i.input, round=r, kind="random", meta={**i.meta, "source": "unused seed"})
            for i in drawn]


def grow_from_cache(ctx: RunContext, r: int, cp: ControlPaths, base: RoundPaths,
                    prev: RoundPaths) -> tuple[list[Instruction], dict[str, Any]]:
    """self_instruct: the generator grows new instructions from seeds drawn uniformly from the control's Cache Pool
    (the hard and easy templates, as many of each as the loop accepted in round r-1), through the loop's filters."""
    accepted = read_json_or_empty(prev.phase_metrics("generation")).get("accepted") or {}
    wanted = {k: int(accepted.get(k, 0)) for k in KINDS}
    offsets: array.array[int] = array.array("q")

    def texts() -> Any:
        at = 0
        with base.cache_pool.open("rb") as f:
            for raw in f:
                if raw.strip():
                    offsets.append(at)
                    yield Instruction.from_json(json.loads(raw)).instruction
                at += len(raw)

    filt = candidate_filter(ctx, texts())
    rows = PoolRows(base.cache_pool, offsets)
    seeds = {k: rows for k in KINDS}  # every seed may feed either template: no referee says which
    gc = ctx.cfg.generation
    rng = random.Random(f"{ctx.cfg.seed}/{gc.seed}/{TRACK}/{r}")
    try:
        grown = grow(ctx, r, seeds, wanted, filt, rng, earlier_control_uses(ctx, r), phase=PHASES["selection"],
                     desc=f"round {r} control generation", sample_base=SAMPLE_BASE)
    finally:
        rows.close()
    write_jsonl(cp.rejected, grown.rejected)
    return [i for k in KINDS for i in grown.accepted[k]], grown.metrics(wanted, seeds)


def earlier_control_uses(ctx: RunContext, r: int) -> dict[str, Counter[str]]:
    """How often the control's generation asked for each seed, per kind, in the rounds before r."""
    used = {k: Counter[str]() for k in KINDS}
    for q in range(1, r):
        cq = ctx.run.round(q).control
        for path in (cq.new, cq.rejected):
            if path.is_file():
                for _, row in iter_jsonl(path):
                    if row.get("kind") in used and row.get("parent"):
                        used[row["kind"]][str(row["parent"])] += 1
    return used


def train(ctx: RunContext, r: int, cp: ControlPaths) -> dict[str, Any]:
    """The control student of round r, trained like the loop's (idempotent: imitation.done)."""
    if cp.done("imitation").exists():
        return read_json_or_empty(cp.phase_metrics("imitation"))
    base, _ = branch(ctx, r)
    if ctx.cfg.student.continue_from_previous:
        if not base.student.is_dir():
            raise LionError(f"{base.student}: missing; round {r}'s control student continues from it")
        init_from = str(base.student)
    else:
        from .student import resolve_base_model

        init_from = str(resolve_base_model(ctx.cfg.student, ctx.run.base_model))
    metrics = imitate(ctx, r, cp, init_from, phase=PHASES["imitation"], track=TRACK)
    write_json(cp.phase_metrics("imitation"), metrics)
    write_json(cp.done("imitation"), {"round": r, "n_train": metrics["n_train"]})
    return metrics


def compare(ctx: RunContext, r: int, cp: ControlPaths) -> dict[str, Any]:
    """The loop's student vs the control on the questions both were scored on: relative scores, their difference
    and its bootstrap CI (cp.comparison)."""
    loop = ctx.run.round(r)
    if cp.comparison.exists():
        return read_json_or_empty(cp.comparison)
    d = paired_difference(rows_from_table(read_jsonl(loop.eval.table)), rows_from_table(read_jsonl(cp.eval.table)),
                          n_boot=ctx.cfg.eval.bootstrap, seed=ctx.cfg.seed + r)
    out = {"round": r, "rule": ctx.cfg.eval.control, "loop": d["relative_a"], "control": d["relative_b"],
           "difference": d["difference"], "ci_low": d["ci_low"], "ci_high": d["ci_high"], "level": d["level"],
           "n": d["n"], "n_only_loop": d["n_only_a"], "n_only_control": d["n_only_b"], "n_boot": d["n_boot"]}
    write_json(cp.comparison, out)
    return out


def figures(cp: ControlPaths) -> dict[str, Any]:
    """The control's figures of a round (lion.roundtable.collect_control)."""
    from .roundtable import collect_control

    return collect_control(cp)


def make_parser() -> argparse.ArgumentParser:
    return make_phase_parser(TRACK, __doc__)


def describe(m: dict[str, Any] | None) -> str:
    if m is None:
        return "no control student this round (round 1, eval.control: none, or a round before the control joined)"
    c = m.get("comparison") or {}
    sel = m.get("selection") or {}
    text = f"{sel.get('new', '-')} new instructions ({sel.get('rule', '?')})"
    if c.get("difference") is not None:
        text += (f"; loop {c['loop']:.2f} vs control {c['control']:.2f}: {c['difference']:+.2f} "
                 f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] over {c['n']} questions")
    return text


def main(argv: list[str] | None = None) -> int:
    def control(ctx: RunContext, r: int) -> dict[str, Any] | None:  # printed as "round R control: ..."
        return control_student(ctx, r)

    return run_phase(control, make_parser().parse_args(argv), describe)  # type: ignore[arg-type]


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
