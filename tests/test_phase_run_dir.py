"""The phase commands take `--run-dir` as lion.run does: the run directory, over the config's `run_dir`.

    python -m pytest -q tests/test_phase_run_dir.py
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from lion.context import run_phase
from lion.errors import LionError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


@pytest.mark.parametrize("phase", ["imitation", "discrimination", "generation"])
def test_every_phase_command_takes_run_dir(tmp_path, phase, capsys):
    module = importlib.import_module(f"lion.{phase}")
    run_dir = tmp_path / "2024"  # a name YAML would read as a number stays a path
    args = module.make_parser().parse_args(["--config", SMOKE, "--round", "1", "--run-dir", str(run_dir),
                                            "--set", "sim.enabled=false", "--no-progress"])
    seen = {}

    def probe(ctx, r):
        seen.update(run_dir=ctx.cfg.run_dir, root=ctx.run.root, r=r)
        return {}

    probe.__name__ = phase
    assert run_phase(probe, args, lambda m: "probed") == 0
    assert seen == {"run_dir": str(run_dir), "root": run_dir, "r": 1}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run_dir"] == str(run_dir)
    assert f"round 1 {phase}: probed" in capsys.readouterr().out


def test_a_real_phase_works_in_the_run_dir_it_is_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's own run_dir (runs/smoke) would land here
    from lion.discrimination import main

    run_dir = tmp_path / "elsewhere"
    with pytest.raises(LionError, match=f"{run_dir}/round_01/student: round 1's student is missing"):
        main(["--config", SMOKE, "--round", "1", "--run-dir", str(run_dir), "--set", "pools.limit=5",
              "--set", f"pools.train_seed={ROOT / 'data' / 'smoke_seed.jsonl'}", "--no-progress"])
    assert (run_dir / "calls.sqlite").exists() and (run_dir / "round_01" / "cache_pool.jsonl").exists()
    assert not (tmp_path / "runs").exists()
