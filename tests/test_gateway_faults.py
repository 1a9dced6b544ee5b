"""Injected faults (500/503/timeout/drop/malformed at 20%): every item ends answered or failed with a reason;
an error is never returned as answer text; failures are not cached; a 400 fails only its item.

    python -m pytest -q tests/test_gateway_faults.py
"""

from __future__ import annotations

import sqlite3

from lion.sim.scripted import ScriptedResponder
from lion.teachers.gateway import Gateway

N = 60


def _msgs(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i}"}]


def test_twenty_percent_faults_answer_or_fail_with_reason(tmp_path, sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="ANSWER: {user}"), latency_ms=5, fault_rate=0.2, seed=4,
                        hang_s=10)
    llm = sim_llm(server.base_url, max_attempts=2, timeout_s=1.0, max_in_flight=20)
    with Gateway(llm, tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(N)])
    kinds = {k for k in server.stats.by_kind if k.startswith("fault:")}
    assert kinds == {"fault:500", "fault:503", "fault:timeout", "fault:drop", "fault:malformed"}, kinds
    ok = [i for i, r in enumerate(res) if r.ok]
    failed = [i for i, r in enumerate(res) if not r.ok]
    for i in ok:
        assert res[i].text == f"ANSWER: question {i}" and res[i].error is None and res[i].finish_reason == "stop"
    for i in failed:
        r = res[i]
        assert r.text is None and r.finish_reason is None
        assert r.error and r.error.startswith("gave up after 2 attempts:"), r.error
    # faults are drawn per (seed, request, attempt): with seed 4, 15 first attempts fail, 5 of them twice
    assert len(failed) == 5 and all(r.attempts == 2 for r in (res[i] for i in failed))
    assert sum(1 for r in res if r.ok and r.attempts == 2) == 10
    with sqlite3.connect(tmp_path / "calls.sqlite") as db:
        assert db.execute("select count(*) from calls").fetchone()[0] == len(ok)
        assert db.execute("select count(*) from failures").fetchone()[0] == len(failed)

    server.fault_rate = 0.0  # the service recovers; the failed items are tried again, the others replayed
    before = server.stats.completed
    with Gateway(llm, tmp_path, progress=False) as gw:
        again = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(N)])
        total = gw.usage_summary()["total"]
    assert [r.text for r in again] == [f"ANSWER: question {i}" for i in range(N)]
    assert server.stats.completed - before == len(failed)
    assert [i for i, r in enumerate(again) if not r.cached] == failed
    assert max(server.completed_by_hash().values()) == 1  # every question answered by the server exactly once
    assert total["calls"] == N and total["failed"] == len(failed)


def test_context_too_long_fails_its_item_fast(sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="fine"), context_tokens=200)
    gw = Gateway(sim_llm(server.base_url, max_tokens=64), None, progress=False)
    res = gw.chat_many("teacher", "imitation", [_msgs(0), [{"role": "user", "content": "x" * 2000}], _msgs(2)])
    assert [r.ok for r in res] == [True, False, True]
    assert res[1].attempts == 1 and "maximum context length" in res[1].error and res[1].text is None
    gw.close()
