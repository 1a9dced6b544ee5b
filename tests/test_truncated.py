"""Truncated answers are not training targets, and truncated generator replies are rejected.

    python -m pytest -q tests/test_truncated.py

The scripted world of tests/loop_world.py, made verbose for some requests: the local server cuts a reply at the
request's max_tokens and says finish_reason "length", as OpenAI does. One round with the real gateway and a
tiny student.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from loop_world import LoopResponder
from test_loop import loop_config

from lion.config import config_from_dict
from lion.errors import LionError
from lion.records import read_jsonl
from lion.run import lion_loop
from lion.sim.server import SimServer

TAIL = " And that is the whole story, told at some length." * 8  # ~400 characters: past max_tokens 40


def verbose(text: str) -> bool:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 2 == 0


class VerboseWorld(LoopResponder):
    """Teacher answers and generator replies run long for half of the requests (by a hash of the request)."""

    def respond(self, body: dict[str, Any]) -> str:
        text = super().respond(body)
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        if self.t["referee"].extract(user) is not None:
            return text
        return text + TAIL if verbose(user + str(body.get("seed"))) else text


@pytest.fixture
def server():
    srv = SimServer(VerboseWorld(), latency_ms=1)
    yield srv.start()
    srv.stop()


def _cfg(tmp_path: Path, url: str, **imitation: Any):
    cfg = loop_config(tmp_path / "run", url, rounds=1)
    cfg["llm"]["default"]["max_tokens"] = 40
    cfg["llm"]["referee"] = {"max_tokens": 200}
    if imitation:
        cfg["imitation"] = imitation
    return config_from_dict(cfg)


def test_truncated_teacher_answers_are_dropped_and_truncated_generator_replies_rejected(tmp_path, server,
                                                                                       monkeypatch) -> None:
    monkeypatch.setenv("LION_TEST_KEY", "k")
    lion_loop(_cfg(tmp_path, server), progress=False, echo=False)
    run = tmp_path / "run"
    store = read_jsonl(run / "teacher_answers.jsonl")
    pool = {r["id"] for r in read_jsonl(run / "round_01" / "train_pool.jsonl")}
    cut = {a["id"] for a in store if a["finish_reason"] == "length" and a["id"] in pool}
    assert 0 < len(cut) < len(pool)  # the server really cut some (finish_reason "length"), not all
    m = read_jsonl_json(run / "round_01" / "imitation.json")
    assert m["n_truncated_answers"] == len(cut) and m["truncated_policy"] == "drop"
    assert m["n_train"] == len(pool) - len(cut) and m["n_failed_answers"] == 0
    assert m["train"]["n_examples"] == len(pool) - len(cut)  # what the student was really trained on
    metrics = read_jsonl_json(run / "round_01" / "metrics.json")
    assert metrics["imitation"]["n_truncated_answers"] == len(cut)  # in the round's figures

    rejected = read_jsonl(run / "round_01" / "rejected.jsonl")
    truncated = [r for r in rejected if r["reason"] == "truncated"]
    assert truncated and all(r["text"].endswith("at some") or "whole story" in r["text"] for r in truncated)
    gen = read_jsonl_json(run / "round_01" / "generation.json")
    assert gen["rejected"]["truncated"] == len(truncated)
    assert not any("whole story" in g["instruction"] for g in read_jsonl(run / "round_01" / "generated.jsonl"))
    assert Counter(r["reason"] for r in rejected)["truncated"] == len(truncated)


def test_keep_trains_on_truncated_answers_and_all_truncated_is_a_clear_error(tmp_path, server, monkeypatch) -> None:
    monkeypatch.setenv("LION_TEST_KEY", "k")
    cfg = _cfg(tmp_path, server, truncated="keep")
    cfg.rounds, cfg.final_imitation = 1, False
    from lion.context import RunContext
    from lion.imitation import imitation

    with RunContext(cfg, progress=False) as ctx:
        m = imitation(ctx, 1)
    assert m["n_truncated_answers"] > 0 and m["truncated_policy"] == "keep"
    assert m["n_train"] == m["n_train_pool"]

    every = _cfg(tmp_path / "all", server)
    every.llm.teacher.max_tokens = 2  # every answer is cut
    with RunContext(every, progress=False) as ctx:
        with pytest.raises(LionError, match=r"were cut at llm.teacher.max_tokens"):
            imitation(ctx, 1)


def read_jsonl_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text())
