"""The dedup benchmark stays runnable: a small run agrees with rouge_score brute force and prints JSON last.

python -m pytest -q tests/test_dedup_bench.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]


def test_small_benchmark_run(shared_data: Path):
    """bench/dedup.py on a small pool (the real instructions it reads from ../shared/data) agrees with brute force."""
    for name in ("self_instruct/seed_tasks.jsonl", "self_instruct/user_oriented_instructions.jsonl",
                 "vicuna80/question.jsonl", "mt_bench/question.jsonl"):
        shared_file(shared_data, name)
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dedup.py"), "--pool", "800", "--candidates", "120", "--check", "2",
         "--jobs", "1", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1  # --json: only the figures
    out = json.loads(lines[-1])
    assert out["pool"] == 800 and out["candidates"] == 120
    assert out["mismatches"] == 0 and out["checked"] == 2
    assert out["duplicates"] == out["duplicates_confirmed"] and 0 < out["duplicates"] < 120
    assert out["accepted"] + out["duplicates"] == 120 and out["speedup_cpu"] > 1
