"""Prompt-cache reads are priced per model family (lion.teachers.pricing): gpt-4.1 at 25% of input, gpt-4o at 50%,
gpt-5 at 10%, Claude at 10% (writes 125%), a model the table does not know at the full input price (never
undercounted); the config's own rate wins; the ledger (against the sim server's prompt cache) and lion.plan use the
same rule, and the plan names the models priced at full input.

    python -m pytest -q tests/test_pricing.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lion.config import Price, config_from_dict
from lion.plan import make_plan
from lion.sim.scripted import EchoResponder
from lion.teachers.gateway import Gateway
from lion.teachers.pricing import cache_rates, tokens_usd

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model, read, write", [
    ("gpt-4.1", 0.25, 1.25), ("gpt-4.1-mini", 0.25, 1.25), ("openai/gpt-4.1-nano", 0.25, 1.25),
    ("gpt-4o", 0.50, 1.25), ("gpt-4o-mini", 0.50, 1.25),
    ("gpt-5-mini", 0.10, 1.25), ("gpt-5", 0.10, 1.25), ("gpt-5-pro", 1.0, 1.25),
    ("o3", 0.25, 1.25), ("o3-mini", 0.50, 1.25), ("o4-mini", 0.25, 1.25),
    ("claude-sonnet-4-5", 0.10, 1.25), ("claude-haiku-4-5", 0.10, 1.25),
    ("my-finetune-v2", 1.0, 1.25), ("gpt-3.5-turbo", 1.0, 1.25),  # unknown: reads at the full input price
])
def test_cached_input_is_priced_per_model_family(model, read, write):
    rates = cache_rates(model, Price(input=2.0, output=8.0))
    assert rates.cached_input == pytest.approx(read * 2.0) and rates.cache_write == pytest.approx(write * 2.0)
    assert (rates.source == "unknown") == (model in ("my-finetune-v2", "gpt-3.5-turbo"))


def test_the_configs_own_rates_win():
    rates = cache_rates("gpt-4.1", Price(input=2.0, output=8.0, cached_input=0.3, cache_write=2.2))
    assert (rates.cached_input, rates.cache_write, rates.source) == (0.3, 2.2, "config")


@pytest.mark.parametrize("model, share", [("gpt-4.1", 0.25), ("gpt-4o", 0.50), ("gpt-5-mini", 0.10),
                                          ("my-finetune-v2", 1.0)])
def test_the_ledger_prices_prompt_cache_reads_at_the_models_rate(sim_server, sim_llm, model, share):
    server = sim_server(EchoResponder())
    price = {"input": 2.0, "output": 8.0}
    llm = sim_llm(server.base_url, llm={"prices": {model: price}}, model=model, max_tokens=16)
    long = [{"role": "user", "content": "Read this closely. " * 300 + "Now answer: what is two plus two?"}]
    with Gateway(llm, None, progress=False) as gw:
        from lion.teachers.base import ChatRequest

        res = gw.chat_many("teacher", "imitation", [ChatRequest(long), ChatRequest(long, sample=1)])
        (row,) = gw.usage_summary()["by"]
    assert all(r.ok for r in res)
    read = row["tokens_cache_read"]
    assert read >= 1024  # the second call read the first's prefix from the server's prompt cache
    plain = row["tokens_in"] - read
    want = (plain * 2.0 + read * 2.0 * share + row["tokens_out"] * 8.0) / 1e6
    assert row["usd"] == pytest.approx(want, rel=1e-9)
    assert row["usd"] == pytest.approx(tokens_usd(Price(**price), model, row["tokens_in"], row["tokens_out"], read))


def test_the_plan_uses_the_same_rule_and_names_models_priced_at_full_input(tmp_path):
    cfg = config_from_dict({
        "run_dir": str(tmp_path / "run"), "rounds": 1, "final_imitation": False,
        "llm": {"default": {"base_url": "https://api.example.invalid/v1", "model": "gpt-4.1", "max_tokens": 256},
                "generator": {"model": "my-finetune-v2"},
                "prices": {"gpt-4.1": {"input": 2.0, "output": 8.0}, "my-finetune-v2": {"input": 1.0, "output": 1.0}}},
        "student": {"model": "tiny"},
        "pools": {"train_seed": str(ROOT / "data" / "smoke_seed.jsonl"), "limit": 10},
        "generation": {"n_hard": 3, "n_easy": 3, "batch_size": 8},
    })
    plan = make_plan(cfg, "t", gpu_gb=None)
    notes = "\n".join(plan.assumptions)
    assert "gpt-4.1: prompt-cache reads at 25% of input" in notes
    assert "my-finetune-v2: no cached-input rate known, so prompt-cache reads are priced at the full input price" \
        in notes
    for s in plan.steps:
        model = cfg.llm.role(s.role).model
        assert s.usd_online == pytest.approx(tokens_usd(cfg.llm.prices[model], model, s.tokens_in, s.tokens_out))
