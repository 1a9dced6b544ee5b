"""bench/gpu_check.py --smoke runs on CPU, so the GPU check cannot rot between the days a GPU is at hand.

    python -m pytest -q tests/test_gpu_check.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_cpu_section_and_ends_with_one_json_line(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--workdir",
                           str(tmp_path / "w")], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    last = proc.stdout.strip().splitlines()[-1]
    out = json.loads(last)
    assert proc.returncode == 0 and out["ok"] is True, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out["bench"] == "gpu_check" and out["smoke"] is True and out["device"] == "cpu"
    s = out["sections"]
    assert set(s) == {"packing", "lora", "lora_fa2", "full", "qlora", "train_then_infer", "fsdp"}
    # what a CPU can run, ran; what needs CUDA says so
    assert s["qlora"]["skipped"] and s["lora_fa2"]["skipped"] and s["packing"]["flash_attention_2"]["skipped"]
    p = s["packing"]
    assert p["sdpa"]["ok"] and p["eager"]["ok"] and p["sdpa_flattened"]["ok"]
    assert p["sdpa_flattened"]["layout"][0] == 1 and p["leak_logit_gap"] > 0
    for name in ("lora", "full", "train_then_infer", "fsdp"):
        assert s[name]["steps"] == 3 and s[name]["tokens_per_s"] > 0 and s[name]["examples_per_row"] > 1, name
        assert s[name]["mfu"] is None  # no peak FLOPs for a CPU
    assert s["train_then_infer"]["answered"] == s["train_then_infer"]["prompts"] == 4
    assert s["fsdp"]["wrap"] == ["LlamaDecoderLayer"] and s["fsdp"]["world_size"] == 1
