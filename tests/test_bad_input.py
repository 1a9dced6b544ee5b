"""Bad input is a clear error naming file:line (or the key), or a counted reject; never a traceback.

    python -m pytest -q tests/test_bad_input.py

In-process checks of the readers (encodings, CSV columns, lineage fields), the config (NaN, encodings), the
seed-row token limit (`pools.max_instruction_tokens`, policy skip | error) and append-only files after a torn
write. The same inputs through `python -m lion.run` are in tests/test_broken_inputs.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lion.config import config_from_dict, load_config
from lion.context import RunContext
from lion.errors import ConfigError, DataError
from lion.pools import prepare_round
from lion.records import append_jsonl, load_instructions, read_jsonl, read_pool


def test_undecodable_bytes_name_file_line_and_byte(tmp_path: Path) -> None:
    p = tmp_path / "seeds.jsonl"
    p.write_bytes('{"instruction": "Say hi."}\n{"instruction": "Caf\u00e9 au lait?"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"seeds.jsonl:2: not UTF-8 \(byte 0xe9 at column 21\); re-encode the file"):
        load_instructions(p)
    j = tmp_path / "seeds.json"
    j.write_bytes('[\n {"instruction": "ok"},\n {"instruction": "na\u00efve"}\n]\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"seeds.json:3: not UTF-8 \(byte 0xef"):
        load_instructions(j)
    u16 = tmp_path / "u16.jsonl"
    u16.write_bytes('{"instruction": "hi"}\n'.encode("utf-16"))
    with pytest.raises(DataError, match=r"u16.jsonl:1: not UTF-8 .*looks like UTF-16"):
        load_instructions(u16)
    csv = tmp_path / "seeds.csv"
    csv.write_bytes("instruction\nfine\nna\u00efve\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"seeds.csv:3: not UTF-8"):
        load_instructions(csv)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    for name, text in (("a.jsonl", '{"instruction": "Say hi."}\n'), ("b.json", '[{"instruction": "Say hi."}]'),
                       ("c.csv", "instruction\nSay hi.\n")):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
        pool, _ = load_instructions(tmp_path / name)
        assert [i.instruction for i in pool] == ["Say hi."], name


def test_csv_without_an_instruction_column_names_the_columns(tmp_path: Path) -> None:
    p = tmp_path / "seeds.csv"
    p.write_text("title,body\nHello,World\n")
    with pytest.raises(DataError, match=r"seeds.csv: no instruction column .*; columns: title, body"):
        load_instructions(p)


@pytest.mark.parametrize(
    "row, message",
    [
        ('{"instruction": "x y z", "round": "two"}', r"seeds.jsonl:1: 'round' must be an integer >= 0, got str"),
        ('{"instruction": "x y z", "parent": 7}', r"seeds.jsonl:1: 'parent' must be a string or null, got int"),
        ('{"instruction": NaN}', r"seeds.jsonl:1: the instruction is empty or not a string"),
        ('{"instruction": "x", "input": NaN}', r"seeds.jsonl:1: 'input' must be a string, got float"),
        ("[" * 100000, r"seeds.jsonl(:1)?: (not valid JSON|JSON nested too deeply)"),
    ],
)
def test_wrong_types_name_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    (tmp_path / "seeds.jsonl").write_text(row + "\n")
    with pytest.raises(DataError, match=message):
        load_instructions(tmp_path / "seeds.jsonl")


def test_a_row_check_skips_and_counts_or_stops_naming_file_line(tmp_path: Path) -> None:
    p = tmp_path / "seeds.jsonl"
    p.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in ["short one", "x" * 50, "another one"]))

    def check(inst):
        return ("too_long", f"{len(inst.instruction)} characters") if len(inst.instruction) > 20 else None

    pool, report = load_instructions(p, check=check)
    assert [i.instruction for i in pool] == ["short one", "another one"]
    assert report.rows == 3 and report.rejected == 1 and report.reasons == {"too_long": 1}
    assert report.examples == [{"where": f"{p}:2", "reason": "too_long", "detail": "50 characters"}]
    with pytest.raises(DataError, match=r"seeds.jsonl:2: 50 characters"):
        load_instructions(p, check=check, on_reject="error")


def test_append_after_a_torn_last_line_cuts_it_off(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl"
    append_jsonl(p, {"id": 1})
    with p.open("ab") as f:
        f.write(b'{"id": 2, "answ')  # a write cut by a kill
    append_jsonl(p, {"id": 3})
    assert read_jsonl(p) == [{"id": 1}, {"id": 3}]
    q = tmp_path / "only_torn.jsonl"
    q.write_bytes(b'{"id": ')
    append_jsonl(q, {"id": 4})
    assert read_jsonl(q) == [{"id": 4}]


def test_config_nan_and_encoding_errors_name_the_key_or_line(tmp_path: Path) -> None:
    base = {"student": {"model": "tiny"}, "pools": {"train_seed": "x"}}
    with pytest.raises(ConfigError, match=r"discrimination.tau: expected a finite number, got nan"):
        config_from_dict({**base, "discrimination": {"tau": float("nan")}})
    with pytest.raises(ConfigError, match=r"student.lr: expected a finite number"):
        load_config(None, ["student.model=tiny", "pools.train_seed=x", "student.lr=.inf"])
    c = tmp_path / "c.yaml"
    c.write_bytes("student:\n  model: tiny\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"c.yaml:3: not UTF-8 \(byte 0xe9\)"):
        load_config(c)


def _pools_cfg(tmp_path: Path, seeds: Path, **pools) -> object:
    return config_from_dict({
        "run_dir": str(tmp_path / "run"),
        "student": {"model": "tiny", "tiny": {"vocab": "char", "hidden": 16, "layers": 1, "heads": 1},
                    "max_length": 200},
        "pools": {"train_seed": str(seeds), **pools},
    })


def test_over_long_seed_rows_are_rejected_at_load_and_reported(tmp_path: Path, capsys) -> None:
    """A 1,000,000-character instruction among short ones: left out of the pools (so no teacher, student or
    referee ever sees it), counted in RUN/seed_report.json with file:line; `error` stops naming file:line."""
    seeds = tmp_path / "seeds.jsonl"
    rows = ["Reverse the word cat.", "Uppercase the word dog.", "x" * 1_000_000, "Count the letters in moon."]
    seeds.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in rows))
    with RunContext(_pools_cfg(tmp_path, seeds)) as ctx:
        prepare_round(ctx, 1)
        train = read_pool(ctx.run.round(1).train_pool)
        cache = read_pool(ctx.run.round(1).cache_pool)
        report = json.loads(ctx.run.seed_report.read_text())["train_seed"]
    assert [i.instruction for i in train] == [rows[0], rows[1], rows[3]] and len(cache) == 3
    assert report["rows"] == 4 and report["rejected"] == 1 and report["reasons"] == {"too_long": 1}
    assert report["examples"][0]["where"] == f"{seeds}:3"
    assert "1000000 tokens, over the limit of 200 (student.max_length)" in report["examples"][0]["detail"]
    assert f"{seeds}:3" in capsys.readouterr().err  # a warning line names it too

    with pytest.raises(DataError, match=rf"{seeds}:3: instruction \+ input is 1000000 tokens, over the limit of 50 "
                                        r"\(pools.max_instruction_tokens\)"):
        with RunContext(_pools_cfg(tmp_path / "e", seeds, max_instruction_tokens=50, too_long="error")) as ctx:
            prepare_round(ctx, 1)
    with RunContext(_pools_cfg(tmp_path / "off", seeds, max_instruction_tokens=0)) as ctx:
        prepare_round(ctx, 1)
        assert len(read_pool(ctx.run.round(1).train_pool)) == 4  # 0 = no limit
