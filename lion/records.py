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
merged and counted, and the count is reported).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import DataError


def instruction_id(instruction: str, input: str = "") -> str:
    """Stable content hash: 16 hex chars of sha256 over the whitespace-normalised text."""
    norm = " ".join(instruction.split()) + "\x1f" + " ".join(input.split())
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()[:16]


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


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Atomically replace `path` with one JSON object per line."""
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


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
    path = Path(path)
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise DataError(f"{path}:{i + 1}: corrupt line in the middle of an append-only file") from None
    return rows


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


def write_pool(path: Path, pool: Iterable[Instruction]) -> None:
    write_jsonl(path, (r.to_json() for r in pool))


def read_pool(path: Path) -> list[Instruction]:
    return [Instruction.from_json(r) for r in read_jsonl(path)]


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


def _iter_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, row) for JSONL or JSON files."""
    text = decode_utf8(path.read_bytes(), path)
    stripped = text.lstrip()
    if stripped.startswith("[") or (stripped.startswith("{") and path.suffix == ".json"):
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
    report = LoadReport(source=spec)
    seen: set[str] = set()
    out: list[Instruction] = []
    for where, row in rows:
        report.rows += 1
        inst = _row_to_instruction(row, where)
        refused = check(inst) if check is not None else None
        if refused is not None:
            if on_reject == "error":
                raise DataError(f"{where}: {refused[1]}")
            report.reject(where, *refused)
            continue
        if inst.id in seen:
            report.duplicates += 1
            continue
        seen.add(inst.id)
        out.append(inst)
        if isinstance(row, dict):
            chat = _first_exchange(row, where)
            report.multi_turn += bool(chat and chat[2])
            answer = row_answer(row, where)
            if answer is not None:
                report.answers[inst.id] = answer
        if limit is not None and len(out) >= limit:
            break
    if not out:
        if report.rejected:
            raise DataError(f"{spec}: every one of its {report.rows} rows was rejected "
                            f"({', '.join(f'{n} {r}' for r, n in report.reasons.items())}; first: "
                            f"{report.examples[0]['where']}: {report.examples[0]['detail']})")
        raise DataError(f"{spec}: no instructions found (the file is empty)")
    return out, report


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
