"""The native Anthropic provider (the real anthropic SDK) against the sim server's /v1/messages: system prompt,
usage with prompt-cache reads and writes priced at their own rates, 529 overloaded and 429 retried (Retry-After
honoured), auth and credit errors stop the run naming the role and the key variable, never showing the key.

    python -m pytest -q tests/test_anthropic_provider.py
"""

from __future__ import annotations

import pytest

from lion.errors import ProviderError
from lion.sim.scripted import EchoResponder, ScriptedResponder
from lion.teachers.gateway import Gateway

LONG_SYSTEM = "You are a careful teacher. " * 200  # ~5,400 characters: above the 1,024-token cache minimum


def _msgs(i: int, system: str = "Be brief.") -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": f"question {i}"}]


def _claude(**kw):
    return {"provider": "anthropic", "model": "claude-sonnet-4-5", **kw}


def test_messages_api_with_system_prompt_and_prompt_cache_priced_apart(tmp_path, sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="reply to {user}"), strict=True)
    prices = {"claude-sonnet-4-5": {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75}}
    llm = sim_llm(server.base_url, llm={"prices": prices}, **_claude(extra_body={"cache_control": {"type": "ephemeral"}}))
    with Gateway(llm, tmp_path, progress=False) as gw:
        first = gw.chat_many("teacher", "imitation", [_msgs(0, LONG_SYSTEM)])
        later = gw.chat_many("teacher", "imitation", [_msgs(i, LONG_SYSTEM) for i in (1, 2)])
        total = gw.usage_summary()["total"]
    assert first[0].text == "reply to question 0" and first[0].finish_reason == "stop"
    assert all(r.ok for r in later)
    entries = [e for e in server.log if e["kind"] == "ok"]
    write, reads = entries[0]["cache_write_tokens"], [e["cached_tokens"] for e in entries[1:]]
    assert write > 1024 and all(r > 1024 for r in reads)  # the shared system prompt is read from the cache
    assert total["tokens_cache_write"] == write and total["tokens_cache_read"] == sum(reads)
    assert 0.5 < total["cached_share"] < 1
    plain = total["tokens_in"] - total["tokens_cache_read"] - total["tokens_cache_write"]
    want = (plain * 3.0 + total["tokens_cache_read"] * 0.3 + write * 3.75 + total["tokens_out"] * 15.0) / 1e6
    assert total["usd"] == pytest.approx(want, rel=1e-6)


def test_overloaded_529_and_rate_limits_are_retried(sim_server, sim_llm):
    # a bucket of one request: the 4 workers starting together meet 429s however slow the machine is
    server = sim_server(EchoResponder(), fault_rate=0.3, faults=["503"], seed=1, rpm=600, burst_s=0.2)
    # the client allows more than the server: the server's 429s (Retry-After) set the pace
    llm = sim_llm(server.base_url, **_claude(max_attempts=20, max_in_flight=4, rpm=6000))
    with Gateway(llm, None, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(24)])
    assert [r.text for r in res] == [f"question {i}" for i in range(24)]
    assert server.stats.by_status.get(529, 0) > 0  # Anthropic's overloaded_error, retried
    assert server.stats.rate_limited > 0 and gw.stats["rate_limited"] > 0  # 429 with Retry-After: a cool-down


def test_wrong_key_stops_at_once_naming_the_variable_not_the_key(sim_server, sim_llm, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong-0123456789")
    server = sim_server(EchoResponder(), api_key="sk-ant-right-9876543210")
    with Gateway(sim_llm(server.base_url, **_claude()), None, progress=False) as gw:
        with pytest.raises(ProviderError) as e:
            gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(20)])
    text = str(e.value)
    assert "llm.teacher" in text and "$ANTHROPIC_API_KEY" in text and "0123456789" not in text
    assert server.stats.by_kind["auth"] <= 16  # the calls in flight at most, not one per item


def test_no_credit_left_stops_the_run(sim_server, sim_llm):
    server = sim_server(EchoResponder(), quota_calls=3)
    with Gateway(sim_llm(server.base_url, **_claude(max_in_flight=1)), None, progress=False) as gw:
        with pytest.raises(ProviderError, match="no quota or credit left"):
            gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(10)])
        assert gw.usage_summary()["total"]["calls"] == 3  # the calls answered before are kept (and cached)
