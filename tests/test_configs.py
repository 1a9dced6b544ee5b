"""Every ready config in configs/ loads and validates (training_args against TrainingArguments included), prices
every model it budgets, and states its per-round estimate in its header.

    python -m pytest -q tests/test_configs.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lion.config import ROLES, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_ready_configs_for_today() -> None:
    names = {p.name for p in CONFIGS}
    assert {"smoke.yaml", "qwen2.5-7b-lora.yaml", "qwen2.5-7b-fsdp-8gpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_prices_what_it_budgets(path: Path) -> None:
    cfg = load_config(path)
    if cfg.llm.budget_usd is not None and not cfg.sim.enabled:
        for role in ROLES[:3]:
            model = cfg.llm.role(role).model
            assert model in cfg.llm.prices, f"{path.name}: llm.{role}.model {model} has no price"
    if cfg.student.fsdp:
        assert "transformer_layer_cls_to_wrap" not in cfg.student.fsdp_config, "the wrap class comes from the model"


@pytest.mark.parametrize("name", ["qwen2.5-7b-lora.yaml", "qwen2.5-7b-fsdp-8gpu.yaml"])
def test_2026_configs_use_hub_ids_chat_templates_and_state_their_estimate(name: str) -> None:
    path = ROOT / "configs" / name
    cfg = load_config(path)
    assert cfg.student.model == "Qwen/Qwen2.5-7B-Instruct" and cfg.student.prompt_format == "chat_template"
    assert cfg.pools.train_seed == "tatsu-lab/alpaca" and cfg.student.bf16
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert re.search(r"Estimate per round", header)
    assert re.search(r"round 1: .*= ~\d+K calls, ~\$\d+", header) and re.search(r"~\d+ h", header)
    assert re.search(r"round r >= 2: .*~\d+K calls, ~\$\d+, ~\d+(\.\d)? (h|min)", header)
    # docs/efficacy.md: the student's loss was level with or better than the referee in every world, at a fifth of
    # its spend; the header's estimate must say what the paper's referee would add
    assert cfg.discrimination.selector == "student_loss" and "selector: referee) add" in header


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_configs_name_no_file_a_user_lacks_and_say_batch_mode_exists(path: Path) -> None:
    """A clean clone has no ../shared beside it: no config sets or suggests such a path; and batch mode exists."""
    text = path.read_text()
    assert "../shared" not in text
    assert "not used by lion" not in text
    cfg = load_config(path)
    for p in cfg.generation.decontaminate:
        assert (ROOT / p).exists(), f"{path.name}: generation.decontaminate names {p}, not in the repository"
