"""The call cache and usage ledger: one SQLite file in the run directory (RUN/calls.sqlite).

    sqlite3 RUN/calls.sqlite "select role, model, phase, calls, cached, usd from usage"   # inspect a run

Tables:
  calls     one row per completed call, keyed by the cache key (provider identity, model, messages,
            sampling params, sample index): the answer, finish reason, tokens, USD, attempts.
  failures  calls that ended in an error (for reporting only; never served as an answer, so a re-run
            tries them again).
  usage     ledger per (role, model, phase): paid calls, cached replays, failures, tokens in/out, USD.

WAL mode and a commit after every call: a SIGKILL loses at most the calls in flight. Run-dir None gives an
in-memory database (tests, one-off use). Nothing secret is ever written here: no keys, no headers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LionError

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls(
  key TEXT PRIMARY KEY, role TEXT, phase TEXT, provider TEXT, model TEXT, params TEXT, messages TEXT,
  text TEXT NOT NULL, finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, usd REAL,
  attempts INTEGER, created REAL);
CREATE TABLE IF NOT EXISTS failures(
  key TEXT, role TEXT, phase TEXT, provider TEXT, model TEXT, error TEXT, status INTEGER, attempts INTEGER,
  created REAL);
CREATE TABLE IF NOT EXISTS usage(
  role TEXT, model TEXT, phase TEXT, calls INTEGER DEFAULT 0, cached INTEGER DEFAULT 0, failed INTEGER DEFAULT 0,
  tokens_in INTEGER DEFAULT 0, tokens_out INTEGER DEFAULT 0, usd REAL DEFAULT 0,
  PRIMARY KEY(role, model, phase));
"""


@dataclass
class CachedCall:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int


class CallStore:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._closed = False
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False,
                                       timeout=30.0)
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: survives a process kill
            self._db.executescript(SCHEMA)
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise LionError(f"{path}: cannot open the call cache ({e}); move it away to start a fresh cache") from None

    # ------------------------------------------------------------------ cache
    def get(self, key: str) -> CachedCall | None:
        with self._lock:
            row = self._db.execute(
                "SELECT text, finish_reason, prompt_tokens, completion_tokens, attempts FROM calls WHERE key=?", (key,)
            ).fetchone()
        return None if row is None else CachedCall(*row)

    def record_call(self, key: str, *, role: str, phase: str, provider: str, model: str, params: dict[str, Any],
                    messages: list[dict[str, str]], text: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int, usd: float, attempts: int, cache: bool = True) -> None:
        """Store one completed call (if `cache`) and add it to the ledger, in one committed transaction."""
        with self._lock:
            if cache:
                self._db.execute(
                    "INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (key, role, phase, provider, model, json.dumps(params, sort_keys=True),
                     json.dumps(messages, ensure_ascii=False), text, finish_reason, prompt_tokens,
                     completion_tokens, usd, attempts, time.time()),
                )
            self._bump(role, model, phase, calls=1, tokens_in=prompt_tokens, tokens_out=completion_tokens, usd=usd)
            self._db.commit()

    def record_failure(self, key: str, *, role: str, phase: str, provider: str, model: str, error: str,
                       status: int | None, attempts: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO failures VALUES (?,?,?,?,?,?,?,?,?)",
                             (key, role, phase, provider, model, error, status, attempts, time.time()))
            self._bump(role, model, phase, failed=1)
            self._db.commit()

    def record_cached(self, role: str, model: str, phase: str, n: int) -> None:
        if n:
            with self._lock:
                self._bump(role, model, phase, cached=n)
                self._db.commit()

    def _bump(self, role: str, model: str, phase: str, **inc: float) -> None:
        cols = ", ".join(inc)
        sets = ", ".join(f"{c} = {c} + excluded.{c}" for c in inc)
        self._db.execute(
            f"INSERT INTO usage(role, model, phase, {cols}) VALUES (?,?,?,{','.join('?' * len(inc))}) "
            f"ON CONFLICT(role, model, phase) DO UPDATE SET {sets}",
            (role, model, phase, *inc.values()),
        )

    # ------------------------------------------------------------------ ledger
    def spent(self) -> tuple[float, int]:
        """(USD, tokens in + out) of every paid call so far in this run directory."""
        with self._lock:
            usd, tokens = self._db.execute(
                "SELECT COALESCE(SUM(usd), 0), COALESCE(SUM(tokens_in + tokens_out), 0) FROM usage").fetchone()
        return float(usd), int(tokens)

    def usage_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT role, model, phase, calls, cached, failed, tokens_in, tokens_out, usd FROM usage "
                "ORDER BY role, model, phase").fetchall()
        keys = ("role", "model", "phase", "calls", "cached", "failed", "tokens_in", "tokens_out", "usd")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.commit()
            self._db.close()
