"""Gateway call cache: replays cost zero HTTP calls (counted by the sim server), across Gateway instances.

    python -m pytest -q tests/test_gateway_cache.py
"""

from __future__ import annotations

import asyncio
import sqlite3

from lion.sim.scripted import ScriptedResponder
from lion.teachers.base import ChatRequest
from lion.teachers.gateway import Gateway


def _reqs(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"item {i}"}] for i in range(n)]


def test_replay_makes_zero_http_calls(tmp_path, sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="ANSWER: {user}"), latency_ms=5)
    llm = sim_llm(server.base_url)
    with Gateway(llm, tmp_path, progress=False) as gw:
        first = gw.chat_many("teacher", "imitation", _reqs(30))
    assert [r.text for r in first] == [f"ANSWER: item {i}" for i in range(30)]
    assert all(r.ok and not r.cached and r.attempts == 1 for r in first)
    assert server.stats.requests == 30

    with Gateway(llm, tmp_path, progress=False) as gw:  # a fresh process would see the same files
        again = gw.chat_many("teacher", "imitation", _reqs(30))
        summary = gw.usage_summary()
    assert server.stats.requests == 30, "a cache replay must not reach the server"
    assert [r.text for r in again] == [r.text for r in first]
    assert all(r.cached and r.attempts == 0 for r in again)
    row = summary["by"][0]
    assert (row["role"], row["model"], row["phase"], row["calls"], row["cached"]) == ("teacher", "sim", "imitation", 30, 30)
    assert row["tokens_in"] == sum(r.prompt_tokens for r in first)
    assert (tmp_path / "usage.json").is_file()
    with sqlite3.connect(tmp_path / "calls.sqlite") as db:
        assert db.execute("select count(*) from calls").fetchone()[0] == 30


def test_key_covers_params_and_sample_and_batch_duplicates_are_sent_once(sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="A"), latency_ms=1)
    gw = Gateway(sim_llm(server.base_url), None, progress=False)  # in-memory cache
    msgs = [{"role": "user", "content": "same"}]
    reqs = [ChatRequest(msgs), ChatRequest(msgs), ChatRequest(msgs, sample=1), ChatRequest(msgs, temperature=0.0),
            ChatRequest(msgs, max_tokens=7), msgs]
    res = gw.chat_many("generator", "generation", reqs)
    assert all(r.ok for r in res)
    assert server.stats.requests == 4  # (default) x3 collapse to one call; sample / temperature / max_tokens differ
    assert [r.cached for r in res] == [False, True, False, False, False, True]
    # the referee's defaults (its built-in temperature 0, no top_p, same model/server/max_tokens) make the very call
    # the generator already made with temperature 0 above: the key is about the call, not the role, so it replays
    assert gw.chat_many("referee", "discrimination", [msgs])[0].cached
    assert server.stats.requests == 4
    assert not gw.chat_many("referee", "discrimination", [ChatRequest(msgs, top_p=0.5)])[0].cached
    assert server.stats.requests == 5
    gw.close()


def test_chat_many_inside_a_running_event_loop(sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="ok {user}"))
    gw = Gateway(sim_llm(server.base_url), None, progress=False)

    async def inside() -> list:
        sync = gw.chat_many("teacher", "p", _reqs(3))  # runs on a helper thread
        direct = await gw.achat_many("teacher", "p", _reqs(4))
        return sync + direct

    res = asyncio.run(inside())
    assert [r.text for r in res] == [f"ok item {i}" for i in (0, 1, 2, 0, 1, 2, 3)]
    assert [r.cached for r in res] == [False] * 3 + [True] * 3 + [False]
    assert server.stats.requests == 4
    gw.close()


def test_cache_namespace_replaces_the_endpoint_in_the_key(tmp_path, sim_server, sim_llm):
    first = sim_server(ScriptedResponder(default="one {user}"))
    second = sim_server(ScriptedResponder(default="two {user}"))  # another port: another base_url
    for server, replayed in ((first, False), (second, True)):
        with Gateway(sim_llm(server.base_url, cache_namespace="sim"), tmp_path, progress=False) as gw:
            res = gw.chat_many("teacher", "imitation", _reqs(3))
        assert [r.cached for r in res] == [replayed] * 3
        assert [r.text for r in res] == [f"one item {i}" for i in range(3)]
    assert second.stats.requests == 0
    with Gateway(sim_llm(second.base_url), tmp_path, progress=False) as gw:  # no namespace: the URL counts
        assert [r.text for r in gw.chat_many("teacher", "imitation", _reqs(1))] == ["two item 0"]


def test_calls_cached_when_lion_always_sent_top_p_replay_with_top_p_unset(tmp_path, sim_server, sim_llm):
    """Before 2026-12 every call carried top_p (default 1.0) and its key with it; an unset top_p samples the same,
    so a run directory from then replays its calls instead of buying them again. Another top_p is another call."""
    from lion.answers import AnswerStore, equivalent_identities

    server = sim_server(ScriptedResponder(default="ANSWER: {user}"), latency_ms=1)
    with Gateway(sim_llm(server.base_url, top_p=1.0), tmp_path, progress=False) as gw:  # as lion sent it then
        gw.chat_many("teacher", "imitation", _reqs(5))
    assert server.stats.requests == 5
    with Gateway(sim_llm(server.base_url), tmp_path, progress=False) as gw:  # top_p unset now: not sent
        again = gw.chat_many("teacher", "imitation", _reqs(5))
        other = gw.chat_many("teacher", "imitation", [ChatRequest(_reqs(1)[0], top_p=0.9)])
    assert all(r.cached for r in again) and not other[0].cached
    assert server.stats.requests == 6

    # the teacher's answer store: answers stored under the identity with p=1.0 are found under p=None
    store = AnswerStore(tmp_path / "teacher_answers.jsonl", tmp_path / "calls.answers.sqlite")
    old, new = "openai|gpt-4o-mini|t=0.0|p=1.0|max=64", "openai|gpt-4o-mini|t=0.0|p=None|max=64"
    store.put("a1", old, "forty-two", "stop")
    assert equivalent_identities(new) == (new, old) and equivalent_identities(old) == (old,)
    row = store.get("a1", new)
    assert row is not None and row["answer"] == "forty-two" and store.has("a1", new)
    assert store.get("a1", "openai|gpt-4o-mini|t=0.7|p=None|max=64") is None  # another temperature: not the same
    store.close()
