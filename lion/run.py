"""The Lion loop (Algorithm 1 of Jiang et al., 2023), resumable at any moment.

    python -m lion.run --config configs/smoke.yaml [--rounds N] [--set key=value ...]

    for round r = 1 .. N:
        Train Pool(r), Cache Pool(r)   <- seeds (r = 1), or round r-1's new instructions   (lion.pools)
        imitation(r):      the teacher answers the Train Pool; the student is fine-tuned   (lion.imitation)
        discrimination(r): teacher vs student on the Cache Pool, judged by the referee     (lion.discrimination)
                           -> hard and easy instructions
        generation(r):     new instructions from hard and easy seeds, filtered             (lion.generation)
    final imitation on the last Train Pool (= imitation of round N+1)

Every phase writes its files atomically and a completion marker last; every LLM call is cached in the run
directory. Re-running the same command therefore resumes where the run stopped, redoes no finished phase
and pays for no call twice. Raising --rounds continues a finished run (round N+1's imitation, if it was
done as the final imitation, is not repeated).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import LionConfig, add_config_args, load_config
from .context import RunContext
from .discrimination import discrimination
from .errors import BudgetExceeded, LionError
from .generation import generation
from .imitation import imitation
from .pools import prepare_round
from .records import read_json_or_empty, write_json


def lion_loop(cfg: LionConfig, *, progress: bool = True, echo: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) `cfg.rounds` rounds; return each round's metrics."""
    rounds = cfg.rounds
    summaries: list[dict[str, Any]] = []
    with RunContext(cfg, progress=progress) as ctx:
        try:
            for r in range(1, rounds + 1):
                prepare_round(ctx, r)
                imitation(ctx, r)
                evaluate_student(ctx, r)
                discrimination(ctx, r)
                generation(ctx, r)
                summaries.append(round_metrics(ctx, r))
                ctx.run.set_rounds_completed(r)
                if echo:
                    print(format_round(summaries[-1]), flush=True)
            if cfg.final_imitation and rounds > 0:
                prepare_round(ctx, rounds + 1)
                imitation(ctx, rounds + 1)
                evaluate_student(ctx, rounds + 1)
                summaries.append(round_metrics(ctx, rounds + 1))  # the final student's row
                if echo:
                    print(format_round(summaries[-1]), flush=True)
        except BudgetExceeded:
            if echo and summaries:
                print(summary_table(summaries))
            raise
    if echo:
        print(summary_table(summaries))
        families = family_table(summaries)
        if families:
            print(families)
        print(f"run directory: {cfg.run_dir}")
    return summaries


def evaluate_student(ctx: RunContext, r: int) -> None:
    if not ctx.cfg.eval.every_round:
        return
    out = ctx.round_dir(r) / "eval.json"
    if out.exists():
        return
    from .evaluate import evaluate_round

    write_json(out, evaluate_round(ctx.cfg, r, ctx.gateway, ctx.run.student_dir(r), progress=ctx.progress))


def round_metrics(ctx: RunContext, r: int) -> dict[str, Any]:
    """Collect round r's phase metrics into round_XX/metrics.json."""
    rd = ctx.run.round_dir(r)
    m: dict[str, Any] = {"round": r}
    for phase in ("imitation", "discrimination", "generation", "eval"):
        part = read_json_or_empty(rd / f"{phase}.json")
        if part:
            m[phase] = part
    if "discrimination" in m and "oracle" in m["discrimination"]:
        m["oracle"] = m["discrimination"].pop("oracle")
    m["usage"] = ctx.gateway.usage_summary()
    write_json(rd / "metrics.json", m)
    return m


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def format_round(m: dict[str, Any]) -> str:
    d, g, im = m.get("discrimination", {}), m.get("generation", {}), m.get("imitation", {})
    parts = [f"round {m['round']}:", f"train {im.get('n_train', '-')}"]
    if d:
        parts += [
            f"cache {d['n']}",
            f"hard {d['hard']} ({_fmt(d['hard_ratio'])})",
            f"scores T {_fmt(d['teacher_mean'])} / S {_fmt(d['student_mean'])}",
            f"flip {_fmt(d['swap_flip_rate'])}",
            f"parse-fail {d['parse_failures']}",
        ]
    if g:
        parts += [f"new {g['accepted']['hard']}h+{g['accepted']['easy']}e ({g['stopped']})"]
    if "oracle" in m:
        parts += [f"pool acc {_pct(m['oracle'].get('overall'))}%"]
    held_out = m.get("eval", {}).get("oracle", {}).get("overall")
    if held_out is not None:
        parts += [f"held-out acc {_pct(held_out)}%"]
    total = m.get("usage", {}).get("total", {})
    if total:
        parts += [f"spent ${total.get('usd', 0):.4f}"]
    return "  ".join(parts)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.0f}"


# the per-round summary: (header, value from a round's metrics)
COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("round", lambda m: str(m["round"])),
    ("train", lambda m: str(m.get("imitation", {}).get("n_train", "-"))),
    ("cache", lambda m: str(m.get("discrimination", {}).get("n", "-"))),
    ("hard%", lambda m: _pct(m.get("discrimination", {}).get("hard_ratio"))),
    ("T mean", lambda m: _fmt(m.get("discrimination", {}).get("teacher_mean"))),
    ("S mean", lambda m: _fmt(m.get("discrimination", {}).get("student_mean"))),
    ("flip%", lambda m: _pct(m.get("discrimination", {}).get("swap_flip_rate"))),
    ("parse fail", lambda m: str(m.get("discrimination", {}).get("parse_failures", "-"))),
    ("new hard", lambda m: str(m.get("generation", {}).get("accepted", {}).get("hard", "-"))),
    ("new easy", lambda m: str(m.get("generation", {}).get("accepted", {}).get("easy", "-"))),
    ("rejected", lambda m: str(sum(m["generation"]["rejected"].values())) if "generation" in m else "-"),
    # offline world: exact accuracy on the Cache Pool (seen in training) and on held-out questions (eval)
    ("pool acc%", lambda m: _pct(m.get("oracle", {}).get("overall"))),
    ("held-out acc%", lambda m: _pct(m.get("eval", {}).get("oracle", {}).get("overall"))),
    ("eval rel%", lambda m: _fmt(m.get("eval", {}).get("overall", {}).get("relative", {}).get("mean"), ".1f")),
    ("USD", lambda m: f"{m.get('usage', {}).get('total', {}).get('usd', 0):.4f}"),
    ("tokens", lambda m: str(sum(m.get("usage", {}).get("total", {}).get(k, 0) for k in ("tokens_in", "tokens_out")))),
]


def summary_table(rounds: list[dict[str, Any]]) -> str:
    """The per-round summary: hard ratio, scores, referee health, new instructions, accuracy, spend (cumulative)."""
    head = [h for h, _ in COLUMNS]
    rows = [[f(m) for _, f in COLUMNS] for m in rounds]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def family_table(rounds: list[dict[str, Any]]) -> str | None:
    """Offline world: the student's exact accuracy per task family and round (held-out when evaluated)."""
    cols: list[tuple[str, dict[str, float]]] = []
    for m in rounds:
        held_out = m.get("eval", {}).get("oracle", {}).get("accuracy")
        pool = m.get("oracle", {}).get("accuracy")
        if held_out:
            cols.append((f"r{m['round']} held-out", held_out))
        elif pool:
            cols.append((f"r{m['round']} pool", pool))
    if not cols:
        return None
    families = sorted({f for _, acc in cols for f in acc})
    width = max(len(f) for f in [*families, "family"])
    lines = ["family".ljust(width) + "".join(f"  {h:>13}" for h, _ in cols)]
    for f in families:
        lines.append(f.ljust(width) + "".join(f"  {_pct(acc.get(f)):>13}" for _, acc in cols))
    return "student accuracy per task family (%):\n" + "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.run", description="Run or resume the Lion adversarial loop.")
    add_config_args(p)
    p.add_argument("--rounds", type=int, default=None, help="number of rounds (overrides the config's `rounds`)")
    p.add_argument("--run-dir", default=None, help="run directory (overrides the config's `run_dir`)")
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="refuse to continue an existing run directory (default: resume it)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.rounds is not None:
        overrides.append(f"rounds={args.rounds}")
    if args.run_dir is not None:
        overrides.append(f"run_dir={args.run_dir}")
    cfg = load_config(args.config, overrides)
    if not args.resume and (Path(cfg.run_dir) / "state.json").exists():
        raise LionError(
            f"run_dir: {cfg.run_dir} already holds a run and --no-resume was given; "
            "choose another run_dir or drop --no-resume to continue it"
        )
    lion_loop(cfg, progress=args.progress)
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
