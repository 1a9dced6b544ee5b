"""Run a student training as a separate job: torchrun (one node or many), `accelerate launch`, or your own command.

    from lion.student.launch import launch_training     # called by train_student when a launch is needed
    python -m lion.student.train OUT.launch/spec.json   # what every node runs (the training entry point)

Only the loop process buys API calls and writes the run directory; training is a job it starts and waits for.
The parent writes ``OUT.launch/spec.json`` (the student config, the examples file, init_from, out_dir, seed) and
the job runs ``python -m lion.student.train SPEC`` in every process (rank 0 alone writes the checkpoint ``OUT``).
With several nodes, ``OUT.launch`` must be on a filesystem they all read (the run directory on NFS/Lustre; only
the SQLite call cache must stay local, see lion.fscheck). ``student.launcher``:

- ``torchrun``: ``student.num_gpus`` processes on this node (``--standalone``); with ``nnodes > 1`` the classic
  static rendezvous from ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK`` in the environment.
- ``torchrun_multinode``: one torchrun agent per node meeting at a c10d rendezvous (``student.rdzv_endpoint``,
  ``--rdzv_id``): this node runs one agent, and ``student.worker_command`` starts each other node's (e.g.
  ``ssh gpu{node} {cmd}``, {cmd} being the agent's command line as shell words); without it the command is
  printed for you or your scheduler to start.
- ``accelerate``: ``accelerate launch`` (``--config_file student.accelerate_config`` when set).
- ``command``: ``student.launch_command`` run by the shell with ``{spec}`` (e.g. ``srun ... torchrun ...
  -m lion.student.train {spec}``); lion waits for it to exit and checks the checkpoint.

Output streams through and is kept in ``OUT.launch/train.log`` (other nodes' agents: ``OUT.launch/node<k>.log``);
a failure raises a `LionError` with the last lines of the log.
The launcher is given the run directory's lock (lion.lock) and gets SIGTERM if this process dies
(PR_SET_PDEATHSIG): a killed run leaves no training behind, and the directory stays locked until that training
has stopped.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

from ..config import StudentConfig
from ..errors import ConfigError, LionError
from ..records import write_jsonl
from .checkpoint import META, TrainResult

TRAIN_MODULE = "lion.student.train"


def launcher_command(cfg: StudentConfig, env: dict[str, str] | None = None, *, rdzv_id: str = "") -> list[str]:
    """The launcher part of the command line (everything before `-m lion.student.train`)."""
    env = dict(os.environ if env is None else env)
    nproc = max(1, cfg.num_gpus)
    multi = cfg.nnodes > 1
    if cfg.launcher == "torchrun_multinode":
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(cfg.nnodes), "--nproc_per_node",
                str(nproc), "--rdzv_backend", "c10d", "--rdzv_endpoint", cfg.rdzv_endpoint,
                "--rdzv_id", cfg.rdzv_id or rdzv_id or "lion", "--max_restarts", "0"]
    if multi and cfg.launcher == "torchrun" and not env.get("MASTER_ADDR"):
        raise ConfigError(f"student.nnodes: {cfg.nnodes} nodes need MASTER_ADDR (and NODE_RANK) in the environment, "
                          "or student.launcher: torchrun_multinode with student.rdzv_endpoint")
    node_rank = env.get("NODE_RANK", "0")
    port = env.get("MASTER_PORT", "29500")
    if cfg.launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", str(cfg.nnodes)]
        if multi:
            cmd += ["--node_rank", node_rank, "--master_addr", env["MASTER_ADDR"], "--master_port", port]
        else:
            cmd += ["--standalone"]
        return cmd
    if cfg.launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        if cfg.accelerate_config:
            if not Path(cfg.accelerate_config).is_file():
                raise ConfigError(f"student.accelerate_config: {cfg.accelerate_config} does not exist")
            return cmd + ["--config_file", str(Path(cfg.accelerate_config).resolve()), "--module"]
        cmd += ["--num_processes", str(nproc * cfg.nnodes), "--num_machines", str(cfg.nnodes)]
        if cfg.num_gpus == 0:
            cmd += ["--cpu"]
        elif nproc * cfg.nnodes > 1:
            cmd += ["--multi_gpu"]
        if multi:
            if not env.get("MASTER_ADDR"):
                raise ConfigError(f"student.nnodes: {cfg.nnodes} nodes need MASTER_ADDR (and NODE_RANK) in the "
                                  "environment, or student.accelerate_config")
            cmd += ["--machine_rank", node_rank, "--main_process_ip", env["MASTER_ADDR"], "--main_process_port", port]
        return cmd + ["--module"]
    raise ConfigError(f"student.launcher: {cfg.launcher!r} has no launcher command line (use launch_command)")


def _die_with_parent() -> None:
    """In the launcher (Linux): SIGTERM when the process that started it dies, even by SIGKILL; torchrun then
    stops its workers, so no orphaned training keeps writing checkpoints a restarted run also writes."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def training_command(cfg: StudentConfig, spec: Path, *, rdzv_id: str = "") -> list[str]:
    """The whole command line one node runs: launcher + `-m lion.student.train SPEC`."""
    cmd = launcher_command(cfg, rdzv_id=rdzv_id)
    # torchrun wants `-m MODULE`; accelerate's command already ends in --module
    return cmd + (["-m"] if cfg.launcher != "accelerate" else []) + [TRAIN_MODULE, str(spec)]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # so `-m lion...` resolves in the children, installed or not
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _fill(template: str, **values: str) -> str:
    """`{name}` placeholders replaced (plain text replacement: a template may hold other braces, e.g. JSON)."""
    for k, v in values.items():
        template = template.replace("{" + k + "}", v)
    return template


def write_spec(cfg: StudentConfig, examples: list[dict[str, Any]], init_from: str | Path, out_dir: Path,
               seed: int, logging_dir: str | Path | None = None, objective: dict[str, Any] | None = None) -> Path:
    """OUT.launch/spec.json (+ examples.jsonl): everything a training process needs, as absolute paths."""
    work = out_dir.with_name(out_dir.name + ".launch")
    work.mkdir(parents=True, exist_ok=True)
    write_jsonl(work / "examples.jsonl", examples)
    init = str(Path(init_from).resolve()) if Path(init_from).exists() else str(init_from)
    spec = {"cfg": dataclasses.asdict(cfg), "examples": str(work / "examples.jsonl"), "init_from": init,
            "out_dir": str(out_dir), "seed": seed, "logging_dir": str(logging_dir) if logging_dir else None,
            "objective": objective}
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    return work / "spec.json"


def launch_training(cfg: StudentConfig, examples: list[dict[str, Any]], init_from: str | Path, out_dir: Path,
                    *, seed: int = 0, logging_dir: str | Path | None = None,
                    objective: dict[str, Any] | None = None) -> TrainResult:
    out_dir = Path(out_dir).resolve()
    spec = write_spec(cfg, examples, init_from, out_dir, seed, logging_dir, objective)
    work = spec.parent
    env = _child_env()
    workers: list[tuple[int, subprocess.Popen[bytes], IO[bytes], Path]] = []
    if cfg.launcher == "command":
        cmd: list[str] | str = _fill(cfg.launch_command, spec=shlex.quote(str(spec)), python=shlex.quote(sys.executable))
    else:
        rdzv_id = f"lion-{uuid.uuid4().hex[:12]}"
        cmd = training_command(cfg, spec, rdzv_id=rdzv_id)
        if cfg.launcher == "torchrun_multinode":
            workers = _start_workers(cfg, cmd, spec, env)
    rc, last = _run_logged(cmd, env, work / "train.log", watch=workers)
    failed_workers = _wait_workers(workers, ok=rc == 0)
    log_path = work / "train.log"
    if rc != 0 or failed_workers:
        lines = "\n".join(last)
        extra = "".join(f"\n{w}" for w in failed_workers)
        raise LionError(f"student training job failed (exit status {rc}); full log: {log_path}\n{lines}{extra}")
    meta_path = out_dir / META
    if not meta_path.is_file():
        raise LionError(f"student training job exited cleanly but wrote no {meta_path}; log: {log_path}")
    return TrainResult(out_dir, json.loads(meta_path.read_text())["metrics"])


def _run_logged(cmd: list[str] | str, env: dict[str, str], log_path: Path,
                watch: list[tuple[int, subprocess.Popen[bytes], IO[bytes], Path]] | None = None,
                ) -> tuple[int, collections.deque[str]]:
    """Run `cmd` (a string: through the shell), streaming its output to stderr and `log_path`. If one of the
    `watch` processes (the other nodes' agents) fails first, `cmd` is stopped instead of waiting at the
    rendezvous until it times out."""
    last: collections.deque[str] = collections.deque(maxlen=30)
    from ..lock import held_fds

    with open(log_path, "w") as log, subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        shell=isinstance(cmd, str), pass_fds=held_fds(), preexec_fn=_die_with_parent,
    ) as proc:
        assert proc.stdout is not None
        if watch:
            threading.Thread(target=_stop_on_failure, args=(proc, [w[1] for w in watch]), daemon=True).start()
        for line in proc.stdout:
            log.write(line)
            last.append(line.rstrip("\n"))
            sys.stderr.write(line)
        return proc.wait(), last


def _stop_on_failure(main: subprocess.Popen[str], others: list[subprocess.Popen[bytes]]) -> None:
    while main.poll() is None:
        if any(p.poll() not in (None, 0) for p in others):
            main.terminate()
            return
        time.sleep(0.5)


def _start_workers(cfg: StudentConfig, cmd: list[str], spec: Path,
                   env: dict[str, str]) -> list[tuple[int, subprocess.Popen[bytes], IO[bytes], Path]]:
    """The other nodes' torchrun agents, through student.worker_command (or the user, told what to run)."""
    line = shlex.join(cmd)
    if not cfg.worker_command:
        sys.stderr.write(f"lion: waiting at the rendezvous {cfg.rdzv_endpoint} for {cfg.nnodes - 1} more node(s); "
                         f"on each, run (in a shell where `lion` imports):\n  {line}\n")
        return []
    started = []
    for node in range(1, cfg.nnodes):
        log_path = spec.parent / f"node{node}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed by _wait_workers
        shell = _fill(cfg.worker_command, cmd=line, node=str(node), spec=shlex.quote(str(spec)))
        proc = subprocess.Popen(shell, shell=True, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent)
        started.append((node, proc, log, log_path))
    return started


def _wait_workers(workers: list[tuple[int, subprocess.Popen[bytes], IO[bytes], Path]], *, ok: bool,
                  grace_s: float = 60.0) -> list[str]:
    """Wait for the other agents (they end with the job); stop them if the local agent failed. Their failures."""
    failures = []
    deadline = time.monotonic() + grace_s
    for node, proc, log, log_path in workers:
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()) if ok else 5.0)
        except subprocess.TimeoutExpired:
            proc.terminate()
            rc = proc.wait()
        log.close()
        if rc != 0:
            tail = "".join(collections.deque(log_path.read_text(errors="replace").splitlines(True), maxlen=10))
            failures.append(f"node {node} agent exit status {rc} (log {log_path}):\n{tail}")
    return failures
