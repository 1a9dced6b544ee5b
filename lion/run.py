"""The Lion loop (Algorithm 1 of Jiang et al., 2023), resumable at any moment.

    python -m lion.run --config configs/smoke.yaml [--rounds N] [--set key=value ...]
    python -m lion.run --config configs/smoke.yaml --dry-run      # the plan (lion.plan): calls, USD, hours, GPU memory

    for round r = 1 .. N:
        Train Pool(r), Cache Pool(r)   <- seeds (r = 1), or round r-1's new instructions   (lion.pools)
        imitation(r):      the teacher answers the Train Pool; the student is fine-tuned   (lion.imitation)
        evaluation(r):     the student on held-out questions (eval.every_round), and the
                           standard benchmarks (eval.benchmarks)                 (lion.evaluate, lion.benchmarks)
        control(r):        a control student with as many new instructions, chosen without
                           the referee, trained, evaluated and compared (eval.control)    (lion.control)
        discrimination(r): teacher vs student on the Cache Pool, judged by the referee     (lion.discrimination)
                           -> hard and easy instructions
        preference(r):     optional: teacher answer over the student's, DPO or SPIN       (lion.preference)
        generation(r):     new instructions from hard and easy seeds, filtered             (lion.generation)
    final imitation on the last Train Pool (= imitation of round N+1), its evaluation and control

Status goes to the `lion.*` loggers (stderr and RUN/lion.log; `--log-level`, lion.logs); the per-round lines and
the summary table go to stdout. The per-round figures also go to the trackers of `student.report_to`
(TensorBoard, wandb; lion.trackers). Every phase writes its files atomically and a completion marker last;
every LLM call is cached in the run directory. Re-running the same command therefore resumes where the run stopped, redoes no finished phase
and pays for no call twice. Raising --rounds continues a finished run (round N+1's imitation, if it was
done as the final imitation, is not repeated).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .benchmarks import benchmark_round, check_benchmarks
from .config import LionConfig, add_config_args, add_run_dir_arg, load_config, run_dir_override
from .context import RunContext
from .control import check_control, control_student
from .discrimination import discrimination
from .errors import BudgetExceeded, LionError
from .generation import generation
from .imitation import imitation
from .layout import RunLayout
from .plan import add_plan_args, print_plan
from .pools import prepare_round
from .preference import preference
from .records import read_json_or_empty, write_json
from .roundtable import collect_round, family_table, round_line, summary_table
from .trackers import Trackers, open_trackers

log = logging.getLogger("lion.run")


def lion_loop(cfg: LionConfig, *, progress: bool = True, echo: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) `cfg.rounds` rounds; return each round's metrics."""
    rounds = cfg.rounds
    summaries: list[dict[str, Any]] = []
    with RunContext(cfg, progress=progress) as ctx, open_trackers(cfg, ctx.run) as trackers:
        log.info("run %s: %d round(s)%s", cfg.run_dir, rounds, " + final imitation" if cfg.final_imitation else "")
        try:
            check_before_spending(ctx)
            for r in range(1, rounds + 1):
                prepare_round(ctx, r)
                for name, phase in (("imitation", imitation), ("evaluation", evaluate_student),
                                    ("control", control_student), ("discrimination", discrimination),
                                    ("preference", preference),
                                    ("generation", generation)):
                    log.info("round %d: %s", r, name)
                    phase(ctx, r)
                summaries.append(round_metrics(ctx, r, trackers))
                ctx.run.set_rounds_completed(r)
                if echo:
                    print(round_line(summaries[-1]), flush=True)
            if cfg.final_imitation and rounds > 0:
                log.info("round %d: final imitation", rounds + 1)
                prepare_round(ctx, rounds + 1)
                imitation(ctx, rounds + 1)
                evaluate_student(ctx, rounds + 1)
                control_student(ctx, rounds + 1)
                summaries.append(round_metrics(ctx, rounds + 1, trackers))  # the final student's row
                if echo:
                    print(round_line(summaries[-1]), flush=True)
        except BudgetExceeded as e:
            log.warning("run %s stopped by the budget: %s", cfg.run_dir, e)
            if echo and summaries:
                print(summary_table(summaries))
            raise
        log.info("run %s finished: %d round(s)%s", cfg.run_dir, rounds,
                 " + final imitation" if cfg.final_imitation and rounds > 0 else "")
    if echo:
        print(summary_table(summaries))
        families = family_table(summaries)
        if families:
            print(families)
        print(f"run directory: {cfg.run_dir}")
    return summaries


def evaluate_student(ctx: RunContext, r: int) -> None:
    """Evaluate round r's student: on the held-out questions (eval.every_round), on the benchmarks (eval.benchmarks)."""
    if ctx.cfg.eval.every_round:
        from .evaluate import evaluate_round

        evaluate_round(ctx, r)
    benchmark_round(ctx.cfg, ctx.run.round(r), f"round {r}")


def check_before_spending(ctx: RunContext) -> None:
    """What a run can know is wrong before it pays for anything: the control student's rule and seed supply
    (eval.control), the benchmark task names (eval.benchmarks)."""
    check_control(ctx)
    check_benchmarks(ctx.cfg)


def round_metrics(ctx: RunContext, r: int, trackers: Trackers | None = None) -> dict[str, Any]:
    """Collect round r's figures (and the spend so far) into round_XX/metrics.json, and send them to the trackers
    (once per round: a resumed run does not send a finished round again). The spend is the ledger's when the round
    first finished: a resumed run gathers a finished round's figures again but keeps that snapshot (the per-round
    spend, and lion.plan --calibrate, take one round's share as the difference of two snapshots)."""
    rp = ctx.run.round(r)
    m = collect_round(rp)
    m["usage"] = read_json_or_empty(rp.metrics).get("usage") or ctx.gateway.usage_summary()
    write_json(ctx.run.round(r).metrics, m)
    if trackers is not None:
        trackers.log_round(m)
    return m


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.run", description="Run or resume the Lion adversarial loop.")
    add_config_args(p)
    p.add_argument("--rounds", type=int, default=None, help="number of rounds (overrides the config's `rounds`)")
    add_run_dir_arg(p)
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="refuse to continue an existing run directory (default: resume it)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (python -m lion.plan: calls, tokens, USD online and in batch mode, hours, "
                        "GPU memory) and exit without calling anything or writing the run directory")
    add_plan_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.rounds is not None:
        overrides.append(f"rounds={args.rounds}")
    overrides += run_dir_override(args.run_dir)
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        print_plan(cfg, args.config, args)
        return 0
    if not args.resume and RunLayout(cfg.run_dir).state.exists():
        raise LionError(
            f"run_dir: {cfg.run_dir} already holds a run and --no-resume was given; "
            "choose another run_dir or drop --no-resume to continue it"
        )
    lion_loop(cfg, progress=args.progress)
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
