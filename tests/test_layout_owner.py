"""lion.layout owns the names of the run directory's files: no module of lion, and no benchmark that works in a run
directory (bench/scale.py), joins one of those names onto a path itself.

    python -m pytest -q tests/test_layout_owner.py
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from lion.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]


def _layout_names() -> set[str]:
    """Every file or folder name RunLayout and RoundPaths give (round_01 included)."""
    run = RunLayout("/RUN")
    names = {run.answer_index().name, run.round(1).dir.name}
    for obj in (run, run.round(1)):
        for attr, value in inspect.getmembers(type(obj)):
            if isinstance(value, property) and isinstance(path := getattr(obj, attr), Path):
                names.add(path.name)
    return names


NAMES = _layout_names()
JOIN = re.compile(r'/\s*f?"(round_\d+|round_\{[^}]*\}|' + "|".join(map(re.escape, sorted(NAMES))) + r')"')
FILES = [p for p in sorted((ROOT / "lion").rglob("*.py")) if p.name != "layout.py"] + [ROOT / "bench" / "scale.py"]


def test_the_layout_names_what_a_run_directory_holds():
    assert {"round_01", "cache_pool.jsonl", "split.jsonl", "teacher_answers.jsonl", "calls.answers.sqlite"} <= NAMES


def test_no_module_names_a_run_directory_file_itself():
    hits = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}" for path in FILES
            for i, line in enumerate(path.read_text().splitlines(), 1) if JOIN.search(line)]
    assert not hits, "ask lion.layout (RunLayout / round(r)) instead:\n" + "\n".join(hits)
