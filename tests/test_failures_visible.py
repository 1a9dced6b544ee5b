"""Failures you can see: a one-line summary per batch of calls (by reason, one redacted example) on stderr and in
RUN/gateway.log; exhausted quota stops the run at once naming the role and key; an outage keeps items backing off
(beyond max_attempts) up to llm.<role>.outage_s; a phase whose failed share exceeds llm.max_failure_rate stops
without its .done marker, and nothing is trained on the partial Train Pool.

    python -m pytest -q tests/test_failures_visible.py
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lion.config import config_from_dict
from lion.context import RunContext
from lion.errors import LionError, ProviderError, TooManyFailures
from lion.imitation import imitation
from lion.sim.scripted import EchoResponder
from lion.sim.server import SimServer
from lion.teachers.gateway import Gateway

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loop_world import LoopResponder, h  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _msgs(i: int, n: int = 1) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"q{i} " + "x" * n}]


def test_a_batch_with_failures_prints_one_line_by_reason_and_logs_it(tmp_path, sim_server, sim_llm, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("SIM_KEY", "sk-secret-abcdef123456")
    server = sim_server(EchoResponder(), context_tokens=100)
    llm = sim_llm(server.base_url, api_key_env="SIM_KEY", max_tokens=16)
    with Gateway(llm, tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i, 600 if i % 4 == 0 else 1) for i in range(12)])
    assert [r.ok for r in res] == [i % 4 != 0 for i in range(12)]
    assert {r.reason for r in res if not r.ok} == {"http_400"}
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "calls failed" in x)
    assert line.startswith("llm.teacher (imitation, sim, online): 3 of 12 calls failed — 3 http_400; e.g. ")
    assert "maximum context length" in line and "abcdef123456" not in err
    assert line in (tmp_path / "gateway.log").read_text()


def test_no_line_when_nothing_failed(tmp_path, sim_server, sim_llm, capsys):
    server = sim_server(EchoResponder())
    with Gateway(sim_llm(server.base_url), tmp_path, progress=False) as gw:
        assert all(r.ok for r in gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(3)]))
    assert "failed" not in capsys.readouterr().err


def test_exhausted_quota_stops_at_once_naming_role_and_key(sim_server, sim_llm):
    server = sim_server(EchoResponder(), quota_calls=5)
    with Gateway(sim_llm(server.base_url, max_in_flight=4, api_key_env="MY_OPENAI_KEY"), None, progress=False) as gw:
        with pytest.raises(ProviderError) as e:
            gw.chat_many("generator", "generation", [_msgs(i) for i in range(200)])
    assert "llm.generator" in str(e.value) and "$MY_OPENAI_KEY" in str(e.value) and "quota" in str(e.value)
    assert server.stats.by_kind["quota"] <= 4  # the calls in flight, not 195 refusals at the RPM pace


def test_an_outage_keeps_items_backing_off_beyond_max_attempts(sim_server, sim_llm):
    server = sim_server(EchoResponder(), fault_rate=1.0, faults=["503"])
    llm = sim_llm(server.base_url, max_attempts=2, outage_s=30.0, backoff_initial_s=0.02, backoff_max_s=0.1)
    def come_back() -> None:  # the service comes back once every item has failed 3 times (> max_attempts)
        deadline = time.monotonic() + 15
        while server.stats.faults < 3 * 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.fault_rate = 0.0

    threading.Thread(target=come_back, daemon=True).start()
    t0 = time.monotonic()
    with Gateway(llm, None, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(6)])
    assert all(r.ok for r in res) and max(r.attempts for r in res) > 2
    assert time.monotonic() - t0 < 20 and gw.stats["outage_retries"] > 0


def test_after_outage_s_of_continuous_failure_items_count_as_failed(sim_server, sim_llm):
    server = sim_server(EchoResponder(), fault_rate=1.0, faults=["503"])
    llm = sim_llm(server.base_url, max_attempts=2, outage_s=0.5, backoff_initial_s=0.02, backoff_max_s=0.1)
    t0 = time.monotonic()
    with Gateway(llm, None, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(4)])
    assert not any(r.ok for r in res) and all(r.reason == "http_503" for r in res)
    assert all(r.attempts > 2 for r in res) and 0.5 <= time.monotonic() - t0 < 10


class RefusingTeacher:
    """The loop world, except that the teacher refuses (a 400) every instruction whose hash is divisible by 4."""

    def __init__(self) -> None:
        self.inner = LoopResponder()

    def respond(self, body: dict[str, Any]) -> str:
        user = body["messages"][-1]["content"]
        v = self.inner.t["teacher"].extract(user)
        if v is not None and h(v["request"]) % 4 == 0:
            raise LionError("refused")
        return self.inner.respond(body)


def test_imitation_stops_without_its_marker_when_too_many_answers_failed(tmp_path):
    server = SimServer(RefusingTeacher())
    url = server.start()
    try:
        def cfg(rate: float) -> Any:
            return config_from_dict({
                "run_dir": str(tmp_path / "run"),
                "llm": {"default": {"base_url": url, "model": "scripted", "max_attempts": 1, "rpm": 60000,
                                    "tpm": 1e8}, "max_failure_rate": rate},
                "student": {"model": "tiny", "tiny": {"vocab": "char", "hidden": 16, "layers": 1, "heads": 2},
                            "max_length": 128, "max_steps": 2, "per_device_batch_size": 4, "grad_accum": 1},
                "pools": {"train_seed": str(ROOT / "data" / "smoke_seed.jsonl"), "limit": 12},
            })

        with RunContext(cfg(0.01), progress=False) as ctx, pytest.raises(TooManyFailures) as e:
            imitation(ctx, 1)
        rp = ctx.run.round(1)
        assert not rp.done("imitation").exists() and not rp.student.exists()
        msg = str(e.value)
        assert "round 1 imitation" in msg and "more than llm.max_failure_rate 1.0%" in msg
        assert "nothing was trained on the partial Train Pool" in msg and "Run the same command again" in msg
        assert e.value.exit_code == 4
        with RunContext(cfg(0.5), progress=False) as ctx:  # the user's say-so: accept the hole
            metrics = imitation(ctx, 1)
        assert rp.done("imitation").exists() and 0 < metrics["n_failed_answers"] < 12
    finally:
        server.stop()
