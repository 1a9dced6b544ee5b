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


@pytest.mark.parametrize("policy", ["keep", "exclude"])
def test_student_answers_cut_at_max_new_tokens_are_counted_and_kept_or_excluded(tmp_path, server, monkeypatch,
                                                                               policy) -> None:
    """The round's student (a tiny model trained 4 steps) rarely stops within student.infer.max_new_tokens 12: every
    answer it did not end is recorded as cut, counted in discrimination.json, the round line and the report's
    table, and judged (keep) or excluded with its reason (exclude)."""
    from lion.context import RunContext
    from lion.discrimination import TRUNCATED_REASON, discrimination
    from lion.imitation import imitation
    from lion.roundtable import collect_round, round_line, table_rows

    monkeypatch.setenv("LION_TEST_KEY", "k")
    cfg = _cfg(tmp_path, server)
    cfg.discrimination.truncated_student = policy
    with RunContext(cfg, progress=False) as ctx:
        imitation(ctx, 1)
        m = discrimination(ctx, 1)
        rp = ctx.run.round(1)
    answers = read_jsonl(rp.student_answers)
    cut = {r["id"] for r in answers if r["truncated"]}
    assert cut and all(isinstance(r["truncated"], bool) for r in answers)
    assert m["student_truncated"] == len(cut) and m["truncated_student"] == policy
    split = {r["id"]: r for r in read_jsonl(rp.split)}
    judged = {j["id"] for j in read_jsonl(rp.judgements)} if rp.judgements.exists() else set()
    excluded_cut = {i for i, r in split.items() if r["reason"] == TRUNCATED_REASON}
    if policy == "exclude":
        assert excluded_cut == cut and m["excluded_by_reason"][TRUNCATED_REASON] == len(cut)
        assert not cut & judged  # the referee was not asked about them
        assert m["excluded"] >= len(cut)
    else:
        assert not excluded_cut and cut <= judged  # judged as they are
        assert m["student_truncated_hard"] == sum(1 for i in cut if split[i]["label"] == "hard")
    assert m["student_infer"] == {"backend": "transformers", "dtype": "float32", "generation_config": "ignore",
                                  "temperature": 0.0, "top_p": None, "max_new_tokens": 12, "seed": 0}
    figures = collect_round(rp)
    line = round_line(figures)
    assert (f"student cut {len(cut)} (excluded)" if policy == "exclude" else f"student cut {len(cut)} (kept,") in line
    head, rows = table_rows([figures])
    assert rows[0][head.index("S cut")] == (f"{len(cut)}x" if policy == "exclude" else str(len(cut)))
