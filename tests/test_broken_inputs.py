"""A corpus of broken inputs through the real commands: every one exits non-zero with one line that names the
file:line (or the config key), and no traceback.

    python -m pytest -q tests/test_broken_inputs.py

Mostly `python -m lion.run` (seed files in every broken way a user finds: encodings, truncated JSON, wrong
types, wrong fields, empty files, a 1,000,000-character row, NaN, a CSV without the column, a directory; configs
with a typo, a wrong type, NaN, bad YAML, bad bytes), plus the other entry points that read user files.
The commands run concurrently (each is a fresh interpreter), once for the module; each case is its own test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GOOD = ['{"instruction": "Reverse the word cat."}', '{"instruction": "Uppercase the word dog."}']


def jsonl(*rows: str) -> bytes:
    return "".join(r + "\n" for r in rows).encode("utf-8")


def base_config(d: Path, seed: str) -> dict[str, Any]:
    return {
        "run_dir": str(d / "run"),
        "rounds": 1,
        "llm": {"default": {"model": "oracle", "api_key_env": "LION_SIM_KEY", "max_tokens": 32}},
        "sim": {"enabled": True, "responder": "oracle", "options": {"seed": 0}},
        "student": {"model": "tiny", "tiny": {"vocab": "char", "hidden": 16, "layers": 1, "heads": 1},
                    "max_length": 128, "max_steps": 1, "prompt_format": "plain"},
        "pools": {"train_seed": str(d / seed)},
    }


@dataclass
class Case:
    name: str
    files: dict[str, bytes]  # written into the case's folder
    expect: str  # a fragment of the one-line message ({d} = the case's folder)
    config: Callable[[dict[str, Any]], Any] | None = None  # edits the base config
    seed: str = "seeds.jsonl"
    raw_config: bytes | None = None  # the config file's bytes instead of the base config
    command: list[str] | None = None  # another entry point ({d} and {cfg} are filled in)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(cfg: dict[str, Any]) -> None:
        node = cfg
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return edit


CASES = [
    # seed files
    Case("latin1", {"seeds.jsonl": jsonl(GOOD[0], '{"instruction": "Caf\u00e9 au lait?"}').replace(b"\xc3\xa9",
                                                                                             b"\xe9")},
         "seeds.jsonl:2: not UTF-8 (byte 0xe9 at column 21); re-encode the file as UTF-8"),
    Case("utf16", {"seeds.jsonl": "\n".join(GOOD).encode("utf-16")}, "seeds.jsonl:1: not UTF-8 (byte 0xff"),
    Case("binary", {"seeds.jsonl": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"}, "seeds.jsonl:1: not UTF-8 (byte 0x89"),
    Case("truncated_jsonl", {"seeds.jsonl": jsonl(GOOD[0], '{"instruction": "Uppercase the w')},
         "seeds.jsonl:2: not valid JSON"),
    Case("truncated_json_array", {"seeds.json": b'[\n {"instruction": "a b c"},\n {"instruction": "d e'},
         "seeds.json:3: not valid JSON", seed="seeds.json"),
    Case("wrong_type", {"seeds.jsonl": jsonl(GOOD[0], '{"instruction": 42}')},
         "seeds.jsonl:2: the instruction is empty or not a string"),
    Case("wrong_input_type", {"seeds.jsonl": jsonl('{"instruction": "a b c", "input": ["x"]}')},
         "seeds.jsonl:1: 'input' must be a string, got list"),
    Case("wrong_lineage_type", {"seeds.jsonl": jsonl('{"instruction": "a b c", "round": "first"}')},
         "seeds.jsonl:1: 'round' must be an integer >= 0"),
    Case("wrong_fields", {"seeds.jsonl": jsonl('{"prompt_text": "a b c", "answer": "x"}')},
         "seeds.jsonl:1: no instruction field (expected one of: instruction, prompt, question, text, query, turns)"),
    Case("row_not_object", {"seeds.jsonl": jsonl(GOOD[0], "[1, 2]")},
         "seeds.jsonl:2: expected an object or a string, got list"),
    Case("nan", {"seeds.jsonl": jsonl('{"instruction": NaN}')},
         "seeds.jsonl:1: the instruction is empty or not a string"),
    Case("empty_file", {"seeds.jsonl": b""}, "seeds.jsonl: no instructions found (the file is empty)"),
    Case("blank_lines", {"seeds.jsonl": b"\n  \n\n"}, "seeds.jsonl: no instructions found"),
    Case("huge_row_error", {"seeds.jsonl": jsonl(GOOD[0], json.dumps({"instruction": "x" * 1_000_000}))},
         "seeds.jsonl:2: instruction + input is 1000000 tokens, over the limit of 128 (student.max_length)",
         config=_set("pools.too_long", "error")),
    Case("huge_rows_only", {"seeds.jsonl": jsonl(json.dumps({"instruction": "y" * 1_000_000}))},
         "seeds.jsonl: every one of its 1 rows was rejected (1 too_long; first: "),
    Case("csv_without_column", {"seeds.csv": b"title,body\nHello,World\n"},
         "seeds.csv: no instruction column (expected one of: instruction", seed="seeds.csv"),
    Case("csv_latin1", {"seeds.csv": "instruction\nna\u00efve question\n".encode("latin-1")},
         "seeds.csv:2: not UTF-8 (byte 0xef", seed="seeds.csv"),
    Case("corrupt_parquet", {"seeds.parquet": b"PAR1 this is not parquet at all"},
         "seeds.parquet: could not load with datasets (", seed="seeds.parquet"),
    Case("json_object_without_list", {"seeds.json": b'{"name": "my seeds", "items": 3}'},
         "seeds.json: a JSON object must hold a list under 'data', 'instances', 'rows' or 'train'", seed="seeds.json"),
    Case("seed_is_a_directory", {"seeds.jsonl/inner.txt": b"x"}, "seeds.jsonl: is a directory; name a file"),
    Case("seed_missing", {}, "missing.jsonl: file not found", seed="missing.jsonl"),
    Case("bad_cache_seed", {"seeds.jsonl": jsonl(*GOOD), "cache.jsonl": jsonl(GOOD[1], "{oops")},
         "cache.jsonl:2: not valid JSON", config=_set("pools.cache_seed", "{d}/cache.jsonl")),
    # configs
    Case("config_typo", {"seeds.jsonl": jsonl(*GOOD)}, "studnet: unknown key (known keys here:",
         config=lambda c: c.update(studnet=c.pop("student"))),
    Case("config_nested_typo", {"seeds.jsonl": jsonl(*GOOD)}, "student.learning_rate: unknown key",
         config=_set("student.learning_rate", 1e-4)),
    Case("config_wrong_type", {"seeds.jsonl": jsonl(*GOOD)}, "rounds: expected an integer, got str 'two'",
         config=_set("rounds", "two")),
    Case("config_nan", {"seeds.jsonl": jsonl(*GOOD)}, "discrimination.tau: expected a finite number, got nan",
         config=_set("discrimination.tau", float("nan"))),
    Case("config_out_of_range", {"seeds.jsonl": jsonl(*GOOD)}, "student.lr: must be > 0, got -0.001",
         config=_set("student.lr", -1e-3)),
    Case("config_bad_literal", {"seeds.jsonl": jsonl(*GOOD)}, "pools.too_long: must be one of 'skip', 'error'",
         config=_set("pools.too_long", "truncate")),
    Case("config_bad_yaml", {"seeds.jsonl": jsonl(*GOOD)},
         "c.yaml:4: not valid YAML (expected ',' or ']', but got '<stream end>'; "
         "while parsing a flow sequence at line 3)",
         raw_config=b"rounds: 1\nstudent:\n  model: [tiny\n"),
    Case("config_latin1", {"seeds.jsonl": jsonl(*GOOD)}, "c.yaml:2: not UTF-8 (byte 0xe9); save the config as UTF-8",
         raw_config="rounds: 1\n# r\u00e9sum\u00e9\n".encode("latin-1")),
    Case("config_not_a_mapping", {}, "c.yaml: the top level must be a mapping of keys", raw_config=b"- rounds\n- 1\n"),
    Case("config_missing", {}, "config file {d}/nope.yaml does not exist",
         command=["lion.run", "--config", "{d}/nope.yaml"]),
    Case("bad_set", {"seeds.jsonl": jsonl(*GOOD)}, "--set 'rounds': expected KEY=VALUE",
         command=["lion.run", "--config", "{cfg}", "--set", "rounds"]),
    # other entry points
    Case("phase_bad_round", {"seeds.jsonl": jsonl(*GOOD)}, "--round: must be >= 1, got 0",
         command=["lion.imitation", "--config", "{cfg}", "--round", "0"]),
    Case("evaluate_questions_latin1", {"seeds.jsonl": jsonl(*GOOD),
                                       "q.jsonl": b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n'},
         "q.jsonl:2: not UTF-8 (byte 0xe9", command=["lion.evaluate", "--config", "{cfg}", "--base", "--questions",
                                                    "{d}/q.jsonl"]),
    Case("records_cli", {"seeds.jsonl": jsonl(GOOD[0], '{"instruction": ""}')},
         "seeds.jsonl:2: the instruction is empty or not a string", command=["lion.records", "{d}/seeds.jsonl"]),
    Case("train_cli_bad_data", {"seeds.jsonl": jsonl(*GOOD), "d.jsonl": b'{"instruction": "a"}\n{"instr'},
         "d.jsonl:2: not valid JSON", command=["lion.student.train", "--config", "{cfg}", "--data", "{d}/d.jsonl",
                                               "--init-from", "{d}", "--out", "{d}/out"]),
    Case("infer_cli_bad_data", {"d.jsonl": b'{"instruction": "a"}\n\xff\xfe\n'}, "d.jsonl:2: not UTF-8 (byte 0xff",
         command=["lion.student.infer", "--model", "{d}", "--data", "{d}/d.jsonl", "--out", "{d}/o.jsonl"]),
    Case("rundir_missing", {}, "{d}/norun: run directory not found", command=["lion.rundir", "{d}/norun"]),
]


def run_case(case: Case, root: Path) -> subprocess.CompletedProcess[str]:
    d = root / case.name
    d.mkdir(parents=True)
    for name, data in case.files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    cfg_path = d / "c.yaml"
    if case.raw_config is not None:
        cfg_path.write_bytes(case.raw_config)
    else:
        cfg = base_config(d, case.seed)
        if case.config is not None:
            case.config(cfg)
        text = yaml.safe_dump(cfg).replace("{d}", str(d))
        cfg_path.write_text(text)
    argv = case.command or ["lion.run", "--config", "{cfg}", "--no-progress"]
    argv = [a.replace("{d}", str(d)).replace("{cfg}", str(cfg_path)) for a in argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LION_SIM_KEY": "unused"}
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env, cwd=d,
                          timeout=300)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    root = tmp_path_factory.mktemp("broken")
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(zip([c.name for c in CASES], pool.map(lambda c: run_case(c, root), CASES), strict=True))
    return {name: (root / name, proc) for name, proc in done.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_input_is_one_line_naming_file_line_or_key(case: Case, results) -> None:
    d, proc = results[case.name]
    err = proc.stderr
    assert proc.returncode == 2, f"exit status {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err[-3000:]}"
    assert lines[0].startswith("error: ")
    assert case.expect.replace("{d}", str(d)) in lines[0], lines[0]
