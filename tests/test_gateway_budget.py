"""Budget cap: stops before the cap would be exceeded, keeps what was done, resumes once the cap is raised.

    python -m pytest -q tests/test_gateway_budget.py
"""

from __future__ import annotations

import pytest

from lion.errors import BudgetExceeded
from lion.sim.scripted import ScriptedResponder
from lion.teachers.gateway import Gateway

N = 20
PRICES = {"sim": {"input": 1000.0, "output": 1000.0}}  # $0.001 per token: easy arithmetic


def _msgs(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"item {i:02d}"}]


def test_usd_cap_stops_cleanly_and_resumes_after_raising_it(tmp_path, sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="ANSWER: {user}"), latency_ms=2)
    cap = 0.1
    llm = sim_llm(server.base_url, max_tokens=20, max_in_flight=1, llm={"prices": PRICES, "budget_usd": cap})
    with Gateway(llm, tmp_path, progress=False) as gw:
        with pytest.raises(BudgetExceeded, match=r"spent \$0\.0780 of \$0\.1000; raise llm.budget_usd"):
            gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(N)])
        spent = gw.usage_summary()["total"]
    # each call: 9 prompt + 4 completion tokens = $0.013 spent; $0.029 reserved first (9 + max_tokens 20).
    # After 5 calls 0.065 + 0.029 <= 0.1: a 6th starts; after 6, 0.078 + 0.029 > 0.1: stop, under the cap.
    done = spent["calls"]
    assert done == 6 and server.stats.completed == 6
    assert spent["usd"] == pytest.approx(0.078) and spent["usd"] <= cap

    llm.budget_usd = 1.0  # the user raises the cap and re-runs the same command
    with Gateway(llm, tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(N)])
        total = gw.usage_summary()["total"]
    assert [r.text for r in res] == [f"ANSWER: item {i:02d}" for i in range(N)]
    assert sum(r.cached for r in res) == done
    assert max(server.completed_by_hash().values()) == 1 and server.stats.completed == N
    assert total["usd"] == pytest.approx(N * 0.013) and total["calls"] == N


def test_token_cap(sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="ANSWER: {user}"))
    llm = sim_llm(server.base_url, max_tokens=20, max_in_flight=3, llm={"budget_tokens": 100})
    gw = Gateway(llm, None, progress=False)
    with pytest.raises(BudgetExceeded, match=r"used \d+ of 100 tokens; raise llm.budget_tokens"):
        gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(N)])
    total = gw.usage_summary()["total"]
    # 13 tokens per call, 29 reserved per call in flight: 3 in flight from the start, then one more each time
    # spent + reserved + 29 <= 100 still holds
    assert total["tokens_in"] + total["tokens_out"] <= 100
    assert 3 <= server.stats.completed == total["calls"] <= 7
    gw.close()
