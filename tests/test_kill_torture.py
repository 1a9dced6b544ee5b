"""The kill-torture benchmark in small: a two-round offline run SIGKILLed a handful of times (training, inference,
judging, ...) and resumed equals the uninterrupted run; online, only calls in flight at a kill are paid twice; in
batch mode (batch ids committed before waiting, polled again on resume) no call is.

    python -m pytest -q tests/test_kill_torture.py        (the full figures: python bench/kill_torture.py)
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("kill_torture", ROOT / "bench" / "kill_torture.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_a_run_killed_a_handful_of_times_equals_the_uninterrupted_run(tmp_path, capsys) -> None:
    assert _bench().main(["--kills", "5", "--seeds", "20", "--max-steps", "40", "--workdir", str(tmp_path),
                          "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["kills"] >= 5, out
    assert out["differing_artifacts"] == 0, out["differing"]
    assert out["artifacts_compared"] > 40
    assert out["duplicates_beyond_in_flight"] == 0, out
    assert out["duplicate_completed_calls"] <= out["lost_in_flight"]
    assert out["second_writer_status"] == 2
    assert "training" in out["kills_by_activity"], out["kills_by_activity"]


@pytest.mark.slow
def test_in_batch_mode_no_call_is_completed_twice_across_kills(tmp_path, capsys) -> None:
    assert _bench().main(["--mode", "batch", "--kills", "3", "--seeds", "12", "--max-steps", "20", "--rng", "1",
                          "--workdir", str(tmp_path), "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["mode"] == "batch" and out["kills"] >= 3, out
    assert out["differing_artifacts"] == 0, out["differing"]
    assert out["completed_calls_killed"] == out["completed_calls_reference"] > 0, out
    assert out["duplicate_completed_calls"] == 0, out
