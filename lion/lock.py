"""One writer per run directory: an exclusive `fcntl.flock` on RUN/run.lock, which records who holds it.

    from lion.lock import RunLock
    with RunLock(run_dir):            # raises RunLocked (exit status 2) naming the holder's host and PID
        ...

    python -m lion.lock RUN_DIR       # who holds the lock of RUN_DIR (reads only; takes nothing)

Taken by `lion.context.RunContext` on entry, so by every entry point that writes a run directory
(`python -m lion.run`, each phase, `lion.evaluate`); `lion.report` and `lion.rundir` only read and take none.
The lock is held through an open file descriptor, so the kernel releases it when the holding process dies,
however it dies (SIGKILL included): a lock file left by a killed run is simply taken over by the next one,
which then writes its own host and PID into it. A second writer fails at once (non-blocking), without
touching anything in the directory. The descriptor is not inherited by the programs the holder starts, except
a torchrun training (`held_fds`, lion.student.launch), which keeps the directory locked until it has exited,
even when the process that started it was killed first.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .errors import LionError
from .layout import RunLayout


class RunLocked(LionError):
    """Another process writes this run directory."""


_HELD: set[int] = set()  # file descriptors of the locks this process holds


def held_fds() -> tuple[int, ...]:
    """The descriptors of the run locks held here: a program started to write the run directory on this
    process's behalf (a torchrun training) is given them, so the directory stays locked until it has exited too,
    even if this process is killed first."""
    return tuple(sorted(_HELD))


def read_holder(path: Path) -> dict[str, Any]:
    """What the lock file says about its holder ({} when unreadable or empty)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (its host and PID are not recorded yet)"
    parts = [f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"]
    if holder.get("started_at"):
        parts.append(f"since {holder['started_at']}")
    if holder.get("command"):
        parts.append(f"({holder['command']})")
    return " ".join(parts)


class RunLock:
    """An exclusive, non-blocking lock on one run directory (re-entrant within the holding object only)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = RunLayout(run_dir).lock
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child programs (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.path)
            gone = ""
            if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
                if not _alive(holder["pid"]):
                    gone = (" (that process has ended, but a program it started, e.g. a torchrun training, still "
                            "holds the lock; it stops by itself shortly)")
            raise RunLocked(
                f"{self.path.parent}: this run directory is in use by {describe_holder(holder)}{gone}; "
                "one run directory takes one writer at a time (wait for it to finish, or stop it)"
            ) from None
        except OSError as e:  # e.g. a file system without locks
            os.close(fd)
            raise LionError(f"{self.path}: cannot lock the run directory ({e.strerror})") from None
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": _command_line(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        self._fd = fd
        _HELD.add(fd)
        return self

    def release(self) -> None:
        """Unlock (the file stays, naming the last holder; the next writer overwrites it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.discard(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _command_line() -> str:
    argv = list(getattr(sys, "orig_argv", None) or sys.argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return " ".join(argv)[:300]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_locked(run_dir: str | Path) -> bool:
    """Whether some process holds the lock of `run_dir` now (tries it without keeping it)."""
    path = RunLayout(run_dir).lock
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock this call may have taken
    return False


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lion.lock", description="Show who writes a run directory now.")
    ap.add_argument("run_dir")
    args = ap.parse_args(argv)
    path = RunLayout(args.run_dir).lock
    if is_locked(args.run_dir):
        print(f"{args.run_dir}: locked by {describe_holder(read_holder(path))}")
    else:
        last = read_holder(path)
        print(f"{args.run_dir}: not locked" + (f" (last writer: {describe_holder(last)})" if last else ""))
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
