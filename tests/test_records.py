"""Pool I/O: content-hash ids, atomic writes, the loaders' formats and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_file

from lion.errors import DataError
from lion.records import Instruction, instruction_id, load_instructions, read_pool, write_pool


def test_ids_are_stable_content_hashes():
    a = Instruction("Name three  colours.")
    assert a.id == instruction_id("Name three colours.") == Instruction(" Name three colours. ".strip()).id
    assert a.id != Instruction("Name three colours.", input="warm ones").id
    assert len(a.id) == 16


def test_write_then_read_roundtrip_keeps_lineage(tmp_path: Path):
    pool = [Instruction("a b c"), Instruction("d e f", round=2, kind="hard", parent="abc", meta={"family": "x"})]
    write_pool(tmp_path / "p.jsonl", pool)
    assert read_pool(tmp_path / "p.jsonl") == pool
    assert not list(tmp_path.glob(".*.tmp")), "temp files left behind"


def test_loads_alpaca_json_array_and_jsonl(tmp_path: Path):
    rows = [{"instruction": "Translate.", "input": "bonjour", "output": "hello"}, {"instruction": "Add 2 and 2."}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for name in ("a.json", "a.jsonl"):
        pool, rep = load_instructions(tmp_path / name)
        assert [p.instruction for p in pool] == ["Translate.", "Add 2 and 2."]
        assert pool[0].input == "bonjour" and rep.rows == 2


def test_loads_csv_through_datasets(tmp_path: Path):
    (tmp_path / "s.csv").write_text("instruction,input\nWrite a haiku.,\nSum these.,1 2 3\n")
    pool, _ = load_instructions(tmp_path / "s.csv")
    assert [p.instruction for p in pool] == ["Write a haiku.", "Sum these."]
    assert pool[1].input == "1 2 3"


def test_loads_real_public_files(shared_data: Path):
    """The real Self-Instruct seeds and Vicuna-80 questions load whole, with their metadata."""
    seeds, _ = load_instructions(shared_file(shared_data, "self_instruct/seed_tasks.jsonl"))
    assert len(seeds) == 175
    vicuna, _ = load_instructions(shared_file(shared_data, "vicuna80/question.jsonl"))
    assert len(vicuna) == 80 and vicuna[0].meta["category"] == "generic"


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"instruction": "ok"}\n{"instruction": "x"\n', r"bad.jsonl:2: not valid JSON"),
        ('{"instruction": "ok"}\n{"output": "no instruction"}\n', r"bad.jsonl:2: no instruction field"),
        ('{"instruction": "ok"}\n\n{"instruction": "   "}\n', r"bad.jsonl:3: the instruction is empty"),
        ('{"instruction": "ok", "input": 5}\n', r"bad.jsonl:1: 'input' must be a string"),
        ("", r"no instructions found"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, content: str, message: str):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        load_instructions(tmp_path / "bad.jsonl")


def test_duplicates_are_counted_not_silently_dropped(tmp_path: Path):
    (tmp_path / "d.jsonl").write_text('{"instruction": "same"}\n{"instruction": "same"}\n{"instruction": "other"}\n')
    pool, rep = load_instructions(tmp_path / "d.jsonl")
    assert len(pool) == 2 and rep.duplicates == 1 and rep.rows == 3


def test_cli_error_is_one_line(tmp_path: Path):
    (tmp_path / "bad.jsonl").write_text('{"instruction": "ok"}\n[1, 2]\n')
    out = subprocess.run([sys.executable, "-m", "lion.records", str(tmp_path / "bad.jsonl")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "bad.jsonl:2" in out.stderr and "Traceback" not in out.stderr
