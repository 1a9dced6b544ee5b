"""A short version of the README's smoke run, end to end: `python -m lion.run --config configs/smoke.yaml`.

    python -m pytest -q tests/test_oracle_smoke.py

The real command (`configs/smoke.yaml` unchanged) trains for minutes; here the same config runs one round with
a smaller student and fewer steps, in a subprocess, offline: the run starts the oracle on a local server, the
real openai client talks to it, and the per-round summary, the oracle accuracy and the cost ledger come out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from lion.sim import tasks as W

ROOT = Path(__file__).resolve().parents[1]

QUICK = [
    "student.tiny.hidden=32", "student.tiny.layers=1", "student.tiny.heads=2", "student.max_steps=4",
    "student.per_device_batch_size=16", "pools.limit=40", "generation.n_hard=6", "generation.n_easy=4",
]


def test_smoke_config_is_complete() -> None:
    from lion.config import load_config

    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    assert cfg.sim.enabled and cfg.sim.responder == "oracle" and cfg.student.model == "tiny"
    assert 2 <= cfg.rounds <= 3
    seeds = [json.loads(line) for line in (ROOT / cfg.pools.train_seed).read_text().splitlines()]
    assert seeds == W.seed_pool(len(seeds), 0)  # the shipped seed file is what its header command writes
    assert cfg.llm.prices[cfg.llm.default.model].output > 0  # made-up prices, so the ledger shows a cost


def test_short_smoke_run_end_to_end(tmp_path: Path) -> None:
    run = tmp_path / "smoke"
    cmd = [sys.executable, "-m", "lion.run", "--config", "configs/smoke.yaml", "--rounds", "1",
           "--run-dir", str(run), "--no-progress"]
    for item in QUICK:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k != "LION_SIM_KEY"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "round 1:" in out and "hard%" in out and "flip%" in out and "USD" in out, out

    m = json.loads((run / "round_01" / "metrics.json").read_text())
    d = m["discrimination"]
    assert d["n"] == 40 and d["hard"] + d["easy"] + d["excluded"] == 40
    assert d["parse_failures"] == 0  # the oracle always answers in the referee template's format
    assert set(m["oracle"]["accuracy"]) <= set(W.BY_NAME) and m["oracle"]["overall"] is not None
    assert m["usage"]["total"]["usd"] > 0
    gen = [json.loads(line) for line in (run / "round_01" / "generated.jsonl").read_text().splitlines()]
    assert gen and all(W.parse_task(g["instruction"]) is not None for g in gen)  # the generator speaks the world
    assert all(g["kind"] in ("hard", "easy") and g["parent"] for g in gen)
    log = [json.loads(line) for line in (run / "sim_requests.jsonl").read_text().splitlines()]
    assert log and all(e["status"] == 200 for e in log)
    assert yaml.safe_load((run / "config.yaml").read_text())["sim"]["responder"] == "oracle"
