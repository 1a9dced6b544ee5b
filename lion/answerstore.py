"""The teacher's answers on disk: bought once per (instruction id, teacher identity), kept for every phase and round.

    from lion.answerstore import AnswerStore, teacher_identity     # RunContext opens the run's store (ctx.answers)

RUN/teacher_answers.jsonl is the record (one readable row per answer, appended as it is bought; the answers'
top-k logprobs, when asked for, in RUN/teacher_answers.logprobs.bin), indexed on disk by RUN/calls.answers.sqlite.
Buying answers through the gateway, and reading them back for a phase, is lion.answers'.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import LionConfig
from .errors import DataError, LionError
from .records import iter_jsonl_tolerant, repair_torn_tail
from .teachers.base import LEGACY_TOP_P

_INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS teachers(tid INTEGER PRIMARY KEY, teacher TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS answers(id TEXT NOT NULL, tid INTEGER NOT NULL, offset INTEGER NOT NULL,
                                   PRIMARY KEY(id, tid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
"""
_LP_MAGIC = b"LPR1"  # one record of the logprobs side file: magic, length, crc32, the encoded TokenLogprobs
_HEAD = 4096  # bytes of the log whose hash tells the index which log it indexes
COMMIT_EVERY = 2048  # index rows per commit (the log is the record; an uncommitted index tail is re-read on open)


class AnswerStore:
    """Teacher answers per (instruction id, teacher identity), append-only, shared by all phases and rounds.

    The record is `path` (RUN/teacher_answers.jsonl: one readable JSON row per answer, appended and flushed as it
    is bought). A SQLite index beside the call cache (`index_path`: key -> byte offset of the row) answers `get`
    with one lookup and one read, so memory does not grow with the number of answers. The index is derived: on
    open it indexes whatever the log holds beyond what it has seen (rows appended before a crash), and it is
    rebuilt from scratch when it is missing, belongs to another log, or the log shrank. `index_path=None` keeps
    the index in memory (rebuilt on every open).
    A row records the snapshot that answered (`model`, `fingerprint`) when the provider named it, and, when the
    teacher was asked for logprobs (llm.teacher.top_logprobs), where its record is in the side file
    (RUN/teacher_answers.logprobs.bin, appended before the row: a crash leaves at most an unreferenced record).
    """

    def __init__(self, path: Path, index_path: Path | None = None, *, allow_network_fs: bool = False):
        import sqlite3

        from .layout import answer_logprobs

        self.path = Path(path)
        self.index_path = index_path
        self.logprobs_path = answer_logprobs(self.path)  # opened on the first answer that has logprobs
        self._lp_writer: Any = None
        self._lp_reader: Any = None
        if index_path is not None:
            from .fscheck import check_sqlite_home

            check_sqlite_home(index_path, what="the answer index", allow_network=allow_network_fs)
            index_path.parent.mkdir(parents=True, exist_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self.path.touch()
        try:
            # used from the gateway's stream thread too (`has`, while its requests are read): one lock for all
            self._db = sqlite3.connect(":memory:" if index_path is None else str(index_path), timeout=30.0,
                                       check_same_thread=False)
            if index_path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_INDEX_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LionError(f"{index_path}: cannot open the answer index ({e}); delete it: it is rebuilt from "
                            f"{self.path}") from None
        self._tids: dict[str, int] = dict((t, i) for i, t in self._db.execute("SELECT tid, teacher FROM teachers"))
        self._writer = self.path.open("ab")
        self._reader = self.path.open("rb")
        self._uncommitted = 0
        self._lock = threading.RLock()
        self._sync()

    # ------------------------------------------------------------------ index upkeep
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: object) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, str(value)))

    def _head(self, n: int) -> str:
        import hashlib

        with self.path.open("rb") as f:
            return hashlib.sha256(f.read(n)).hexdigest()

    def _tid(self, teacher: str) -> int:
        tid = self._tids.get(teacher)
        if tid is None:
            cur = self._db.execute("INSERT INTO teachers(teacher) VALUES (?)", (teacher,))
            tid = self._tids[teacher] = int(cur.lastrowid or 0)
        return tid

    def _sync(self) -> None:
        """Bring the index up to the log: index the rows past the last offset seen, or rebuild it."""
        size = self.path.stat().st_size
        seen = int(self._meta("size") or 0)
        head_len = int(self._meta("head_len") or 0)
        log = str(self.path.resolve())
        same_log = (seen <= size and self._meta("log") in (None, log)
                    and self._meta("head") in (None, self._head(head_len)))
        if not same_log:
            self._db.execute("DELETE FROM answers")
            seen = 0
        for offset, row in iter_jsonl_tolerant(self.path, start=seen) if size > seen else ():
            if not (isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("id", "teacher", "answer"))):
                raise DataError(f"{self.path} (byte {offset}): an answer row needs string id, teacher and answer")
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?,?,?)",
                             (row["id"], self._tid(row["teacher"]), offset))
        head_len = min(size, _HEAD)
        for key, value in (("size", size), ("head_len", head_len), ("head", self._head(head_len)), ("log", log)):
            self._set_meta(key, value)
        self._db.commit()

    # ------------------------------------------------------------------ API
    def _find(self, id: str, teacher: str) -> tuple[int, str] | None:
        """(offset, the identity it was stored under) of id's answer by this teacher, or an equivalent one."""
        for who in equivalent_identities(teacher):
            tid = self._tids.get(who)
            if tid is None:
                continue
            hit = self._db.execute("SELECT offset FROM answers WHERE id=? AND tid=?", (id, tid)).fetchone()
            if hit is not None:
                return hit[0], who
        return None

    def get(self, id: str, teacher: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._find(id, teacher)
            if found is None:
                return None
            offset, teacher = found
            self._reader.seek(offset)
            line = self._reader.readline()
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if not isinstance(row, dict) or row.get("id") != id or row.get("teacher") != teacher:
            raise DataError(f"{self.index_path}: the answer index is out of step with {self.path} (edited by hand?); "
                            "delete the index: it is rebuilt from the log")
        return row

    def has(self, id: str, teacher: str) -> bool:
        with self._lock:
            return self._find(id, teacher) is not None

    def put(self, id: str, teacher: str, answer: str, finish_reason: str | None, *, source: str | None = None,
            model: str | None = None, fingerprint: str | None = None, logprobs: bytes | None = None) -> None:
        """Record an answer; `source="seed"` marks one taken from the seed file (pools.seed_answers: teacher),
        never bought. `model` / `fingerprint`: the snapshot the provider said answered; `logprobs`: the answer's
        top-k logprobs (lion.teachers.logprobs, encoded), written to the side file first and pointed at by the row
        ({"at", "bytes", "k", "tokens"}), so the JSONL stays readable."""
        row: dict[str, Any] = {"id": id, "teacher": teacher, "answer": answer, "finish_reason": finish_reason}
        if source is not None:
            row["source"] = source
        if model is not None:
            row["model"] = model
        if fingerprint is not None:
            row["fingerprint"] = fingerprint
        with self._lock:
            if logprobs is not None:
                row["logprobs"] = self._write_logprobs(logprobs)
            data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
            offset = self._writer.tell()
            self._writer.write(data)
            self._writer.flush()  # the log is the record: it is written before the index
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?,?,?)", (id, self._tid(teacher), offset))
            self._set_meta("size", offset + len(data))
            self._uncommitted += 1
            if self._uncommitted >= COMMIT_EVERY:
                self.commit()

    # ------------------------------------------------------------------ logprobs (the side file)
    def _write_logprobs(self, blob: bytes) -> dict[str, int]:
        """Append one record (magic, length, crc32, blob) and flush it before its row is written."""
        import struct
        import zlib

        from .teachers.logprobs import TokenLogprobs

        lp = TokenLogprobs.decode(blob)
        if self._lp_writer is None:
            self._lp_writer = self.logprobs_path.open("ab")
        at = self._lp_writer.tell()
        self._lp_writer.write(_LP_MAGIC + struct.pack("<II", len(blob), zlib.crc32(blob)) + blob)
        self._lp_writer.flush()
        return {"at": at, "bytes": len(blob), "k": lp.k, "tokens": len(lp)}

    def logprobs(self, row: dict[str, Any]) -> bytes | None:
        """The encoded logprobs of an answer row (None when it has none); a record that does not read back (the
        side file edited or cut) is a DataError naming the file and the answer."""
        import struct
        import zlib

        ref = row.get("logprobs")
        if not isinstance(ref, dict):
            return None
        with self._lock:
            if self._lp_writer is not None:
                self._lp_writer.flush()
            if self._lp_reader is None:
                if not self.logprobs_path.exists():
                    raise DataError(f"{self.logprobs_path}: missing; the answer {row.get('id')} in {self.path} points "
                                    "at its logprobs there")
                self._lp_reader = self.logprobs_path.open("rb")
            self._lp_reader.seek(int(ref.get("at", -1)))
            head = self._lp_reader.read(len(_LP_MAGIC) + 8)
            ok = len(head) == len(_LP_MAGIC) + 8 and head.startswith(_LP_MAGIC)
            blob = b""
            if ok:
                n, crc = struct.unpack("<II", head[len(_LP_MAGIC):])
                blob = self._lp_reader.read(n)
                ok = n == ref.get("bytes") and len(blob) == n and zlib.crc32(blob) == crc
        if not ok:
            raise DataError(f"{self.logprobs_path} (byte {ref.get('at')}): the logprobs of answer {row.get('id')} do "
                            f"not read back (the file was cut or edited); delete the logprobs reference from its row in "
                            f"{self.path} to train it without them")
        return blob

    def commit(self) -> None:
        with self._lock:
            if self._uncommitted:
                self._db.commit()
                self._uncommitted = 0

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._writer.closed:
                return
            self.commit()
            self._writer.close()
            self._reader.close()
            for f in (self._lp_writer, self._lp_reader):
                if f is not None:
                    f.close()
            self._db.close()

    def seed(self, answers: dict[str, str] | Iterable[tuple[str, str]], teacher: str) -> int:
        """Record seed-file answers (a dict or (id, answer) pairs, streamed) as `teacher`'s, those it does not hold
        yet; returns how many were added."""
        added = 0
        for id, answer in answers.items() if isinstance(answers, dict) else answers:
            if not self.has(id, teacher):
                self.put(id, teacher, answer, None, source="seed")
                added += 1
        self.commit()
        return added


def teacher_identity(cfg: LionConfig) -> str:
    """Who answered: the teacher's model and sampling settings (a different teacher = new answers)."""
    t = cfg.llm.teacher
    return f"{t.provider}|{t.model}|t={t.temperature}|p={t.top_p}|max={t.max_tokens}"


def equivalent_identities(teacher: str) -> tuple[str, ...]:
    """The identity, then those that stand for the same sampling: an unset top_p samples like LEGACY_TOP_P, which
    lion sent on every call before 2026-12, so answers stored then are found (and not bought again)."""
    legacy = teacher.replace("|p=None|", f"|p={LEGACY_TOP_P}|")
    return (teacher,) if legacy == teacher else (teacher, legacy)
