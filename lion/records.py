"""Records, content-hash ids and JSONL pool I/O (atomic writes, strict loaders).

    python -m lion.records FILE        # load any supported seed file, report rows, write nothing

A pool is a JSONL file of `Instruction` rows. Ids are content hashes of (instruction, input), so the same
instruction has the same id in every run. Generated rows carry lineage: round, kind (seed/hard/easy) and
parent id. Writes go to a temp file in the same directory, are fsynced and renamed over the target, so a
crash leaves either the old or the new file, never half of one.

`load_instructions` accepts JSONL, a JSON array (or {"data"/"instances"/"rows": [...]}), Alpaca rows
(instruction/input/output), Self-Instruct rows (instruction + instances), FastChat question rows (turns),
ShareGPT rows (`conversations`: [{"from": "human"|"gpt"|"system", "value"}]), OpenAI chat rows (`messages`:
[{"role": "user"|"assistant"|"system", "content"}]), plain-text prompt rows (prompt/question/text),
CSV/TSV/Parquet and datasets hub ids through `datasets`. A chat row gives its first user turn as the
instruction; the answers a seed file already holds (Alpaca `output`, the first assistant reply of a chat) are
collected in `LoadReport.answers` (used with `pools.seed_answers: teacher`); later turns of a multi-turn chat
are not used, and such rows are counted (`LoadReport.multi_turn`).
Files are read as UTF-8 (a byte-order mark is accepted); undecodable bytes are a `DataError` naming file:line
and the byte. A bad row raises `DataError` naming the file and line; no row is silently dropped (exact duplicates are
merged and counted, and the count is reported). `iter_instructions` is the same loader as a stream (JSONL line
by line, only the ids seen kept), and `iter_pool` / `union_pools` / `write_jsonl` stream pools, so a
million-instruction pool is never held in memory.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from .errors import DataError


def instruction_id(instruction: str, input: str = "") -> str:
    """Stable content hash: 16 hex chars of sha256 over the whitespace-normalised text."""
    norm = " ".join(instruction.split()) + "\x1f" + " ".join(input.split())
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()[:16]


class Prompted(Protocol):
    """Anything with an id and an instruction (+ input): pool Instructions, evaluation questions."""

    id: str
    instruction: str
    input: str


@dataclass
class Instruction:
    instruction: str
    input: str = ""
    id: str = ""
    round: int = 0  # round in which it was generated (0 = seed pool)
    kind: str = "seed"  # seed | hard | easy | random | eval
    parent: str | None = None  # id of the seed it was generated from
    meta: dict[str, Any] = field(default_factory=dict)  # free-form: family, source, category...

    def __post_init__(self) -> None:
        if not self.id:
            self.id = instruction_id(self.instruction, self.input)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["meta"]:
            d.pop("meta")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Instruction:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------------------------- atomic I/O


@contextmanager
def atomic_writer(path: Path) -> Iterator[Any]:
    """A text file to write `path` through: a temp file beside it, fsynced and renamed over `path` when the block
    ends without an exception (removed otherwise), so what is written streams to disk, never held in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_writer(path) as f:
        f.write(text)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Atomically replace `path` with one JSON object per line, streaming the rows; returns how many."""
    n = 0
    with atomic_writer(Path(path)) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def read_json_or_empty(path: Path) -> dict[str, Any]:
    """A JSON object file we wrote, or {} when it does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    return obj if isinstance(obj, dict) else {}


def not_utf8(path: Path | str, data: bytes, e: UnicodeDecodeError, first_line: int = 1) -> DataError:
    """The DataError for bytes of `path` that are not UTF-8: file, line, column and the byte, with a hint."""
    line = data.count(b"\n", 0, e.start) + first_line
    col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    hint = "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8)"
    if first_line == 1 and data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        hint = "it looks like UTF-16; re-encode it as UTF-8 (e.g. iconv -f utf-16 -t utf-8 FILE > FILE.utf8)"
    return DataError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at column {col}); {hint}")


def decode_utf8(data: bytes, path: Path | str) -> str:
    """A whole file's bytes as text; a UTF-8 byte-order mark is dropped, other bytes that are not UTF-8 are a
    DataError naming file:line and the byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8(path, data, e) from None


def iter_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line, read as UTF-8 (a BOM on line 1 is dropped); bytes that are not UTF-8
    are a DataError naming file:line and the byte."""
    path = Path(path)
    try:
        f = path.open("rb")
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory; name a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(path, raw, e, lineno) from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line; a line that is not JSON is a DataError naming file:line."""
    path = Path(path)
    for lineno, line in iter_text_lines(path):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise DataError(f"{path}:{lineno}: JSON nested too deeply") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file of objects; a bad line is a DataError naming file:line."""
    out = []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        out.append(row)
    return out


def read_jsonl_tolerant(path: Path) -> list[dict[str, Any]]:
    """Read an append-only JSONL file, dropping a torn last line left by a crash (a torn line elsewhere is an error).

    The rows of a torn line are the ones a crash lost; whoever appends them (an answer store, a resumable
    answer file) produces them again on resume.
    """
    return [row for _, row in iter_jsonl_tolerant(path)]


def iter_jsonl_tolerant(path: Path, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """(byte offset, row) of an append-only JSONL file from byte `start` on, streamed; a torn last line (no
    newline, not JSON: a crash mid-append) ends the stream, a bad line elsewhere is a DataError naming file:line."""
    path = Path(path)
    with path.open("rb") as f:
        f.seek(start)
        offset, lineno = start, 0
        for raw in f:
            lineno += 1
            at, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if not f.read().strip():
                    return  # the torn last line of a crash
                where = f"{path}:{lineno}" if start == 0 else f"{path} (byte {at})"
                raise DataError(f"{where}: corrupt line in the middle of an append-only file") from None
            yield at, row


def repair_torn_tail(path: Path) -> int:
    """Cut an incomplete last line (a crash mid-append) off an append-only file, so the next append starts a line
    of its own instead of gluing a row onto the torn one; returns the bytes removed (0 when the file is whole)."""
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos = size  # find the last newline, reading backwards in blocks
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            block = f.read(step)
            k = block.rfind(b"\n")
            if k >= 0:
                pos = pos - step + k + 1
                break
            pos -= step
        f.seek(pos)
        tail = f.read()
        try:
            json.loads(tail)
        except (json.JSONDecodeError, UnicodeDecodeError):
            f.truncate(pos)
            return size - pos
        f.write(b"\n")  # a whole row that only lacks its newline: keep it
    return 0


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one row and flush (for append-only logs; readers skip a torn last line). A torn last line left by a
    crash is cut off first, so it never ends up in the middle of the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
            if f.read(1) != b"\n":
                f.truncate(_last_line_end(f, end))
        f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        f.flush()


def _last_line_end(f: Any, end: int) -> int:
    """Offset just past the last newline before `end` (0 when there is none)."""
    pos = end
    while pos > 0:
        step = min(pos, 1 << 16)
        f.seek(pos - step)
        block = f.read(step)
        k = block.rfind(b"\n")
        if k >= 0:
            return pos - step + k + 1
        pos -= step
    return 0


def append_jsonl_rows(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Append rows to an append-only JSONL file and flush once (a chunk's rows); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
    return n


def write_pool(path: Path, pool: Iterable[Instruction]) -> int:
    """Atomically write a pool, streaming its rows; returns how many."""
    return write_jsonl(path, (r.to_json() for r in pool))


def read_pool(path: Path) -> list[Instruction]:
    return list(iter_pool(path))


def iter_pool(path: Path) -> Iterator[Instruction]:
    """The Instructions of a pool file we wrote, streamed (one row in memory at a time)."""
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield Instruction.from_json(row)


def count_rows(path: Path) -> int:
    """Non-blank lines of a JSONL file (0 when it does not exist), without parsing them."""
    path = Path(path)
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


class IdSet:
    """The ids seen so far, for exact-duplicate merging over streams: 64-bit integers (the first 16 hex digits of
    the content hash) in a set, about 60 bytes per id instead of a dict of rows."""

    __slots__ = ("_ids",)

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: set[int] = set()
        for i in ids:
            self.add(i)

    @staticmethod
    def _key(id: str) -> int:
        try:
            return int(id[:16], 16)
        except ValueError:  # a hand-written id that is not a hex hash
            return hash(id)

    def add(self, id: str) -> bool:
        """Add `id`; True when it was new."""
        k = self._key(id)
        if k in self._ids:
            return False
        self._ids.add(k)
        return True

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and self._key(id) in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def union_pools(*parts: Iterable[Instruction]) -> Iterator[Instruction]:
    """The Instructions of `parts` in order, each id once (the first occurrence wins), streamed."""
    seen = IdSet()
    for part in parts:
        for inst in part:
            if seen.add(inst.id):
                yield inst


# --------------------------------------------------------------------------------------------- loaders

_TEXT_KEYS = ("instruction", "prompt", "question", "text", "query")
_ANSWER_KEYS = ("output", "response")  # Alpaca, Dolly
# (list key, speaker key, text key, user names, assistant names, names skipped before the first user turn)
_CHATS = {
    "conversations": ("from", "value", {"human", "user"}, {"gpt", "assistant", "chatgpt", "bard", "bing", "model"},
                      {"system"}),
    "messages": ("role", "content", {"user"}, {"assistant"}, {"system", "developer"}),
}


def _turn_text(value: Any, where: str) -> str:
    """A turn's text: a string, or OpenAI content parts [{"type": "text", "text": ...}] joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in value):
            raise DataError(f"{where}: only text content parts are supported (got {[p.get('type') for p in value]})")
        return "\n".join(p["text"] for p in value)
    raise DataError(f"{where}: the turn's text must be a string, got {type(value).__name__}")


def _first_exchange(row: dict[str, Any], where: str) -> tuple[str, str | None, bool] | None:
    """(first user turn, the assistant reply after it or None, more turns follow) of a ShareGPT / OpenAI chat row;
    None when the row is not a chat."""
    list_key = next((k for k in _CHATS if k in row), None)
    if list_key is None:
        return None
    who_key, text_key, users, assistants, skipped = _CHATS[list_key]
    turns = row[list_key]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: '{list_key}' must be a non-empty list of turns")
    i = 0
    while i < len(turns) and isinstance(turns[i], dict) and str(turns[i].get(who_key, "")).lower() in skipped:
        i += 1
    for j, t in enumerate(turns):
        if not isinstance(t, dict) or who_key not in t or text_key not in t:
            raise DataError(f"{where}: {list_key}[{j}] must be an object with '{who_key}' and '{text_key}'")
    if i >= len(turns):
        raise DataError(f"{where}: '{list_key}' has no user turn")
    first = str(turns[i][who_key]).lower()
    if first not in users:
        raise DataError(f"{where}: {list_key}[{i}] is from {turns[i][who_key]!r}; the first turn after any system "
                        f"turn must be the user's ({', '.join(sorted(users))})")
    prompt = _turn_text(turns[i][text_key], f"{where}: {list_key}[{i}]")
    answer = None
    if i + 1 < len(turns) and str(turns[i + 1][who_key]).lower() in assistants:
        answer = _turn_text(turns[i + 1][text_key], f"{where}: {list_key}[{i + 1}]").strip() or None
    return prompt, answer, len(turns) > i + 2


def row_answer(row: Any, where: str) -> str | None:
    """The answer a seed row already holds (Alpaca `output`, a chat's first assistant reply), or None."""
    if not isinstance(row, dict):
        return None
    chat = _first_exchange(row, where)
    if chat is not None:
        return chat[1]
    for k in _ANSWER_KEYS:
        v = row.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def _row_to_instruction(row: Any, where: str) -> Instruction:
    if isinstance(row, str):
        text = row
        row = {}
    elif isinstance(row, dict):
        chat = _first_exchange(row, where)
        if chat is not None:  # ShareGPT / OpenAI messages: the first user turn
            text = chat[0]
        elif "turns" in row:  # FastChat question: first turn
            turns = row["turns"]
            if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
                raise DataError(f"{where}: 'turns' must be a non-empty list of strings")
            text = turns[0]
        else:
            key = next((k for k in _TEXT_KEYS if k in row), None)
            if key is None:
                raise DataError(
                    f"{where}: no instruction field (expected one of: {', '.join(_TEXT_KEYS)}, turns, "
                    f"conversations, messages); "
                    f"keys present: {', '.join(map(str, row)) or 'none'}"
                )
            text = row[key]
    else:
        raise DataError(f"{where}: expected an object or a string, got {type(row).__name__}")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: the instruction is empty or not a string")
    inp = row.get("input", "")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise DataError(f"{where}: 'input' must be a string, got {type(inp).__name__}")
    if not inp and isinstance(row.get("instances"), list) and row["instances"]:  # Self-Instruct
        first = row["instances"][0]
        if isinstance(first, dict) and isinstance(first.get("input"), str):
            inp = first["input"]
    meta = {}
    for k in ("category", "question_id", "family", "name", "source"):
        if k in row:
            meta[k] = row[k]
    if isinstance(row.get("meta"), dict):
        meta.update(row["meta"])
    inst = Instruction(instruction=text.strip(), input=inp.strip(), meta=meta)
    for k, ok, want in _LINEAGE:
        if k in row:
            if not ok(row[k]):
                raise DataError(f"{where}: '{k}' must be {want}, got {type(row[k]).__name__} {str(row[k])[:40]!r}")
            setattr(inst, k, row[k])
    return inst


_LINEAGE: list[tuple[str, Callable[[Any], bool], str]] = [
    ("round", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    ("kind", lambda v: isinstance(v, str), "a string"),
    ("parent", lambda v: v is None or isinstance(v, str), "a string or null"),
]


def _first_char(path: Path) -> bytes:
    """The first non-blank byte of a file after any UTF-8 byte-order mark (b"" when blank), reading only as far."""
    with path.open("rb") as f:
        head = f.read(len(codecs.BOM_UTF8))
        chunk = head[len(codecs.BOM_UTF8):] if head == codecs.BOM_UTF8 else head
        while True:
            if stripped := chunk.lstrip():
                return stripped[:1]
            chunk = f.read(4096)
            if not chunk:
                return b""


def _iter_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, row) for JSONL or JSON files. JSONL streams line by line; a JSON array is parsed whole."""
    first = _first_char(path)
    if first == b"[" or (first == b"{" and path.suffix == ".json"):
        text = decode_utf8(path.read_bytes(), path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise DataError(f"{path}: JSON nested too deeply") from None
        if isinstance(data, dict):
            key = next((k for k in ("data", "instances", "rows", "train") if isinstance(data.get(k), list)), None)
            if key is None:
                raise DataError(f"{path}: a JSON object must hold a list under 'data', 'instances', 'rows' or 'train'")
            data = data[key]
        for i, row in enumerate(data):
            yield f"{path}: item {i}", row
        return
    for lineno, row in iter_jsonl(path):
        yield f"{path}:{lineno}", row


def _iter_datasets(spec: str) -> Iterator[tuple[str, Any]]:
    try:
        import datasets  # noqa: PLC0415
    except ImportError:
        raise DataError(f"{spec}: loading this needs the `datasets` package (pip install 'lion[train]')") from None
    p = Path(spec)
    from datasets.utils import logging as ds_logging

    verbosity = ds_logging.get_verbosity()
    ds_logging.set_verbosity(ds_logging.CRITICAL)  # its own log lines would repeat the error raised below
    try:
        if p.exists():
            fmt = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".arrow": "arrow"}.get(p.suffix)
            if fmt is None:
                raise DataError(f"{spec}: unsupported file type {p.suffix!r} (use JSONL, JSON, CSV, TSV or Parquet)")
            kw = {"delimiter": "\t"} if p.suffix == ".tsv" else {}
            if fmt == "csv":
                for _ in iter_text_lines(p):  # undecodable bytes: file:line, before datasets sees them
                    pass
            bars = datasets.is_progress_bar_enabled()
            datasets.disable_progress_bars()  # a local file: no "Generating train split" bar
            try:
                ds = datasets.load_dataset(fmt, data_files=str(p), split="train", **kw)
            finally:
                if bars:
                    datasets.enable_progress_bars()
        else:
            name, _, split = spec.partition(":")
            ds = datasets.load_dataset(name, split=split or "train")
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; the message is what the user needs
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise DataError(f"{spec}: could not load with datasets ({type(e).__name__}: {first})") from None
    finally:
        ds_logging.set_verbosity(verbosity)
    columns = list(getattr(ds, "column_names", None) or [])
    if columns and not any(k in columns for k in (*_TEXT_KEYS, "turns")):
        raise DataError(
            f"{spec}: no instruction column (expected one of: {', '.join(_TEXT_KEYS)}, turns); "
            f"columns: {', '.join(map(str, columns))}"
        )
    for i, row in enumerate(ds):
        yield f"{spec}: row {i + 2 if p.suffix in ('.csv', '.tsv') else i}", row


@dataclass
class LoadReport:
    source: str
    rows: int = 0
    duplicates: int = 0
    answers: dict[str, str] = field(default_factory=dict)  # instruction id -> the answer the seed row holds
    multi_turn: int = 0  # chat rows with turns after the first exchange (only the first exchange is used)
    n_answers: int = 0  # rows that hold an answer (in `answers`, or handed to `on_answer` when streaming)
    rejected: int = 0  # rows `check` refused (policy skip): never part of a pool
    reasons: dict[str, int] = field(default_factory=dict)  # rejected rows per reason
    examples: list[dict[str, str]] = field(default_factory=list)  # the first rejected rows: {"where", "reason"}

    def reject(self, where: str, reason: str, detail: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.examples) < 100:
            self.examples.append({"where": where, "reason": reason, "detail": detail})

    def to_json(self) -> dict[str, Any]:
        """The report as seed_report.json keeps it (without the seed answers themselves)."""
        d = asdict(self)
        d.pop("answers", None)
        return d


RowCheck = Callable[[Instruction], "tuple[str, str] | None"]  # None = keep; else (reason, detail)


def load_instructions(
    spec: str | os.PathLike[str],
    limit: int | None = None,
    *,
    check: RowCheck | None = None,
    on_reject: str = "skip",
) -> tuple[list[Instruction], LoadReport]:
    """Load a seed file (or datasets id) into unique Instructions, in file order.

    `check` may refuse a row ((reason, detail), e.g. too many tokens): with `on_reject="skip"` the row is left out
    and counted in the report (with its file:line), with "error" it is a DataError naming file:line."""
    report = LoadReport(source=str(spec))
    return list(iter_instructions(spec, limit, report, check=check, on_reject=on_reject)), report


def iter_instructions(
    spec: str | os.PathLike[str],
    limit: int | None = None,
    report: LoadReport | None = None,
    *,
    check: RowCheck | None = None,
    on_reject: str = "skip",
    on_answer: Callable[[str, str], None] | None = None,
) -> Iterator[Instruction]:
    """The unique Instructions of a seed file (or datasets id), in file order, streamed: JSONL is read line by
    line and only the ids seen so far are kept (`IdSet`), so a million-row seed file never sits in memory.
    `report` (if given) counts rows, merged duplicates and rejected rows as the stream goes; the answers seed
    rows hold go to `on_answer(id, answer)` as they pass (else into `report.answers`). `check` / `on_reject`:
    as for `load_instructions`."""
    spec = str(spec)
    p = Path(spec)
    if p.is_dir():
        raise DataError(f"{spec}: is a directory; name a file")
    if p.suffix in (".jsonl", ".json") or (p.exists() and p.suffix == ""):
        if not p.exists():
            raise DataError(f"{spec}: file not found")
        rows = _iter_rows(p)
    elif p.exists() or "/" not in spec or not spec.startswith((".", "/")):
        rows = _iter_datasets(spec)
    else:
        raise DataError(f"{spec}: file not found")
    report = report if report is not None else LoadReport(source=spec)
    seen = IdSet()
    n = 0
    for where, row in rows:
        report.rows += 1
        inst = _row_to_instruction(row, where)
        refused = check(inst) if check is not None else None
        if refused is not None:
            if on_reject == "error":
                raise DataError(f"{where}: {refused[1]}")
            report.reject(where, *refused)
            continue
        if not seen.add(inst.id):
            report.duplicates += 1
            continue
        n += 1
        if isinstance(row, dict):
            chat = _first_exchange(row, where)
            report.multi_turn += bool(chat and chat[2])
            answer = row_answer(row, where)
            if answer is not None:
                report.n_answers += 1
                if on_answer is not None:
                    on_answer(inst.id, answer)
                else:
                    report.answers[inst.id] = answer
        yield inst
        if limit is not None and n >= limit:
            break
    if not n:
        if report.rejected:
            raise DataError(f"{spec}: every one of its {report.rows} rows was rejected "
                            f"({', '.join(f'{k} {r}' for r, k in report.reasons.items())}; first: "
                            f"{report.examples[0]['where']}: {report.examples[0]['detail']})")
        raise DataError(f"{spec}: no instructions found (the file is empty)")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lion.records", description="Check a seed file loads.")
    ap.add_argument("file")
    args = ap.parse_args(argv)
    pool, rep = load_instructions(args.file)
    print(f"{rep.source}: {rep.rows} rows, {len(pool)} unique instructions, {rep.duplicates} exact duplicates merged, "
          f"{len(rep.answers)} with an answer" + (f", {rep.multi_turn} multi-turn (first exchange used)"
                                                  if rep.multi_turn else ""))
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])


def query_read_only(db_path: Path, *queries: tuple[str, tuple[Any, ...]]) -> list[list[tuple[Any, ...]]] | None:
    """The rows of each (sql, params) against an SQLite file opened read-only, one connection for all (safe while
    a run writes it); None when the file is absent or cannot be read."""
    import sqlite3

    if not Path(db_path).exists():
        return None
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            return [db.execute(sql, params).fetchall() for sql, params in queries]
        finally:
            db.close()
    except sqlite3.Error:
        return None
