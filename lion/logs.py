"""Logging for every lion command: the `lion.*` loggers, a log file in the run directory, and heartbeats.

    from lion.logs import setup_logging, heartbeat
    setup_logging("info", RunLayout(run_dir).log)     # RunContext does this for every phase and the loop
    with heartbeat("teacher/imitation", total=5000, spend=gateway_spend) as hb:
        ... hb.update(1) ...

- Status messages go through stdlib `logging` under the `lion` logger tree (`lion.run`, `lion.teachers`,
  `lion.student`, ...): to stderr at the level of `log.level` / `--log-level`, and (`log.file`) at debug level
  to `RUN/lion.log`, appended across resumes, so a run started under SLURM or `nohup` leaves a record with
  timestamps. What users and scripts read (the loop's per-round lines and table, a phase's one-line summary)
  stays on stdout.
- A long step (a batch of LLM calls, a training, the student's answers) logs a heartbeat every
  `log.heartbeat_s` seconds from a background thread, so the line appears even while the step is stuck:
  `heartbeat teacher/imitation: 1200/5000 (24%), 3.1 calls/s, $1.2345, ETA 20m25s, elapsed 6m27s`.
  With progress bars off (`--no-progress`) it is an INFO line on stderr; with bars on (they show the same) it is
  a DEBUG line, so it reaches only the log file, where `lion status` reads how long ago the run last moved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

ROOT = "lion"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_settings = {"heartbeat_s": 60.0, "progress": True}
_handlers: list[logging.Handler] = []

log = logging.getLogger("lion.logs")


def setup_logging(level: str = "info", log_file: Path | None = None, *, heartbeat_s: float | None = None,
                  progress: bool | None = None) -> None:
    """(Re)configure the `lion` loggers: stderr at `level`, and `log_file` (debug and up) when given.

    Idempotent: a second call replaces the handlers of the first (a process may enter several run contexts)."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    root = logging.getLogger(ROOT)
    for h in _handlers:
        root.removeHandler(h)
        h.close()
    _handlers.clear()
    console = logging.StreamHandler()
    console.setLevel(LEVELS[level])
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    _handlers.append(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%dT%H:%M:%S"))
        _handlers.append(fh)
    for h in _handlers:
        root.addHandler(h)
    root.setLevel(logging.DEBUG if log_file is not None else LEVELS[level])
    if heartbeat_s is not None:
        _settings["heartbeat_s"] = float(heartbeat_s)
    if progress is not None:
        _settings["progress"] = bool(progress)


def fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Heartbeat:
    """Counts progress of one long step and logs a status line every `every_s` seconds from a daemon thread."""

    def __init__(self, desc: str, total: int | None, *, every_s: float, done: int = 0,
                 spend: Callable[[], float] | None = None, unit: str = "", logger: logging.Logger | None = None,
                 level: int = logging.INFO):
        self.desc, self.total, self.every_s, self.unit, self.level = desc, total, every_s, unit, level
        self.done = self._start_done = done
        self.spend = spend
        self.logger = logger or logging.getLogger("lion.heartbeat")
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n

    def line(self) -> str:
        """`desc: done/total (pct), rate/s, $spend, ETA ...` for what has happened so far."""
        with self._lock:
            done = self.done
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = (done - self._start_done) / elapsed
        parts = [f"{done}/{self.total}" + (f" ({100 * done / self.total:.0f}%)" if self.total else "")
                 if self.total is not None else str(done)]
        parts.append(f"{rate:.2f}{self.unit}/s" if rate < 10 else f"{rate:.0f}{self.unit}/s")
        if self.spend is not None:
            parts.append(f"${self.spend():.4f}")
        if self.total is not None and rate > 0 and done < self.total:
            parts.append(f"ETA {fmt_duration((self.total - done) / rate)}")
        parts.append(f"elapsed {fmt_duration(elapsed)}")
        return f"heartbeat {self.desc}: " + ", ".join(parts)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            self.logger.log(self.level, self.line())

    def start(self) -> Heartbeat:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name=f"lion-heartbeat {self.desc}", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self._thread = None


class _NoBeat:
    """What `heartbeat` returns when no heartbeat is wanted: the same interface, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def start(self) -> _NoBeat:
        return self

    def __enter__(self) -> _NoBeat:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass


def heartbeat(desc: str, total: int | None, *, progress: bool | None = None, done: int = 0,
              spend: Callable[[], float] | None = None, unit: str = "") -> Heartbeat | _NoBeat:
    """A heartbeat for one step (started by `start()` or `with`): INFO when progress bars are off (`progress`,
    default: the setting of `setup_logging`), DEBUG (log file only) when they are on; a no-op when
    `log.heartbeat_s` is 0."""
    shown = _settings["progress"] if progress is None else progress
    every = float(_settings["heartbeat_s"])
    if every <= 0:
        return _NoBeat()
    return Heartbeat(desc, total, every_s=every, done=done, spend=spend, unit=unit,
                     level=logging.DEBUG if shown else logging.INFO)


def heartbeat_seconds() -> float:
    return float(_settings["heartbeat_s"])
