"""The run directory: round folders, phase markers, loop state and the teacher-answer store.

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
from .errors import LionError
from .records import append_jsonl, write_json

PHASES = ("imitation", "discrimination", "generation")

# keys whose change would make finished work inconsistent with new work
RESUME_CRITICAL = (
    "seed",
    "student.model",
    "student.mode",
    "student.prompt_format",
    "student.tiny",
    "pools.train_seed",
    "pools.cache_seed",
    "pools.limit",
    "pools.train_pool",
    "discrimination.tau",
    "discrimination.both_orders",
    "generation.n_hard",
    "generation.n_easy",
    "generation.rouge_threshold",
    "generation.seed",
    "llm.teacher.model",
    "llm.referee.model",
    "llm.generator.model",
    "sim.responder",
    "sim.options",
)


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None  # type: ignore[assignment]
    return d


def fingerprint(cfg: LionConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: _get(d, k) for k in RESUME_CRITICAL}


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ layout
    def round_dir(self, r: int) -> Path:
        return self.path / f"round_{r:02d}"

    def done_marker(self, r: int, phase: str) -> Path:
        return self.round_dir(r) / f"{phase}.done"

    def is_done(self, r: int, phase: str) -> bool:
        return self.done_marker(r, phase).exists()

    def mark_done(self, r: int, phase: str, info: dict[str, Any] | None = None) -> None:
        write_json(self.done_marker(r, phase), {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(info or {})})

    def student_dir(self, r: int) -> Path:
        return self.round_dir(r) / "student"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    @property
    def answers_path(self) -> Path:
        return self.path / "teacher_answers.jsonl"

    # ------------------------------------------------------------------ state
    def read_state(self) -> dict[str, Any] | None:
        if not self.state_path.exists():
            return None
        try:
            return json.loads(self.state_path.read_text())
        except json.JSONDecodeError as e:
            raise LionError(
                f"{self.state_path}: corrupt state file ({e.msg}); it is rewritten atomically, so "
                "this means it was edited by hand"
            ) from None

    def check_or_init_state(self, cfg: LionConfig) -> dict[str, Any]:
        """Create state.json, or check that `cfg` may resume the run recorded there."""
        fp = fingerprint(cfg)
        state = self.read_state()
        if state is None:
            if any(self.path.glob("round_*")):
                raise LionError(
                    f"{self.path}: has round folders but no state.json; the run directory is "
                    "inconsistent (restore state.json or start a new run_dir)"
                )
            state = {"version": 1, "fingerprint": fp, "rounds_completed": 0}
            write_json(self.state_path, state)
            return state
        old = state.get("fingerprint", {})
        for key in RESUME_CRITICAL:
            if key in old and old[key] != fp[key]:
                raise LionError(
                    f"{key}: changed from {old[key]!r} to {fp[key]!r} since this run started in {self.path}; "
                    "that would mix incompatible work. Restore the old value, or use a new run_dir"
                )
        return state

    def set_rounds_completed(self, n: int) -> None:
        state = self.read_state() or {"version": 1}
        state["rounds_completed"] = n
        write_json(self.state_path, state)

    def describe(self) -> str:
        state = self.read_state()
        lines = [f"{self.path}: {'no state.json (not a lion run?)' if state is None else ''}".rstrip()]
        if state is not None:
            lines.append(f"  rounds completed: {state.get('rounds_completed', 0)}")
        for rd in sorted(self.path.glob("round_*")):
            done = [p for p in PHASES if (rd / f"{p}.done").exists()]
            lines.append(f"  {rd.name}: {', '.join(done) or 'nothing'} done")
        return "\n".join(lines)


class AnswerStore:
    """Teacher answers per (instruction id, teacher identity), append-only, shared by all phases and rounds.

    The gateway's call cache already guarantees no call is paid twice; this store is the readable record
    that lets later phases and rounds use an answer without even asking the gateway.
    """

    def __init__(self, path: Path):
        self.path = path
        self._answers: dict[tuple[str, str], dict[str, Any]] = {}
        if path.exists():
            for row in _read_tolerant(path):
                self._answers[(row["id"], row["teacher"])] = row

    def get(self, id: str, teacher: str) -> dict[str, Any] | None:
        return self._answers.get((id, teacher))

    def put(self, id: str, teacher: str, answer: str, finish_reason: str | None) -> None:
        row = {"id": id, "teacher": teacher, "answer": answer, "finish_reason": finish_reason}
        self._answers[(id, teacher)] = row
        append_jsonl(self.path, row)


def _read_tolerant(path: Path) -> list[dict[str, Any]]:
    """Read an append-only JSONL file, dropping a torn last line left by a crash."""
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # torn final line after a crash: that answer is replayed from the call cache
            raise LionError(f"{path}:{i + 1}: corrupt line in the middle of an append-only file") from None
    return rows


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
