"""The run directory: phase markers and loop state, on top of its layout (lion.layout).

    python -m lion.rundir RUN_DIR        # print the state of a run: rounds and phases done

Layout and file formats: docs/run-dir.md. A phase is finished exactly when its `<phase>.done` marker
exists; the marker is written last, after every file of the phase has been written atomically. The loop
state (`state.json`) records the fingerprint of the resume-critical config keys, so that a resumed run
with a config that would change finished work fails with a message naming the key.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import LionConfig
from .errors import ConfigError, LionError
from .layout import CONTROL_STEPS, OPTIONAL_PHASES, PHASES, RunLayout
from .records import write_json

# keys whose change would make finished work inconsistent with new work
RESUME_CRITICAL = (
    "seed",
    "student.model",
    "student.mode",
    "student.prompt_format",
    "student.tiny",
    "student.init.keep_layers",
    "pools.train_seed",
    "pools.cache_seed",
    "pools.limit",
    "pools.train_pool",
    "pools.seed_answers",
    "pools.fresh_share",
    "discrimination.tau",
    "discrimination.both_orders",
    "discrimination.selector",
    "discrimination.learnable_base",
    "discrimination.stuck_rounds",
    "discrimination.hard_fraction",
    "discrimination.only_unseen",
    "discrimination.probe_size",
    "discrimination.progress_floor",
    "discrimination.referee_prompts",
    "discrimination.truncated_student",
    "generation.n_hard",
    "generation.n_easy",
    "generation.rouge_threshold",
    "generation.seed",
    "generation.max_category_share",
    "llm.teacher.model",
    "llm.referee.model",
    "llm.generator.model",
    "sim.responder",
    "sim.options",
    "sim.world",
)


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None  # type: ignore[assignment]
    return d


def fingerprint(cfg: LionConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: _get(d, k) for k in RESUME_CRITICAL}


class RunDir(RunLayout):
    """A run directory: its layout (lion.layout), phase markers and loop state."""

    # ------------------------------------------------------------------ phase markers
    def is_done(self, r: int, phase: str) -> bool:
        return self.round(r).done(phase).exists()

    def mark_done(self, r: int, phase: str, info: dict[str, Any] | None = None) -> None:
        write_json(self.round(r).done(phase), {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(info or {})})

    # ------------------------------------------------------------------ state
    def read_state(self) -> dict[str, Any] | None:
        if not self.state.exists():
            return None
        try:
            return json.loads(self.state.read_text())
        except json.JSONDecodeError as e:
            raise LionError(
                f"{self.state}: corrupt state file ({e.msg}); it is rewritten atomically, so "
                "this means it was edited by hand"
            ) from None

    def check_or_init_state(self, cfg: LionConfig) -> dict[str, Any]:
        """Create state.json, or check that `cfg` may resume the run recorded there."""
        fp = fingerprint(cfg)
        state = self.read_state()
        if state is None:
            if self.rounds():
                raise LionError(
                    f"{self.root}: has round folders but no state.json; the run directory is "
                    "inconsistent (restore state.json or start a new run_dir)"
                )
            state = {"version": 1, "fingerprint": fp, "rounds_completed": 0}
            write_json(self.state, state)
            return state
        old = state.get("fingerprint", {})
        for key in RESUME_CRITICAL:
            if key in old and old[key] != fp[key]:
                raise LionError(
                    f"{key}: changed from {old[key]!r} to {fp[key]!r} since this run started in {self.root}; "
                    "that would mix incompatible work. Restore the old value, or use a new run_dir"
                )
        return state

    def set_rounds_completed(self, n: int) -> None:
        state = self.read_state() or {"version": 1}
        state["rounds_completed"] = n
        write_json(self.state, state)

    def control_track(self, rule: str) -> int:
        """The round from which the control student (eval.control: `rule`) runs: recorded in state.json the first
        time it is asked, as round 2 for a run that has it from the start, else the first round not completed yet
        (a control added to a run in progress joins at its next round). A rule other than the recorded one is a
        ConfigError: two controls would be mixed in one track."""
        state = self.read_state() or {"version": 1}
        track = state.get("control")
        if track is None:
            track = {"rule": rule, "from_round": max(2, int(state.get("rounds_completed", 0)) + 1)}
            state["control"] = track
            write_json(self.state, state)
        elif track.get("rule") != rule:
            raise ConfigError(
                f"eval.control: this run's control track is {track.get('rule')!r} from round {track.get('from_round')} "
                f"({self.state}); changing it to {rule!r} would mix two controls. Set it back, use none to stop the "
                "control, or a new run_dir"
            )
        return int(track["from_round"])

    def describe(self) -> str:
        state = self.read_state()
        lines = [f"{self.root}: {'no state.json (not a lion run?)' if state is None else ''}".rstrip()]
        if state is not None:
            lines.append(f"  rounds completed: {state.get('rounds_completed', 0)}")
        for rp in self.rounds():
            done = [p for p in (*PHASES, *OPTIONAL_PHASES) if rp.done(p).exists()]
            control = [p for p in CONTROL_STEPS if rp.control.done(p).exists()]
            lines.append(f"  {rp.dir.name}: {', '.join(done) or 'nothing'} done"
                         + (f"; control: {', '.join(control)} done" if control else ""))
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lion.rundir", description="Show what a run has done.")
    ap.add_argument("run_dir")
    args = ap.parse_args(argv)
    p = Path(args.run_dir)
    if not p.is_dir():
        raise LionError(f"{p}: run directory not found")
    print(RunDir(p).describe())
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
