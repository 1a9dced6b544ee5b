"""The call cache and usage ledger: one SQLite file in the run directory (RUN/calls.sqlite).

    sqlite3 RUN/calls.sqlite "select role, model, phase, calls, cached, usd from usage"   # inspect a run

Tables:
  calls     one row per completed call, keyed by the cache key (provider identity, model, messages,
            sampling params, sample index, top_logprobs when set; not the mode): the answer, finish reason,
            tokens (with the provider's prompt-cache reads and writes), USD, attempts, mode (online | batch),
            the answer's logprobs when asked for (lion.teachers.logprobs, encoded), the served model and
            system fingerprint.
  failures  calls that ended in an error (for reporting only; never served as an answer, so a re-run
            tries them again).
  usage     ledger per (role, model, phase, mode): paid calls, cached replays, failures, tokens in/out,
            prompt-cache tokens read / written, USD. The tokens and USD include replies that were billed but
            failed their call (no text, a refusal): `calls` counts answers, the tokens count everything billed.
  snapshots paid calls per (role, configured model, the model the provider said served them, its
            system_fingerprint): which snapshot behind an alias really answered (lion.snapshots).
  batches, batch_items
            every batch submitted in batch mode (id, role, phase, provider, model, items, status), recorded
            before the run waits on it, with each item's params and messages: a killed run re-polls the
            same batches on resume (never resubmits them) and can file any result in the cache. Before the
            create request goes out, the batch is written as an intent (status `submitting`, id = its tag,
            sent as the batch's metadata); once the provider names the batch, the intent becomes that batch
            in one transaction. An intent left by a kill in between is looked up by its tag on resume.

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
from typing import TYPE_CHECKING, Any

from ..errors import LionError

if TYPE_CHECKING:
    from .base import ChatResponse

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls(
  key TEXT PRIMARY KEY, role TEXT, phase TEXT, provider TEXT, model TEXT, params TEXT, messages TEXT,
  text TEXT NOT NULL, finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, usd REAL,
  attempts INTEGER, created REAL);
CREATE TABLE IF NOT EXISTS failures(
  key TEXT, role TEXT, phase TEXT, provider TEXT, model TEXT, error TEXT, status INTEGER, attempts INTEGER,
  created REAL);
CREATE TABLE IF NOT EXISTS batches(
  id TEXT PRIMARY KEY, role TEXT, phase TEXT, provider TEXT, model TEXT, n INTEGER, attempt INTEGER, status TEXT,
  created REAL, ended REAL);
CREATE TABLE IF NOT EXISTS batch_items(
  batch_id TEXT, key TEXT, params TEXT, messages TEXT, PRIMARY KEY(batch_id, key));
CREATE TABLE IF NOT EXISTS snapshots(
  role TEXT, model TEXT, served TEXT, fingerprint TEXT, calls INTEGER DEFAULT 0, first REAL, last REAL,
  PRIMARY KEY(role, model, served, fingerprint));
"""

USAGE = """
CREATE TABLE IF NOT EXISTS usage(
  role TEXT, model TEXT, phase TEXT, mode TEXT DEFAULT 'online', calls INTEGER DEFAULT 0, cached INTEGER DEFAULT 0,
  failed INTEGER DEFAULT 0, tokens_in INTEGER DEFAULT 0, tokens_out INTEGER DEFAULT 0,
  tokens_cache_read INTEGER DEFAULT 0, tokens_cache_write INTEGER DEFAULT 0, usd REAL DEFAULT 0,
  PRIMARY KEY(role, model, phase, mode));
"""

# columns added to `calls` since the first schema (a cache from an older lion gains them, with these defaults)
CALL_COLUMNS = {"mode": "TEXT DEFAULT 'online'", "cached_tokens": "INTEGER DEFAULT 0",
                "cache_write_tokens": "INTEGER DEFAULT 0", "logprobs": "BLOB", "served_model": "TEXT",
                "fingerprint": "TEXT"}
USAGE_KEYS = ("role", "model", "phase", "mode", "calls", "cached", "failed", "tokens_in", "tokens_out",
              "tokens_cache_read", "tokens_cache_write", "usd")


@dataclass
class CachedCall:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    logprobs: bytes | None = None  # lion.teachers.logprobs.TokenLogprobs, encoded
    served_model: str | None = None
    fingerprint: str | None = None


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
            self._migrate()
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise LionError(f"{path}: cannot open the call cache ({e}); move it away to start a fresh cache") from None

    def _migrate(self) -> None:
        """Bring a cache written by an older lion to this schema (nothing is lost: old usage rows are online)."""
        have = {r[1] for r in self._db.execute("PRAGMA table_info(calls)")}
        for col, decl in CALL_COLUMNS.items():
            if col not in have:
                self._db.execute(f"ALTER TABLE calls ADD COLUMN {col} {decl}")
        usage_cols = {r[1] for r in self._db.execute("PRAGMA table_info(usage)")}
        if usage_cols and "mode" not in usage_cols:
            self._db.execute("ALTER TABLE usage RENAME TO usage_v1")
            self._db.executescript(USAGE)
            self._db.execute("INSERT INTO usage(role, model, phase, mode, calls, cached, failed, tokens_in, "
                             "tokens_out, usd) SELECT role, model, phase, 'online', calls, cached, failed, "
                             "tokens_in, tokens_out, usd FROM usage_v1")
            self._db.execute("DROP TABLE usage_v1")
        else:
            self._db.executescript(USAGE)

    # ------------------------------------------------------------------ cache
    def get(self, key: str) -> CachedCall | None:
        with self._lock:
            row = self._db.execute(
                "SELECT text, finish_reason, prompt_tokens, completion_tokens, attempts, logprobs, served_model, "
                "fingerprint FROM calls WHERE key=?", (key,)).fetchone()
        return None if row is None else CachedCall(*row)

    def record_call(self, key: str, *, role: str, phase: str, provider: str, model: str, params: dict[str, Any],
                    messages: list[dict[str, str]], text: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int, usd: float, attempts: int, cache: bool = True, mode: str = "online",
                    cached_tokens: int = 0, cache_write_tokens: int = 0, logprobs: bytes | None = None,
                    served_model: str | None = None, fingerprint: str | None = None) -> None:
        """Store one completed call (if `cache`) and add it to the ledger and to the role's served snapshots, in one
        committed transaction."""
        now = time.time()
        with self._lock:
            if cache:
                self._db.execute(
                    "INSERT OR REPLACE INTO calls(key, role, phase, provider, model, params, messages, text, "
                    "finish_reason, prompt_tokens, completion_tokens, usd, attempts, created, mode, cached_tokens, "
                    "cache_write_tokens, logprobs, served_model, fingerprint) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (key, role, phase, provider, model, json.dumps(params, sort_keys=True),
                     json.dumps(messages, ensure_ascii=False), text, finish_reason, prompt_tokens,
                     completion_tokens, usd, attempts, now, mode, cached_tokens, cache_write_tokens, logprobs,
                     served_model, fingerprint),
                )
            self._bump(role, model, phase, mode, calls=1, tokens_in=prompt_tokens, tokens_out=completion_tokens,
                       tokens_cache_read=cached_tokens, tokens_cache_write=cache_write_tokens, usd=usd)
            self._db.execute(
                "INSERT INTO snapshots VALUES (?,?,?,?,1,?,?) ON CONFLICT(role, model, served, fingerprint) DO UPDATE "
                "SET calls = calls + 1, last = excluded.last",
                (role, model, served_model or "", fingerprint or "", now, now))
            self._db.commit()

    def snapshots(self, role: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """Paid calls per (role, configured model, served snapshot, system fingerprint), oldest first ("" = the
        provider did not say)."""
        where, args = [], []
        for col, val in (("role", role), ("model", model)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        sql = "SELECT role, model, served, fingerprint, calls, first, last FROM snapshots"
        with self._lock:
            rows = self._db.execute(sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY first",
                                    args).fetchall()
        keys = ("role", "model", "served", "fingerprint", "calls", "first", "last")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def record_failure(self, key: str, *, role: str, phase: str, provider: str, model: str, error: str,
                       status: int | None, attempts: int, mode: str = "online", billed: ChatResponse | None = None,
                       usd: float = 0.0) -> None:
        """Record a failed call; `billed` (a ChatResponse: a reply charged although it held no answer) adds its tokens
        and `usd` to the ledger in the same transaction."""
        with self._lock:
            self._db.execute("INSERT INTO failures VALUES (?,?,?,?,?,?,?,?,?)",
                             (key, role, phase, provider, model, error, status, attempts, time.time()))
            tokens = {} if billed is None else {
                "tokens_in": billed.prompt_tokens, "tokens_out": billed.completion_tokens,
                "tokens_cache_read": billed.cached_tokens, "tokens_cache_write": billed.cache_write_tokens, "usd": usd}
            self._bump(role, model, phase, mode, failed=1, **tokens)
            self._db.commit()

    def record_billed(self, *, role: str, model: str, phase: str, mode: str, billed: ChatResponse, usd: float) -> None:
        """Add a billed reply that is no answer and belongs to no call of this run's (e.g. an earlier run's batch
        item nobody asks for now) to the ledger."""
        with self._lock:
            self._bump(role, model, phase, mode, tokens_in=billed.prompt_tokens, tokens_out=billed.completion_tokens,
                       tokens_cache_read=billed.cached_tokens, tokens_cache_write=billed.cache_write_tokens, usd=usd)
            self._db.commit()

    def record_cached(self, role: str, model: str, phase: str, n: int, mode: str = "online") -> None:
        if n:
            with self._lock:
                self._bump(role, model, phase, mode, cached=n)
                self._db.commit()

    def _bump(self, role: str, model: str, phase: str, mode: str, **inc: float) -> None:
        cols = ", ".join(inc)
        sets = ", ".join(f"{c} = {c} + excluded.{c}" for c in inc)
        self._db.execute(
            f"INSERT INTO usage(role, model, phase, mode, {cols}) VALUES (?,?,?,?,{','.join('?' * len(inc))}) "
            f"ON CONFLICT(role, model, phase, mode) DO UPDATE SET {sets}",
            (role, model, phase, mode, *inc.values()),
        )

    # ------------------------------------------------------------------ batches (batch mode)
    def record_batch(self, batch_id: str, *, role: str, phase: str, provider: str, model: str, attempt: int,
                     items: list[tuple[str, dict[str, Any], list[dict[str, str]]]],
                     status: str = "submitted") -> None:
        """A batch and its items (key, params, messages), committed before anyone waits on it (status
        `submitting`: an intent, written before the create request; batch_id is then its tag)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO batches VALUES (?,?,?,?,?,?,?,?,?,?)",
                             (batch_id, role, phase, provider, model, len(items), attempt, status, time.time(),
                              None))
            self._db.executemany("INSERT OR REPLACE INTO batch_items VALUES (?,?,?,?)",
                                 [(batch_id, k, json.dumps(p, sort_keys=True), json.dumps(m, ensure_ascii=False))
                                  for k, p, m in items])
            self._db.commit()

    def open_batches(self, role: str) -> list[dict[str, Any]]:
        """The role's batches submitted and not ended yet (oldest first), each with its item keys."""
        with self._lock:
            rows = self._db.execute("SELECT id, phase, provider, model, attempt FROM batches WHERE role=? AND "
                                    "status='submitted' ORDER BY created", (role,)).fetchall()
            out = []
            for bid, phase, provider, model, attempt in rows:
                keys = [k for (k,) in self._db.execute("SELECT key FROM batch_items WHERE batch_id=?", (bid,))]
                out.append({"id": bid, "phase": phase, "provider": provider, "model": model, "attempt": attempt,
                            "keys": keys})
        return out

    def intents(self, role: str) -> list[dict[str, Any]]:
        """The role's batches written as intents and never named by the provider (a kill came in between)."""
        with self._lock:
            rows = self._db.execute("SELECT id, phase, created, n FROM batches WHERE role=? AND status='submitting' "
                                    "ORDER BY created", (role,)).fetchall()
        return [{"tag": tag, "phase": phase, "created": created, "n": n} for tag, phase, created, n in rows]

    def promote(self, tag: str, batch_id: str) -> None:
        """The intent `tag` is the provider's batch `batch_id` now (one transaction)."""
        with self._lock:
            self._db.execute("UPDATE batches SET id=?, status='submitted' WHERE id=? AND status='submitting'",
                             (batch_id, tag))
            self._db.execute("UPDATE batch_items SET batch_id=? WHERE batch_id=?", (batch_id, tag))
            self._db.commit()

    def drop_intent(self, tag: str) -> None:
        """An intent the provider never created: its calls may go out again."""
        with self._lock:
            self._db.execute("DELETE FROM batch_items WHERE batch_id=?", (tag,))
            self._db.execute("DELETE FROM batches WHERE id=? AND status='submitting'", (tag,))
            self._db.commit()

    def batch_item(self, batch_id: str, key: str) -> tuple[dict[str, Any], list[dict[str, str]]] | None:
        with self._lock:
            row = self._db.execute("SELECT params, messages FROM batch_items WHERE batch_id=? AND key=?",
                                   (batch_id, key)).fetchone()
        return None if row is None else (json.loads(row[0]), json.loads(row[1]))

    def end_batch(self, batch_id: str, status: str) -> None:
        with self._lock:
            self._db.execute("UPDATE batches SET status=?, ended=? WHERE id=?", (status, time.time(), batch_id))
            self._db.commit()

    def batches(self) -> list[dict[str, Any]]:
        """Every batch this run directory submitted (for reports and tests)."""
        with self._lock:
            rows = self._db.execute("SELECT id, role, phase, model, n, attempt, status FROM batches "
                                    "WHERE status != 'submitting' ORDER BY created").fetchall()
        keys = ("id", "role", "phase", "model", "n", "attempt", "status")
        return [dict(zip(keys, r, strict=True)) for r in rows]

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
                f"SELECT {', '.join(USAGE_KEYS)} FROM usage ORDER BY role, model, phase, mode").fetchall()
        return [dict(zip(USAGE_KEYS, r, strict=True)) for r in rows]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.commit()
            self._db.close()
