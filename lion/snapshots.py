"""Which model really answered: the snapshots the providers reported per role, and the models near retirement.

    python -m lion.snapshots RUN            # the served snapshots per role of a run (also in lion status / report)
    python -m lion.snapshots --check CFG    # the configured models against lion/model_retirements.yaml

- A provider names the model that served each call (`model` in the response: `gpt-4o` is answered by
  `gpt-4o-2024-08-06`; `system_fingerprint` names the backend configuration). The gateway records both with every
  paid call (RUN/calls.sqlite, table `snapshots`; each answer, verdict and generated instruction keeps its own),
  and when a role's configured model is served by a second snapshot during the run it prints `change_line` and
  follows `llm.<role>.on_model_change` (warn | stop).
- `--check CFG`: the configured models against lion/model_retirements.yaml (lion.retirements, also used by
  `lion plan` and `lion config`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .records import query_read_only

# --------------------------------------------------------------------------------------------- served snapshots


def _label(row: dict[str, Any]) -> str:
    served = row.get("served") or "(not reported)"
    return served + (f" [{row['fingerprint']}]" if row.get("fingerprint") else "")


def by_snapshot(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Calls per served snapshot (fingerprints summed), in the order first seen."""
    out: dict[str, int] = {}
    for r in rows:
        key = r.get("served") or "(not reported)"
        out[key] = out.get(key, 0) + int(r.get("calls") or 0)
    return out


def change_line(role: str, model: str, rows: Sequence[dict[str, Any]], policy: str) -> str:
    """The one line printed when `model` of `role` is served by more than one snapshot."""
    counts = ", ".join(f"{s} ({n} calls)" for s, n in by_snapshot(rows).items())
    what = ("the run stops here (calls made so far are cached); pin one snapshot in llm.{r}.model, or set "
            "llm.{r}.on_model_change: warn to go on with both" if policy == "stop" else
            "answers of both are in this run, each recorded with its snapshot; llm.{r}.on_model_change: stop "
            "stops the run instead").format(r=role)
    return f"llm.{role}: {model} was served by another snapshot during the run: {counts} — {what}"


def read_snapshots(calls_db: Path) -> list[dict[str, Any]]:
    """The snapshots table of a run's call cache, opened read-only (safe while the run goes on); [] if none."""
    found = query_read_only(calls_db, ("SELECT role, model, served, fingerprint, calls, first, last FROM snapshots "
                                       "ORDER BY first", ()))
    if found is None:
        return []
    rows = found[0]
    keys = ("role", "model", "served", "fingerprint", "calls", "first", "last")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def per_role(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{role: {configured model: {"snapshots": {served: calls}, "fingerprints": {fp: calls}}}}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        entry = out.setdefault(r["role"], {}).setdefault(r["model"], {"snapshots": {}, "fingerprints": {}})
        served = r.get("served") or "(not reported)"
        entry["snapshots"][served] = entry["snapshots"].get(served, 0) + int(r["calls"])
        if r.get("fingerprint"):
            entry["fingerprints"][r["fingerprint"]] = entry["fingerprints"].get(r["fingerprint"], 0) + int(r["calls"])
    return out


def format_roles(summary: dict[str, dict[str, dict[str, Any]]], indent: str = "  ") -> list[str]:
    """Lines like `teacher gpt-4o: gpt-4o-2024-08-06 (1200 calls), gpt-4o-2024-11-20 (34 calls) [changed]`."""
    lines = []
    for role, models in summary.items():
        for model, entry in models.items():
            snaps = entry["snapshots"]
            text = ", ".join(f"{s} ({n} calls)" for s, n in snaps.items())
            changed = " [changed during the run]" if len([s for s in snaps if s != "(not reported)"]) > 1 else ""
            fps = f"; {len(entry['fingerprints'])} system fingerprints" if len(entry["fingerprints"]) > 1 else ""
            lines.append(f"{indent}{role} {model}: {text}{changed}{fps}")
    return lines


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.snapshots", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", help="a run directory: its served snapshots per role")
    p.add_argument("--check", metavar="CONFIG", help="warn for configured models past or near their retirement")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import ConfigError
    from .layout import RunLayout

    args = make_parser().parse_args(argv)
    if args.check:
        from .config import configured_models, load_config
        from .retirements import retirement_warnings

        for w in retirement_warnings(configured_models(load_config(args.check))) or ["no configured model is near "
                                                                                      "an announced retirement"]:
            print(w)
        return 0
    if not args.run_dir:
        raise ConfigError("give a run directory, or --check CONFIG")
    lines = format_roles(per_role(read_snapshots(RunLayout(args.run_dir).calls)), indent="")
    print("\n".join(lines) if lines else "no paid call recorded a served snapshot yet")
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
