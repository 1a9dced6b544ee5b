"""Billed replies without text, with the real SDKs against the sim server's billed faults (lion.sim.server
BILLED_FAULTS: content null or "" after reasoning only, an empty choices list, an Anthropic thinking block only):
every token the server billed reaches the ledger (by role, model, phase and mode, in USD) and the budget; each such
call fails at once with reason no_text (sent once, never retried), visible in the failure line and RUN/gateway.log;
online and in batch mode, OpenAI and Anthropic alike.

    python -m pytest -q tests/test_gateway_billed_empty.py
"""

from __future__ import annotations

import collections

import pytest

from lion.errors import BudgetExceeded
from lion.sim.scripted import ScriptedResponder
from lion.sim.server import BILLED_FAULTS
from lion.teachers.gateway import Gateway

N = 54
PRICES = {"gpt-5-mini": {"input": 0.25, "output": 2.0}, "claude-sonnet-4-5": {"input": 3.0, "output": 15.0}}
BATCH = {"mode": "batch", "batch_poll_s": 0.05}


def _msgs(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i}: what is {i} plus {i}?"}]


def _llm(sim_llm, server, llm=None, **role):
    return sim_llm(server.base_url, llm={"prices": PRICES, **(llm or {})}, max_attempts=8, **role)


def _billed_faults(server) -> collections.Counter[str]:
    """How many times the server sent a billed reply without text, per request (messages hash)."""
    return collections.Counter(e["hash"] for e in server.log if e["kind"] in {f"fault:{f}" for f in BILLED_FAULTS})


@pytest.mark.parametrize("provider, model, mode", [
    ("openai", "gpt-5-mini", "online"), ("anthropic", "claude-sonnet-4-5", "online"),
    ("openai", "gpt-5-mini", "batch"), ("anthropic", "claude-sonnet-4-5", "batch"),
])
def test_billed_replies_without_text_are_charged_once_and_fail_with_their_reason(
        tmp_path, sim_server, sim_llm, capsys, provider, model, mode):
    server = sim_server(ScriptedResponder(default="The answer to {user} is below."), fault_rate=1 / 9,
                        faults=BILLED_FAULTS, seed=7, batch_delay_s=0.05)
    role = {"provider": provider, "model": model, "max_tokens": 96, **(BATCH if mode == "batch" else {})}
    with Gateway(_llm(sim_llm, server, **role), tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(N)])
        total = gw.usage_summary()["total"]
        (row,) = gw.usage_summary()["by"]
        spent_tokens = gw._budget.spent_tokens
    billed_in, billed_out = server.billed_tokens()
    faulted = _billed_faults(server)
    assert faulted, "the seed must strike some requests with a billed fault"
    ledger = (total["tokens_in"], total["tokens_out"])
    assert ledger == (billed_in, billed_out), \
        f"server billed {billed_in:,} prompt + {billed_out:,} completion tokens; the ledger holds {ledger[0]:,} + " \
        f"{ledger[1]:,}"
    price = PRICES[model]
    usd = (billed_in * price["input"] + billed_out * price["output"]) / 1e6 * (0.5 if mode == "batch" else 1.0)
    assert total["usd"] == pytest.approx(usd, abs=1e-6)  # usage.json rounds to 6 decimals
    assert (row["role"], row["model"], row["phase"], row["mode"]) == ("teacher", model, "imitation", mode)
    assert spent_tokens == billed_in + billed_out  # the budget counts them too

    failed = [r for r in res if not r.ok]
    assert len(failed) == len(faulted) == total["failed"]
    assert all(r.reason == "no_text" and r.text is None and r.prompt_tokens > 0 for r in failed)
    assert all("the model returned no text" in r.error for r in failed), failed[0].error
    assert all(r.attempts == 1 for r in failed)
    assert max(faulted.values()) == 1  # each such call was sent once: never paid for again by a retry
    assert not set(faulted) & set(server.completed_by_hash())  # and never retried into an answer
    assert [r.text for r in res if r.ok] == [f"The answer to {_msgs(i)[0]['content']} is below."
                                            for i, r in enumerate(res) if r.ok]
    err = capsys.readouterr().err
    line = f"{len(failed)} of {N} calls failed — {len(failed)} no_text"
    assert line in err and "tokens billed for them" in err and "the model returned no text" in err
    assert line in (tmp_path / "gateway.log").read_text()

    with Gateway(_llm(sim_llm, server, **role), tmp_path, progress=False) as gw:  # a resumed run's budget
        assert gw._budget.spent_tokens == billed_in + billed_out


def test_the_budget_cap_sees_the_tokens_of_replies_without_text(tmp_path, sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="fine"), fault_rate=0.3, faults=("no_text",), seed=2)
    with Gateway(_llm(sim_llm, server, model="gpt-5-mini", max_tokens=64), tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(20)])
    assert any(r.reason == "no_text" for r in res)
    billed = sum(server.billed_tokens())
    # room for everything billed so far, and not for one more call (its worst case: prompt + max_tokens)
    llm = _llm(sim_llm, server, model="gpt-5-mini", max_tokens=64, llm={"budget_tokens": billed + 40})
    with Gateway(llm, tmp_path, progress=False) as gw, pytest.raises(BudgetExceeded, match="llm.budget_tokens"):
        gw.chat_many("teacher", "imitation", [_msgs(100)])
    assert sum(server.billed_tokens()) == billed  # the call was not started


def test_a_reply_with_neither_usage_nor_text_is_retried_as_malformed(sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="fine"), fault_rate=0.5, faults=("malformed",), seed=1)
    with Gateway(_llm(sim_llm, server, model="gpt-5-mini"), None, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(12)])
        total = gw.usage_summary()["total"]
    assert all(r.ok and r.text == "fine" for r in res) and any(r.attempts > 1 for r in res)
    assert (total["tokens_in"], total["tokens_out"]) == server.billed_tokens()


def test_replies_without_text_count_toward_the_phase_failure_gate(tmp_path, sim_server, monkeypatch):
    from lion.answers import buy_teacher_answers
    from lion.config import config_from_dict
    from lion.context import RunContext
    from lion.errors import TooManyFailures
    from lion.failures import check_failures
    from lion.records import Instruction

    server = sim_server(ScriptedResponder(default="fine"), fault_rate=0.25, faults=("no_text",), seed=3)
    cfg = config_from_dict({
        "run_dir": str(tmp_path / "run"), "student": {"model": "tiny"}, "pools": {"train_seed": "x"},
        "llm": {"default": {"base_url": server.base_url, "model": "gpt-5-mini", "max_tokens": 64,
                            "backoff_initial_s": 0.01}},
    })
    pool = [Instruction(f"Question number {i}: what is {i} times {i}?") for i in range(40)]
    with RunContext(cfg, progress=False) as ctx:
        counts = buy_teacher_answers(ctx, pool, "imitation")
    assert counts["failed"] == sum(_billed_faults(server).values()) > 0.01 * len(pool)
    with pytest.raises(TooManyFailures, match=r"teacher answers to the Train Pool failed"):
        check_failures(cfg, 1, "imitation", "teacher answers to the Train Pool", counts["failed"], len(pool))
    usage = (tmp_path / "run" / "gateway.log").read_text()
    assert f"{counts['failed']} no_text" in usage
