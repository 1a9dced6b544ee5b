"""What an optimizer step holds (rows, examples, tokens), logged when training starts and kept in the metrics;
student.examples_per_step derives the accumulation; the paper-recipe configs give the paper's 128 examples per step.

    python -m pytest -q tests/test_student_batching.py
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
from conftest import student_fact_examples

from lion.config import StudentConfig, config_from_dict, load_config
from lion.errors import ConfigError
from lion.student.batching import batch_plan
from lion.student.train import train_student

ROOT = Path(__file__).resolve().parents[1]


def test_plan_counts_examples_not_rows_and_derives_the_accumulation() -> None:
    rows = [3, 3, 2, 4] * 25  # 100 packed rows, 300 examples: 3 per row
    toks = [900] * 100
    plan = batch_plan(StudentConfig(model="m", packing=True, per_device_batch_size=8, grad_accum=16), rows, toks, 1)
    assert (plan.rows_per_step, plan.examples_per_row, plan.examples_per_step) == (128, 3.0, 384.0)  # not 128
    assert plan.tokens_per_step == 128 * 900 and plan.n_examples == 300 and plan.n_rows == 100
    assert plan.optimizer_steps == math.ceil(3 * math.ceil(100 / 8 / 16))  # epochs 3
    derived = batch_plan(StudentConfig(model="m", packing=True, per_device_batch_size=4, grad_accum=0,
                                       examples_per_step=128), rows, toks, 1)
    assert derived.grad_accum == round(128 / 12) == 11 and derived.examples_per_step == 132.0
    eight = batch_plan(StudentConfig(model="m", per_device_batch_size=4, grad_accum=0, examples_per_step=128),
                       [1] * 1000, [200] * 1000, 8)  # unpacked: exactly 128 = 4 x 4 x 8
    assert eight.grad_accum == 4 and eight.examples_per_step == 128.0 and eight.rows_per_step == 128
    assert eight.optimizer_steps == math.ceil(3 * math.ceil(math.ceil(1000 / 32) / 4))


def test_grad_accum_and_examples_per_step_are_one_or_the_other() -> None:
    base = {"pools": {"train_seed": "x"}}
    with pytest.raises(ConfigError, match=r"student\.grad_accum: 0 derives it from student\.examples_per_step"):
        config_from_dict({**base, "student": {"model": "m", "grad_accum": 0}})
    with pytest.raises(ConfigError, match=r"student\.examples_per_step: 128 needs student\.grad_accum: 0"):
        config_from_dict({**base, "student": {"model": "m", "examples_per_step": 128}})
    cfg = config_from_dict({**base, "student": {"model": "m", "grad_accum": 0, "examples_per_step": 128}})
    assert cfg.student.examples_per_step == 128


@pytest.mark.parametrize("derive", [False, True])
def test_training_logs_and_records_what_a_step_holds(tmp_path, tiny_char_base, caplog, derive) -> None:
    cfg = StudentConfig(model=str(tiny_char_base), lr=3e-3, per_device_batch_size=2, max_length=64, packing=True,
                        pack_length=128, epochs=1, warmup_ratio=0.0, save_minutes=0, logging_steps=1,
                        grad_accum=0 if derive else 2, examples_per_step=12 if derive else 0)
    with caplog.at_level(logging.INFO, logger="lion.student"):
        res = train_student(cfg, student_fact_examples(5), tiny_char_base, tmp_path / "s", progress=False)
    m, b = res.metrics, res.metrics["batch"]
    assert b["n_examples"] == m["n_examples"] == 40 and b["n_rows"] == m["n_rows"] < 40  # several per row
    assert b["examples_per_row"] == round(40 / m["n_rows"], 2)
    assert b["rows_per_step"] == 2 * b["grad_accum"] and b["world_size"] == 1
    assert b["examples_per_step"] == pytest.approx(b["rows_per_step"] * 40 / m["n_rows"], abs=0.01)
    assert b["tokens_per_step"] == pytest.approx(b["rows_per_step"] * m["tokens"] / m["n_rows"], abs=0.01)
    assert b["optimizer_steps"] == m["steps"]  # the plan is what the Trainer ran (one epoch)
    if derive:  # the accumulation whose step comes closest to 12 examples
        per_micro = 2 * 40 / m["n_rows"]
        assert b["grad_accum"] == max(1, round(12 / per_micro))
    else:
        assert b["grad_accum"] == 2
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("student training:"))
    assert f"40 examples in {m['n_rows']} packed rows" in line
    assert f"= {b['rows_per_step']} packed rows ({b['examples_per_row']:.2f} examples per row)" in line
    assert f"= {b['examples_per_step']:.0f} examples" in line and f"{m['steps']} optimizer steps" in line
    assert ("from student.examples_per_step 12" in line) == derive


@pytest.mark.parametrize("name", ["lion-7b-fsdp.yaml", "lion-7b-lora.yaml", "qwen2.5-7b-lora.yaml",
                                  "qwen2.5-7b-fsdp-8gpu.yaml"])
def test_paper_recipe_configs_give_128_examples_per_step(name: str) -> None:
    sc = load_config(ROOT / "configs" / name).student
    if sc.packing:  # rows hold several examples: the accumulation is derived from the examples wanted
        assert sc.grad_accum == 0 and sc.examples_per_step == 128
    else:
        assert sc.per_device_batch_size * sc.grad_accum * max(1, sc.num_gpus) == 128


def test_memory_advice_keeps_the_derived_accumulation() -> None:
    """lion plan's memory advice halves the rows per micro-step; with grad_accum 0 (derived from examples_per_step)
    it must not advise grad_accum 0 x 2."""
    from lion.memplan import memory_report

    sc = StudentConfig(model="/models/llama-7b", mode="full", bf16=True, per_device_batch_size=8, max_length=1024,
                       packing=True, grad_accum=0, examples_per_step=128)
    changes = [a["change"] for a in memory_report(sc, 40)["advice"]]
    assert not any("grad_accum: 0" in c for c in changes)
    halving = [c for c in changes if c.startswith("student.per_device_batch_size")]
    assert all("grad_accum follows from student.examples_per_step" in c for c in halving)


def test_a_training_fingerprinted_before_examples_per_step_still_resumes() -> None:
    """The fingerprint of a training that leaves examples_per_step at 0 is the one lion computed before the key
    existed (the same keys, the same hashing), so a crashed training resumes across the upgrade."""
    import dataclasses
    import hashlib
    import json

    from lion.student.resume import NOT_TRAINING, training_fingerprint

    cfg = StudentConfig(model="m", packing=True)
    examples = [{"instruction": "a", "output": "b"}]
    before = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_TRAINING and k != "examples_per_step"}
    h = hashlib.sha256(json.dumps({"cfg": before, "init_from": "m", "seed": 1}, sort_keys=True, default=str).encode())
    h.update(json.dumps(examples[0], sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    assert training_fingerprint(cfg, examples, "m", 1) == h.hexdigest()[:24]
    derived = StudentConfig(model="m", packing=True, grad_accum=0, examples_per_step=128)
    assert training_fingerprint(derived, examples, "m", 1) != training_fingerprint(cfg, examples, "m", 1)
