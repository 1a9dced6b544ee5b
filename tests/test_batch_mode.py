"""Batch mode (llm.<role>.mode: batch) with the real SDKs against the sim server's batch APIs: OpenAI's Batch API
and Anthropic's Message Batches answer, priced at the batch discount and recorded as mode "batch"; online and batch
results replay each other; items a batch fails or expires go in the next batch (or online); a batch is split at
the size limit; a run killed while its batch is pending re-polls that batch on resume and never resubmits it.

    python -m pytest -q tests/test_batch_mode.py
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lion.sim.scripted import EchoResponder
from lion.sim.server import messages_hash
from lion.teachers.gateway import Gateway

PRICES = {"gpt-5-mini": {"input": 0.25, "output": 2.0}, "claude-haiku-4-5": {"input": 1.0, "output": 5.0}}
BATCH = {"mode": "batch", "batch_poll_s": 0.05}


def _msgs(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"item {i}"}]


def _llm(sim_llm, server, **role):
    return sim_llm(server.base_url, llm={"prices": PRICES}, **{"model": "gpt-5-mini", **role})


@pytest.mark.parametrize("provider, model", [("openai", "gpt-5-mini"), ("anthropic", "claude-haiku-4-5")])
def test_batch_answers_at_the_discount_and_replay_online(tmp_path, sim_server, sim_llm, provider, model):
    server = sim_server(EchoResponder(), strict=True, batch_delay_s=0.2)
    with Gateway(_llm(sim_llm, server, provider=provider, model=model, **BATCH), tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(12)] + [_msgs(0)])
        usage = gw.usage_summary()
        batches = gw.store.batches()
    assert [r.text for r in res] == [f"item {i}" for i in range(12)] + ["item 0"]
    assert [b["n"] for b in batches] == [12] and batches[0]["status"] == "ended"
    (row,) = usage["by"]
    assert (row["mode"], row["calls"], row["cached"]) == ("batch", 12, 1)
    price = PRICES[model]
    online_usd = (row["tokens_in"] * price["input"] + row["tokens_out"] * price["output"]) / 1e6
    assert row["usd"] == pytest.approx(0.5 * online_usd)
    assert usage["total"]["batch_calls"] == 12
    # the same calls online: the cache key does not depend on the mode, nothing is sent again
    before = server.stats.requests
    with Gateway(_llm(sim_llm, server, provider=provider, model=model), tmp_path, progress=False) as gw:
        again = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(12)])
    assert all(r.cached for r in again) and server.stats.requests == before


def test_online_results_replay_in_batch_mode(tmp_path, sim_server, sim_llm):
    server = sim_server(EchoResponder(), batch_delay_s=0.1)
    with Gateway(_llm(sim_llm, server), tmp_path, progress=False) as gw:
        gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(5)])
    with Gateway(_llm(sim_llm, server, **BATCH), tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(8)])
        assert [b["n"] for b in gw.store.batches()] == [3]  # only the 3 calls never made
    assert [r.cached for r in res] == [True] * 5 + [False] * 3
    assert server.batches.created and len(server.batches.created) == 1


def test_failed_and_expired_items_go_in_the_next_batch(tmp_path, sim_server, sim_llm):
    server = sim_server(EchoResponder(), batch_delay_s=0.05, batch_fail_rate=0.2, batch_expire_rate=0.15, seed=3)
    # 35% of the items fail or expire in each batch: with 12 batches allowed, one of 40 items failing every one of
    # them has a chance of 40 x 0.35^12 (about 1 in 80,000); with 6 it was 7% (the test failed now and then)
    with Gateway(_llm(sim_llm, server, batch_attempts=12, **BATCH), tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(40)])
        sizes = [b["n"] for b in gw.store.batches()]
    assert [r.text for r in res] == [f"item {i}" for i in range(40)]
    assert len(sizes) > 1 and sizes[0] == 40 and sizes == sorted(sizes, reverse=True)  # only the failed ones again
    assert max(server.completed_by_hash().values()) == 1  # no item answered (paid) twice
    assert max(r.attempts for r in res) > 1


def test_batch_attempts_then_online_fallback_or_visible_failure(tmp_path, sim_server, sim_llm, capsys):
    server = sim_server(EchoResponder(), batch_delay_s=0.05, batch_expire_rate=0.5, seed=5)
    with Gateway(_llm(sim_llm, server, batch_attempts=1, **BATCH), tmp_path / "a", progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(20)])
    failed = [r for r in res if not r.ok]
    assert failed and all(r.reason == "batch_expired" and r.text is None for r in failed)
    assert f"{len(failed)} of 20 calls failed — {len(failed)} batch_expired" in capsys.readouterr().err
    with Gateway(_llm(sim_llm, server, batch_attempts=1, batch_fallback_online=True, **BATCH), tmp_path / "b",
                 progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(20)])
        modes = {r["mode"]: r["calls"] for r in gw.usage_summary()["by"]}
    assert all(r.ok for r in res) and modes["online"] > 0 and modes["online"] + modes["batch"] == 20


def test_a_phase_is_split_into_batches_within_the_size_limit(sim_server, sim_llm):
    server = sim_server(EchoResponder())
    with Gateway(_llm(sim_llm, server, batch_max_items=7, **BATCH), None, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(20)])
        assert [b["n"] for b in gw.store.batches()] == [7, 7, 6]
    assert all(r.ok for r in res)


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from lion.config import config_from_dict
    from lion.teachers.gateway import Gateway
    url, run_dir, provider, model = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    role = {"base_url": url, "model": model, "provider": provider, "mode": "batch", "batch_poll_s": 0.05,
            "batch_max_items": 10, "max_tokens": 64}
    llm = config_from_dict({"llm": {"default": role}, "student": {"model": "tiny"}, "pools": {"train_seed": "x"}}).llm
    with Gateway(llm, run_dir, progress=False) as gw:
        gw.chat_many("teacher", "imitation", [[{"role": "user", "content": f"item {i}"}] for i in range(25)])
    print("finished", flush=True)
""")


@pytest.mark.parametrize("provider, model", [("openai", "gpt-5-mini"), ("anthropic", "claude-haiku-4-5")])
def test_sigkill_while_batches_are_pending_then_resume_submits_each_batch_once(tmp_path, sim_server, sim_llm,
                                                                            provider, model):
    server = sim_server(EchoResponder(), strict=True, batch_delay_s=5.0)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, server.base_url, str(tmp_path), provider, model],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    recorded: list[str] = []
    while len(recorded) < 3:  # 25 calls in batches of 10: wait until all three are recorded in the run directory
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the child submitted no batch"
        if (tmp_path / "calls.sqlite").exists():
            with sqlite3.connect(tmp_path / "calls.sqlite") as db:
                try:
                    recorded = [r[0] for r in db.execute("select id from batches where status = 'submitted'")]
                except sqlite3.OperationalError:
                    pass
        time.sleep(0.02)
    proc.kill()  # SIGKILL while the three batches are still pending (they end 5 s after creation)
    out, _ = proc.communicate(timeout=30)
    assert b"finished" not in out
    assert server.completed_by_hash() == {}  # nothing answered yet
    created = list(server.batches.created)
    assert sorted(created) == sorted(recorded)

    llm = sim_llm(server.base_url, model=model, provider=provider, batch_max_items=10, **BATCH)
    with Gateway(llm, tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(25)])
        assert {b["status"] for b in gw.store.batches()} == {"ended"}
    assert [r.text for r in res] == [f"item {i}" for i in range(25)]
    assert server.batches.created == created  # re-polled, never resubmitted
    answered = server.completed_by_hash()
    assert set(answered) == {messages_hash(_msgs(i)) for i in range(25)} and set(answered.values()) == {1}


class _Killed(BaseException):
    """Stands for a SIGKILL: not an Exception, so nothing on the way catches it."""


def _kill_between_create_and_record(tmp_path, server, sim_llm, monkeypatch, role: dict, n: int) -> None:
    """A run whose batch the provider created, killed before it wrote the batch's id (the intent stays)."""
    from lion.teachers.store import CallStore

    def die(self, tag, batch_id):
        raise _Killed

    with monkeypatch.context() as m:
        m.setattr(CallStore, "promote", die)
        with pytest.raises(_Killed):
            with Gateway(_llm(sim_llm, server, **role), tmp_path, progress=False) as gw:
                gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(n)])


@pytest.mark.parametrize("provider, model", [("openai", "gpt-5-mini"), ("anthropic", "claude-haiku-4-5")])
def test_a_kill_between_creating_a_batch_and_learning_its_id_finds_the_batch_by_its_tag(tmp_path, sim_server,
                                                                                       sim_llm, monkeypatch,
                                                                                       provider, model):
    """OpenAI: by the tag in the batch's metadata; Anthropic (no metadata): by its size and creation time."""
    server = sim_server(EchoResponder(), strict=True, batch_delay_s=0.3)
    role = {**BATCH, "provider": provider, "model": model}
    _kill_between_create_and_record(tmp_path, server, sim_llm, monkeypatch, role, 6)
    assert len(server.batches.created) == 1
    with sqlite3.connect(tmp_path / "calls.sqlite") as db:
        assert [r[0] for r in db.execute("select status from batches")] == ["submitting"]  # the intent, unnamed
    with Gateway(_llm(sim_llm, server, **role), tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(6)])
        assert [(b["id"], b["status"]) for b in gw.store.batches()] == [(server.batches.created[0], "ended")]
    assert [r.text for r in res] == [f"item {i}" for i in range(6)]
    assert len(server.batches.created) == 1  # found by its tag, not created again
    assert set(server.completed_by_hash().values()) == {1}


def test_an_intent_the_provider_never_received_goes_out_again(tmp_path, sim_server, sim_llm, monkeypatch):
    from lion.teachers.openai_batch import OpenAIBatchAPI

    server = sim_server(EchoResponder(), batch_delay_s=0.05)
    real_submit = OpenAIBatchAPI.submit

    async def die(self, lines, tag):  # killed after the intent was written, before the create request
        raise _Killed

    monkeypatch.setattr(OpenAIBatchAPI, "submit", die)
    with pytest.raises(_Killed):
        with Gateway(_llm(sim_llm, server, **BATCH), tmp_path, progress=False) as gw:
            gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(4)])
    monkeypatch.setattr(OpenAIBatchAPI, "submit", real_submit)
    with Gateway(_llm(sim_llm, server, **BATCH), tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(4)])
        assert [b["status"] for b in gw.store.batches()] == ["ended"]
    assert [r.text for r in res] == [f"item {i}" for i in range(4)] and len(server.batches.created) == 1


def test_a_lookup_that_keeps_failing_holds_the_intent_back_instead_of_paying_twice(tmp_path, sim_server, sim_llm,
                                                                                   monkeypatch):
    """Killed between create and id; on resume the provider's list endpoint is down: the run stops naming the tag
    and keeps the intent (nothing is submitted again); once the API answers, the batch is found and re-polled."""
    from lion.errors import ProviderError
    from lion.teachers.base import TransientError
    from lion.teachers.openai_batch import OpenAIBatchAPI

    server = sim_server(EchoResponder(), strict=True, batch_delay_s=0.3)
    real_find = OpenAIBatchAPI.find
    _kill_between_create_and_record(tmp_path, server, sim_llm, monkeypatch, BATCH, 5)
    lookups = []

    async def down(self, tag, since, *rest):
        lookups.append(tag)
        raise TransientError("503 Service Unavailable", status=503)

    monkeypatch.setattr(OpenAIBatchAPI, "find", down)
    with pytest.raises(ProviderError, match=r"could not look up batch \S+ .*held back rather than paid twice"):
        with Gateway(_llm(sim_llm, server, **BATCH, outage_s=0.3), tmp_path, progress=False) as gw:
            gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(5)])
    assert len(lookups) > 1  # retried through the outage, not given up at the first error
    assert len(server.batches.created) == 1
    with sqlite3.connect(tmp_path / "calls.sqlite") as db:
        assert [r[0] for r in db.execute("select status from batches")] == ["submitting"]  # kept
    monkeypatch.setattr(OpenAIBatchAPI, "find", real_find)
    with Gateway(_llm(sim_llm, server, **BATCH), tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(5)])
    assert [r.text for r in res] == [f"item {i}" for i in range(5)]
    assert len(server.batches.created) == 1 and set(server.completed_by_hash().values()) == {1}


def test_an_anthropic_intent_matched_to_another_clients_batch_goes_out_again_when_it_ends(tmp_path, sim_server,
                                                                                          sim_llm, monkeypatch):
    """Killed before the create request; another client creates a batch of the same size just then. Anthropic keeps
    no metadata, so the resumed run takes that batch for its intent: none of its results carry our custom_ids,
    so our calls go out in a batch of their own, each answered (and paid) once."""
    import anthropic

    from lion.teachers.anthropic_provider import AnthropicBatchAPI

    server = sim_server(EchoResponder(), batch_delay_s=0.2)
    real_submit = AnthropicBatchAPI.submit

    async def die(self, lines, tag):
        raise _Killed

    monkeypatch.setattr(AnthropicBatchAPI, "submit", die)
    role = {**BATCH, "provider": "anthropic", "model": "claude-haiku-4-5"}
    with pytest.raises(_Killed):
        with Gateway(_llm(sim_llm, server, **role), tmp_path, progress=False) as gw:
            gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(3)])
    monkeypatch.setattr(AnthropicBatchAPI, "submit", real_submit)
    other = anthropic.Anthropic(api_key="sk-other", base_url=server.base_url.removesuffix("/v1"))
    foreign = other.messages.batches.create(requests=[
        {"custom_id": f"other-{i}", "params": {"model": "claude-haiku-4-5", "max_tokens": 16,
                                             "messages": [{"role": "user", "content": f"other {i}"}]}}
        for i in range(3)])
    with Gateway(_llm(sim_llm, server, **role), tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(3)])
        ids = [b["id"] for b in gw.store.batches()]
    assert [r.text for r in res] == [f"item {i}" for i in range(3)]
    assert ids[0] == foreign.id and len(ids) == 2  # taken for the intent, then our own batch
    answered = server.completed_by_hash()
    assert all(answered[messages_hash(_msgs(i))] == 1 for i in range(3))
