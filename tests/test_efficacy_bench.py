"""bench/efficacy.py end to end at CI size (--smoke): every kind of arm runs, results resume job by job, the report
applies the adoption rule and prints one JSON line. A check that the study's bench cannot rot, not a result.

    python -m pytest -q tests/test_efficacy_bench.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_study_bench_runs_every_kind_of_arm_and_resumes(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "efficacy.py"), "--smoke", "--workdir", str(tmp_path / "work"),
           "--world", str(ROOT / "configs" / "worlds" / "default.yaml"),
           "--arms", "plain", "lion", "spin", "progress_fresh", "plain_usd"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["failed_jobs"] == 0 and line["overlap"] == 0 and line["worlds"] == ["default"]
    assert set(line["final_natural"]["default"]) == {"plain", "lion", "spin", "progress_fresh", "plain_usd"}
    res = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "work" / "default" / "results").glob("*.json")}
    assert res["arm_plain_usd_s0"]["new_per_round"] > res["arm_plain_s0"]["new_per_round"]  # lion spent more
    assert res["arm_spin_s0"]["preference"][0]["pairs"] > 0
    assert all(r["job"]["cpu_s"] > 0 for r in res.values())
    summary = json.loads((tmp_path / "work" / "report" / "summary.json").read_text())
    assert summary["adoption"] == {}  # one seed: no paired interval, so no arm is a candidate for adoption
    from efficacy import adoption

    ci = {"mean": 0.05, "lo": 0.01, "hi": 0.09, "n": 10}
    worlds = {w: {"diff_vs_plain": {"a": {"natural": ci}, "plain_usd": {"natural": ci}}} for w in ("x", "y", "z")}
    worlds["z"]["diff_vs_plain"]["a"]["natural"] = {"mean": -0.05, "lo": -0.09, "hi": -0.01, "n": 10}
    rule = adoption(worlds)
    assert set(rule) == {"a"} and rule["a"]["beats_plain_in"] == ["x", "y"] and not rule["a"]["adopt"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # every job done: nothing runs again
    assert again.returncode == 0 and "[1/" not in again.stdout


def test_a_partial_studys_report_reads_only_the_seeds_asked_for(tmp_path: Path) -> None:
    """A study stopped part way has 10 seeds of its first arms and fewer of the later ones: `--seeds N` at the report
    stage reads seeds 0 .. N-1 only, so every arm's mean is over the same seeds."""
    from efficacy import load_results

    res = tmp_path / "results"
    res.mkdir()
    for s in range(4):
        (res / f"trunk_s{s}.json").write_text("{}")
        (res / f"arm_plain_s{s}.json").write_text(json.dumps({"arm": "plain", "seed": s}))
    (res / "arm_lion_s0.json").write_text(json.dumps({"arm": "lion", "seed": 0}))
    arms, trunks = load_results(tmp_path, [0, 1])
    assert sorted(arms["plain"]) == [0, 1] and sorted(arms["lion"]) == [0] and sorted(trunks) == [0, 1]
    assert sorted(load_results(tmp_path)[0]["plain"]) == [0, 1, 2, 3]
