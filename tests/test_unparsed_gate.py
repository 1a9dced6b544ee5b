"""Pairs a referee (discrimination) or a judge (evaluation) answered without a readable verdict are gated like
failed calls: above llm.max_unparsed_rate the phase stops with exit status 4 and without its .done marker (the
evaluation without its summary.json), the replies kept to look at; once the gate is raised, a re-run replays
every call from the cache and finishes. A scripted world (tests/loop_world.py) whose referee never writes a
verdict line for half the instructions.

    python -m pytest -q tests/test_unparsed_gate.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_world import LoopResponder, h  # noqa: E402

from lion.config import config_from_dict  # noqa: E402
from lion.context import RunContext  # noqa: E402
from lion.discrimination import discrimination  # noqa: E402
from lion.errors import TooManyFailures  # noqa: E402
from lion.evaluate import evaluate  # noqa: E402
from lion.imitation import imitation  # noqa: E402
from lion.layout import EvalPaths  # noqa: E402
from lion.records import read_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GARBAGE = "Both answers have merits; I would not want to choose between them."


class HalfMuteReferee(LoopResponder):
    """The loop world, but the referee never writes a verdict line for instructions of even hash (any sample)."""

    def respond(self, body: dict[str, Any]) -> str:
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        v = self.t["referee"].extract(user)
        if v is not None and h(v["instruction"]) % 2 == 0:
            return GARBAGE
        return super().respond(body)


def _cfg(run_dir: Path, url: str, **extra: Any) -> Any:
    return config_from_dict({
        "run_dir": str(run_dir), "seed": 3, "rounds": 1, "final_imitation": False,
        "llm": {"default": {"base_url": url, "model": "scripted", "api_key_env": "LION_TEST_KEY", "rpm": 60000,
                            "tpm": 1e8, "max_in_flight": 4, "max_attempts": 3, "backoff_initial_s": 0.05,
                            "backoff_max_s": 0.2, "timeout_s": 10}},
        "student": {"model": "tiny", "tiny": {"vocab": "char", "hidden": 32, "layers": 1, "heads": 2},
                    "max_length": 256, "max_steps": 2, "per_device_batch_size": 8, "grad_accum": 1,
                    "infer": {"backend": "transformers", "max_new_tokens": 8, "batch_size": 16}},
        "pools": {"train_seed": str(ROOT / "data" / "smoke_seed.jsonl"), "limit": 20},
        **extra,
    })


def _referee_requests(server: Any) -> int:
    return sum(1 for e in server.log if e["kind"] == "ok")


def test_a_referee_that_leaves_pairs_without_verdicts_stops_discrimination(tmp_path, sim_server, monkeypatch):
    monkeypatch.setenv("LION_TEST_KEY", "sk-test")
    server = sim_server(HalfMuteReferee())
    cfg = _cfg(tmp_path / "run", server.base_url)
    with RunContext(cfg, progress=False) as ctx:
        imitation(ctx, 1)
        with pytest.raises(TooManyFailures) as e:
            discrimination(ctx, 1)
    msg = str(e.value)
    assert e.value.exit_code == 4
    assert "round 1 discrimination:" in msg and "referee pairs got no readable verdict after every try" in msg
    assert "more than llm.max_unparsed_rate 5.0%" in msg and "discrimination.done" in msg
    assert "discrimination.referee_attempts (now 3" in msg and "--set llm.max_unparsed_rate=" in msg
    rd = tmp_path / "run" / "round_01"
    assert not (rd / "discrimination.done").exists()
    rows = read_jsonl(rd / "judgements.jsonl")  # the replies are there to look at
    assert any(r["raw"] == GARBAGE and not r["ok"] and r["attempts"] == 3 for r in rows)
    n_unparsed = int(msg.split(": ", 1)[1].split(" of ")[0])
    assert n_unparsed > 0.05 * 20

    sent = _referee_requests(server)
    cfg.llm.max_unparsed_rate = 0.9  # accept the hole: every call replays from the cache
    with RunContext(cfg, progress=False) as ctx:
        m = discrimination(ctx, 1)
    assert (rd / "discrimination.done").exists() and _referee_requests(server) == sent
    assert m["excluded"] == n_unparsed and m["hard"] + m["easy"] + m["excluded"] == 20
    assert all(r["reason"] == "referee verdict unparseable" for r in read_jsonl(rd / "split.jsonl")
               if r["label"] == "excluded")


def test_a_judge_that_leaves_pairs_without_verdicts_stops_the_evaluation(tmp_path, sim_server, monkeypatch):
    from lion.student.tiny import build_tiny

    monkeypatch.setenv("LION_TEST_KEY", "sk-test")
    seeds = [json.loads(line) for line in (ROOT / "data" / "smoke_seed.jsonl").read_text().splitlines()[:12]]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"instruction": r["instruction"]}) + "\n" for r in seeds))
    student = build_tiny(tmp_path / "student", vocab="char", hidden=32, layers=1, heads=2)
    server = sim_server(HalfMuteReferee())
    cfg = _cfg(tmp_path / "run", server.base_url, eval={"questions": str(questions)})
    out = EvalPaths(tmp_path / "run" / "eval" / "tiny")
    with RunContext(cfg, progress=False) as ctx, pytest.raises(TooManyFailures) as e:
        evaluate(ctx, student, out, name="tiny")
    msg = str(e.value)
    assert msg.startswith("evaluation tiny: ") and "judge pairs got no readable verdict" in msg
    assert "summary.json (it is not finished)" in msg and "eval.judge_attempts (now 3" in msg
    assert not out.summary.exists() and out.judgements.exists() and out.table.exists()
    excluded = [t["excluded"] for t in read_jsonl(out.table)]
    assert excluded.count("judge verdict unparseable") > 0.05 * 12

    sent = _referee_requests(server)
    cfg.llm.max_unparsed_rate = 0.9
    with RunContext(cfg, progress=False) as ctx:
        s = evaluate(ctx, student, out, name="tiny")
    assert out.summary.exists() and _referee_requests(server) == sent  # nothing bought twice
    assert s["overall"]["n_excluded"] == excluded.count("judge verdict unparseable")
