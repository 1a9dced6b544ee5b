"""Seed files in the formats people have: ShareGPT `conversations`, OpenAI `messages`, Alpaca with `output`; and
`pools.seed_answers: teacher`, which makes their answers the teacher's (recorded as seeded, never bought).

    python -m pytest -q tests/test_seed_formats.py
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from lion.errors import DataError
from lion.records import load_instructions


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sharegpt_conversations(tmp_path: Path) -> None:
    p = _write(tmp_path / "sg.jsonl", [
        {"id": "a", "conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "Hi there?"},
                                      {"from": "gpt", "value": "Hello!"}]},
        {"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."},
                           {"from": "human", "value": "Another?"}, {"from": "gpt", "value": "Red."}]},
        {"conversations": [{"from": "human", "value": "No answer yet"}]},
    ])
    pool, rep = load_instructions(p)
    assert [i.instruction for i in pool] == ["Hi there?", "Name a colour.", "No answer yet"]
    assert rep.answers == {pool[0].id: "Hello!", pool[1].id: "Blue."}
    assert rep.multi_turn == 1  # the second row's later turns are not used, and that is counted


def test_openai_messages_with_content_parts(tmp_path: Path) -> None:
    p = _write(tmp_path / "m.jsonl", [
        {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Sum 2 and 3."},
                      {"role": "assistant", "content": "5"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Part one."},
                                                    {"type": "text", "text": "Part two."}]},
                      {"role": "assistant", "content": ""}]},
    ])
    pool, rep = load_instructions(p)
    assert [i.instruction for i in pool] == ["Sum 2 and 3.", "Part one.\nPart two."]
    assert rep.answers == {pool[0].id: "5"}  # an empty assistant turn is no answer
    assert rep.multi_turn == 0


def test_alpaca_output_is_an_answer_and_input_stays_apart(tmp_path: Path) -> None:
    p = tmp_path / "alpaca.json"
    p.write_text(json.dumps([{"instruction": "Translate.", "input": "chat", "output": "cat"},
                             {"instruction": "Say hi.", "input": "", "output": ""}]))
    pool, rep = load_instructions(p)
    assert (pool[0].instruction, pool[0].input) == ("Translate.", "chat")
    assert rep.answers == {pool[0].id: "cat"}


@pytest.mark.parametrize("row, message", [
    ({"conversations": []}, r"sg.jsonl:2: 'conversations' must be a non-empty list"),
    ({"conversations": [{"from": "gpt", "value": "I start"}]}, r"sg.jsonl:2: conversations\[0\] is from 'gpt'"),
    ({"conversations": [{"from": "human"}]}, r"sg.jsonl:2: conversations\[0\] must be an object with 'from' and 'value'"),
    ({"messages": [{"role": "system", "content": "only a system turn"}]}, r"sg.jsonl:2: 'messages' has no user turn"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     r"sg.jsonl:2: messages\[0\]: only text content parts"),
    ({"messages": [{"role": "user", "content": 5}]}, r"sg.jsonl:2: messages\[0\]: the turn's text must be a string"),
])
def test_bad_chat_rows_name_file_and_line(tmp_path: Path, row: dict, message: str) -> None:
    p = _write(tmp_path / "sg.jsonl", [{"conversations": [{"from": "human", "value": "fine"}]}, row])
    with pytest.raises(DataError, match=message):
        load_instructions(p)


def test_records_cli_reports_answers(tmp_path: Path, capsys) -> None:
    from lion.records import main

    p = _write(tmp_path / "a.jsonl", [{"instruction": "x y z", "output": "w"}, {"instruction": "q r s"}])
    assert main([str(p)]) == 0
    out = capsys.readouterr().out
    assert "2 unique instructions" in out and "1 with an answer" in out


# --------------------------------------------------------------------------------------------- seed_answers


class _Teacher:
    """Answers every teacher request and records which requests it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def respond(self, body: dict) -> str:
        user = body["messages"][-1]["content"]
        self.seen.append(user)
        return "bought: " + user[-20:]


def _cfg(run: Path, url: str, seeds: Path, mode: str):
    from lion.config import config_from_dict

    return config_from_dict({
        "run_dir": str(run),
        "llm": {"default": {"base_url": url, "model": "t", "api_key_env": "LION_TEST_KEY", "rpm": 60000,
                            "tpm": 1e9, "max_attempts": 2, "backoff_initial_s": 0.01, "timeout_s": 5}},
        "student": {"model": "tiny"},
        "pools": {"train_seed": str(seeds), "seed_answers": mode},
    })


@pytest.mark.parametrize("mode", ["teacher", "ignore"])
def test_seed_answers_become_the_teachers_and_are_never_bought(tmp_path: Path, sim_server, monkeypatch, mode) -> None:
    from lion.answers import teacher_answers
    from lion.context import RunContext
    from lion.pools import prepare_round
    from lion.records import read_jsonl, read_pool

    monkeypatch.setenv("LION_TEST_KEY", "k")
    seeds = _write(tmp_path / "seeds.jsonl", [
        {"conversations": [{"from": "human", "value": "Alpha question one"}, {"from": "gpt", "value": "seeded A"}]},
        {"messages": [{"role": "user", "content": "Beta question two"}, {"role": "assistant", "content": "seeded B"}]},
        {"instruction": "Gamma question three", "output": "seeded C"},
        {"instruction": "Delta question four"},
    ])
    teacher = _Teacher()
    server = sim_server(teacher)
    cfg = _cfg(tmp_path / "run", server.base_url, seeds, mode)
    with RunContext(cfg, progress=False) as ctx:
        prepare_round(ctx, 1)
        pool = read_pool(ctx.run.round(1).train_pool)
        got = teacher_answers(ctx, pool, "imitation")
    store = read_jsonl(tmp_path / "run" / "teacher_answers.jsonl")
    if mode == "teacher":
        assert len(teacher.seen) == 1 and "Delta question four" in teacher.seen[0]
        assert [got[i.id] for i in pool[:3]] == ["seeded A", "seeded B", "seeded C"]
        assert sorted(r.get("source", "teacher") for r in store) == ["seed", "seed", "seed", "teacher"]
    else:
        assert len(teacher.seen) == 4 and all(a.startswith("bought: ") for a in got.values())
        assert all("source" not in r for r in store)
    log = (tmp_path / "run" / "lion.log").read_text()
    assert re.search(r"seed answers: 3 .*(recorded as the teacher's|ignored)", log)


def test_seed_answers_is_resume_critical(tmp_path: Path, sim_server, monkeypatch) -> None:
    from lion.context import RunContext
    from lion.errors import LionError

    monkeypatch.setenv("LION_TEST_KEY", "k")
    seeds = _write(tmp_path / "s.jsonl", [{"instruction": "one two three", "output": "x"}])
    server = sim_server(_Teacher())
    with RunContext(_cfg(tmp_path / "run", server.base_url, seeds, "ignore"), progress=False):
        pass
    with pytest.raises(LionError, match="pools.seed_answers: changed from 'ignore' to 'teacher'"):
        with RunContext(_cfg(tmp_path / "run", server.base_url, seeds, "teacher"), progress=False):
            pass
    assert os.path.exists(tmp_path / "run" / "state.json")
