"""Run a student training under torchrun or `accelerate launch` (several GPUs, several nodes, FSDP, DeepSpeed).

    from lion.student.launch import launch_training     # called by train_student when a launch is needed

The parent writes ``OUT.launch/spec.json`` (the student config, the examples file, init_from, out_dir, seed) and
runs ``python -m lion.student.train --spec OUT.launch/spec.json`` in ``student.num_gpus`` processes per node
(at least 1). Output streams through and is kept in ``OUT.launch/train.log``; a failure raises a `LionError` with
the last lines of the log. Multi-node runs read ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK`` from the
environment (run the same command on every node, as with any torchrun job). The launcher is given the run
directory's lock (lion.lock) and gets SIGTERM if this process dies (PR_SET_PDEATHSIG): a killed run leaves no
training behind, and the directory stays locked until that training has stopped.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..config import StudentConfig
from ..errors import ConfigError, LionError
from ..records import write_jsonl
from .checkpoint import META, TrainResult


def launcher_command(cfg: StudentConfig, env: dict[str, str] | None = None) -> list[str]:
    """The launcher part of the command line (everything before `-m lion.student.train`)."""
    env = dict(os.environ if env is None else env)
    nproc = max(1, cfg.num_gpus)
    multi = cfg.nnodes > 1
    if multi and not env.get("MASTER_ADDR"):
        raise ConfigError(f"student.nnodes: {cfg.nnodes} nodes need MASTER_ADDR (and NODE_RANK) in the environment")
    node_rank = env.get("NODE_RANK", "0")
    port = env.get("MASTER_PORT", "29500")
    if cfg.launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", str(cfg.nnodes)]
        if multi:
            cmd += ["--node_rank", node_rank, "--master_addr", env["MASTER_ADDR"], "--master_port", port]
        else:
            cmd += ["--standalone"]
        return cmd
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc * cfg.nnodes),
           "--num_machines", str(cfg.nnodes)]
    if cfg.num_gpus == 0:
        cmd += ["--cpu"]
    elif nproc * cfg.nnodes > 1:
        cmd += ["--multi_gpu"]
    if multi:
        cmd += ["--machine_rank", node_rank, "--main_process_ip", env["MASTER_ADDR"], "--main_process_port", port]
    return cmd + ["--module"]


def _die_with_parent() -> None:
    """In the launcher (Linux): SIGTERM when the process that started it dies, even by SIGKILL; torchrun then
    stops its workers, so no orphaned training keeps writing checkpoints a restarted run also writes."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launch_training(cfg: StudentConfig, examples: list[dict[str, Any]], init_from: str | Path, out_dir: Path,
                    *, seed: int = 0, logging_dir: str | Path | None = None) -> TrainResult:
    out_dir = Path(out_dir).resolve()
    work = out_dir.with_name(out_dir.name + ".launch")
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "examples.jsonl", examples)
    init = str(Path(init_from).resolve()) if Path(init_from).exists() else str(init_from)
    spec = {"cfg": dataclasses.asdict(cfg), "examples": str(work / "examples.jsonl"), "init_from": init,
            "out_dir": str(out_dir), "seed": seed, "logging_dir": str(logging_dir) if logging_dir else None}
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    cmd = launcher_command(cfg)  # torchrun wants `-m MODULE`; accelerate's command already ends in --module
    cmd += (["-m"] if cfg.launcher == "torchrun" else []) + ["lion.student.train", "--spec", str(work / "spec.json")]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # so `-m lion...` resolves in the children, installed or not
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_path = work / "train.log"
    last: collections.deque[str] = collections.deque(maxlen=30)
    from ..lock import held_fds

    with open(log_path, "w") as log, subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        pass_fds=held_fds(), preexec_fn=_die_with_parent,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            last.append(line.rstrip("\n"))
            sys.stderr.write(line)
        rc = proc.wait()
    if rc != 0:
        lines = "\n".join(last)
        raise LionError(f"distributed student training failed (exit status {rc}); full log: {log_path}\n{lines}")
    meta_path = out_dir / META
    if not meta_path.is_file():
        raise LionError(f"distributed student training exited cleanly but wrote no {meta_path}; log: {log_path}")
    return TrainResult(out_dir, json.loads(meta_path.read_text())["metrics"])
