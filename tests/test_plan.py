"""The plan before spending (python -m lion.plan, lion.run --dry-run): calls follow the loop's rules, prompts are
counted like the gateway counts them, limits and budget warn, the student's GPU memory says what would fit, and on
a reduced smoke run the plan is within ±15% of the measured ledger (calls, tokens in and out, USD), and a plan
calibrated on that run (--calibrate) is within ±5% of a second run with another seed.

    python -m pytest -q tests/test_plan.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lion.answers import teacher_messages
from lion.config import StudentConfig, config_from_dict
from lion.errors import ConfigError
from lion.memplan import memory_report
from lion.plan import _Templates, _wave_requests, compare, make_plan, measured_rounds
from lion.records import load_instructions
from lion.run import lion_loop
from lion.run import main as run_main
from lion.teachers.tokens import TokenCounter

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "data" / "smoke_seed.jsonl"


def small(run_dir: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "run_dir": str(run_dir), "rounds": 2, "final_imitation": False,
        "llm": {"default": {"base_url": "https://api.example.invalid/v1", "model": "gpt-4o-mini", "max_tokens": 256,
                            "rpm": 500, "tpm": 200000},
                "prices": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}},
        "student": {"model": "tiny"},
        "pools": {"train_seed": str(SEEDS), "limit": 10},
        "generation": {"n_hard": 3, "n_easy": 3, "batch_size": 8},
    }
    cfg.update(over)
    return cfg


def steps(plan, phase: str, role: str) -> list:
    return [s for s in plan.steps if s.phase == phase and s.role == role]


def test_calls_and_tokens_follow_the_loop(tmp_path):
    cfg = config_from_dict(small(tmp_path / "run"))
    plan = make_plan(cfg)
    (t1, t2) = steps(plan, "imitation", "teacher")
    (r1, r2) = steps(plan, "discrimination", "referee")
    hard, _ = _wave_requests(3, 0.8, 3.0, 8)
    n_new = 2 * min(3, 0.8 * hard)
    assert t1.calls == 10 and t2.calls == pytest.approx(n_new)  # round 2: only the new instructions
    assert r1.calls == pytest.approx(2 * 10 * 1.02) and r2.calls == pytest.approx(2 * (10 + n_new) * 1.02)
    assert not steps(plan, "discrimination", "teacher")  # the Cache Pool is the Train Pool: already answered
    counter = TokenCounter()
    pool, _ = load_instructions(SEEDS, 10)
    prompts = [counter.prompt(tuple((m["role"], m["content"]) for m in teacher_messages(_Templates(cfg), i)))
               for i in pool]
    assert t1.tokens_in == pytest.approx(sum(prompts))  # the rendered templates, counted like the gateway
    assert t1.tokens_out == pytest.approx(10 * 128)  # no outputs in the seeds: half of max_tokens
    assert t1.usd_online == pytest.approx((t1.tokens_in * 0.15 + t1.tokens_out * 0.6) / 1e6)
    assert t1.usd_batch == pytest.approx(t1.usd_online / 2)
    assert not plan.warnings


def test_the_binding_limit_and_the_warnings(tmp_path):
    slow = small(tmp_path / "run", llm={"default": {"model": "m", "rpm": 0.01, "tpm": 1e9, "max_tokens": 64},
                                        "prices": {"m": {"input": 100.0, "output": 100.0}}, "budget_usd": 0.01})
    plan = make_plan(config_from_dict(slow))
    assert {s.binds for s in plan.steps} == {"rpm"}
    text = " ".join(plan.warnings)
    assert "more than llm.budget_usd $0.01" in text and "takes" in text and "(> a day)" in text
    assert "bound by llm.referee.rpm" in text
    tight = small(tmp_path / "run", llm={"default": {"model": "m", "rpm": 1e6, "tpm": 10, "max_tokens": 64}})
    assert {s.binds for s in make_plan(config_from_dict(tight)).steps} == {"tpm"}


def test_batch_mode_counts_sequential_batches_and_configured_usd(tmp_path):
    cfg = small(tmp_path / "run", generation={"n_hard": 30, "n_easy": 30, "batch_size": 8})
    cfg["llm"]["default"]["mode"] = "batch"
    plan = make_plan(config_from_dict(cfg))
    total = plan.total()
    assert total["usd_configured"] == pytest.approx(total["usd_batch"])
    (gen, *_) = steps(plan, "generation", "generator")
    assert gen.batches > 3 and any("batches one after another" in w for w in plan.warnings)


def test_memory_says_what_would_fit():
    full = StudentConfig(model="/models/llama-7b", mode="full", bf16=True, per_device_batch_size=4, max_length=1024)
    r = memory_report(full, 40)
    assert not r["fits"] and r["params"] > 6.5e9 and r["per_device_gb"] > 100
    changes = [a["change"] for a in r["advice"]]
    assert "student.mode: lora" in changes and "student.mode: qlora" in changes
    assert all(a["per_device_gb"] <= 40 for a in r["advice"])
    sharded = StudentConfig(model="/models/llama-7b", mode="full", bf16=True, num_gpus=8, fsdp="full_shard auto_wrap",
                            gradient_checkpointing=True, per_device_batch_size=4, max_length=1024)
    r8 = memory_report(sharded, 80)
    assert r8["fits"] and r8["processes"] == 8 and 10 < r8["per_device_gb"] < 40
    assert r8["parts_gb"]["optimizer"] == pytest.approx(8 * r8["params"] / 8 / 1024**3, rel=1e-3)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(small(tmp_path / "run")))
    assert run_main(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plan for" in out and "discrimination" in out and "USD online" in out and "student:" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_plan_is_within_15_percent_of_a_measured_offline_run(tmp_path):
    """A reduced smoke run (the oracle world, 150 seeds, one round with its evaluation), then its ledger. The student
    trains 3 steps, so every instruction is hard: only hard new instructions are asked for (the plan cannot know
    the hard/easy split, nor which later students answer alike; the full smoke comparison is in the closing note)."""
    data = {
        "run_dir": str(tmp_path / "run"), "seed": 0, "rounds": 1, "final_imitation": False,
        "llm": {"default": {"provider": "openai", "model": "oracle", "temperature": 0.0, "max_tokens": 64,
                            "rpm": 100000, "tpm": 1e8, "max_in_flight": 16, "timeout_s": 30},
                "prices": {"oracle": {"input": 0.5, "output": 1.5}}},
        "sim": {"enabled": True, "responder": "oracle",
                "options": {"seed": 0, "referee_noise": 0.5, "position_bias": 0.5}},
        "student": {"model": "tiny", "tiny": {"vocab": "char", "hidden": 32, "layers": 1, "heads": 2},
                    "mode": "full", "prompt_format": "plain", "max_length": 160, "max_steps": 3,
                    "per_device_batch_size": 16, "grad_accum": 1,
                    "infer": {"backend": "transformers", "batch_size": 64, "max_new_tokens": 12}},
        "pools": {"train_seed": str(SEEDS), "limit": 150, "train_pool": "accumulate"},
        "generation": {"n_hard": 60, "n_easy": 0, "batch_size": 32, "rouge_threshold": 0.9},
        "eval": {"every_round": True, "questions": "oracle", "oracle_per_family": 2},
    }
    cfg = config_from_dict(data)
    plan = make_plan(cfg)
    lion_loop(config_from_dict(data), progress=False, echo=False)
    cmp = compare(plan, tmp_path / "run")
    for key in ("calls", "tokens_in", "tokens_out", "usd"):
        assert 0.85 <= cmp[key]["ratio"] <= 1.15, (key, cmp)
    by = cmp["by"]
    assert set(by) == {"teacher/imitation", "teacher/eval", "judge/eval", "referee/discrimination",
                       "generator/generation"}
    for k in ("teacher/imitation", "teacher/eval", "judge/eval", "referee/discrimination"):  # fixed by the loop
        assert by[k]["measured_calls"] == by[k]["planned_calls"], (k, by)
        assert by[k]["measured_requests"] == by[k]["planned_calls"], (k, by)  # requests: paid + cache replays
    assert cmp["requests"]["measured"] >= cmp["calls"]["measured"]
    assert 0.0 <= cmp["served_by_cache"] < 1.0
    assert by["teacher/imitation"]["measured_calls"] == 150 and by["referee/discrimination"]["measured_calls"] == 300

    # a second run with another seed, planned calibrated on the first (its pilot): paid calls, tokens and USD of
    # every role and phase as measured / planned there
    data2 = {**data, "run_dir": str(tmp_path / "run2"), "seed": 1}
    cal = make_plan(config_from_dict(data2), calibrate=tmp_path / "run")
    assert cal.calibrated is not None and cal.calibrated["rounds"] == [1]
    lion_loop(config_from_dict(data2), progress=False, echo=False)
    cmp2 = compare(cal, tmp_path / "run2")
    assert cmp2["calibrated_on"] == str(tmp_path / "run")
    for key in ("calls", "tokens_in", "tokens_out", "usd"):
        assert 0.95 <= cmp2[key]["ratio"] <= 1.05, (key, cmp2)


def _snapshot(rows: list[tuple[str, str, int, int, int, int, float]]) -> dict[str, Any]:
    keys = ("role", "phase", "calls", "cached", "tokens_in", "tokens_out", "usd")
    return {"usage": {"by": [dict(zip(keys, r)) | {"model": "gpt-4o-mini", "mode": "online"} for r in rows]}}


def test_calibrate_scales_each_step_by_what_the_pilot_measured(tmp_path):
    """A pilot's round snapshots (cumulative) become per-round measured / planned factors; later rounds of a longer
    plan take the pilot's last round; the plan's requests stay as planned, only what is paid is scaled."""
    pilot_cfg = small(tmp_path / "pilot")
    pilot = make_plan(config_from_dict(pilot_cfg))
    ref = {s.round: s for s in pilot.steps if s.role == "referee"}
    run = tmp_path / "pilot"
    (run / "round_01").mkdir(parents=True)
    (run / "round_02").mkdir()
    (run / "config.yaml").write_text(json.dumps(pilot_cfg))
    r1 = ("referee", "discrimination", round(ref[1].calls * 0.5), round(ref[1].calls * 0.5),
          round(ref[1].tokens_in * 0.5), round(ref[1].tokens_out * 0.5), ref[1].usd_online * 0.5)
    (run / "round_01" / "metrics.json").write_text(json.dumps(_snapshot([r1])))
    r2 = ("referee", "discrimination", r1[2] + round(ref[2].calls * 0.25), r1[3],
          r1[4] + round(ref[2].tokens_in * 0.25), r1[5] + round(ref[2].tokens_out * 0.25),
          r1[6] + ref[2].usd_online * 0.25)
    (run / "round_02" / "metrics.json").write_text(json.dumps(_snapshot([r2])))
    m = measured_rounds(run)
    assert m[(2, "referee", "discrimination")]["calls"] == r2[2] - r1[2]  # a round is its snapshot less the last

    target = config_from_dict(small(tmp_path / "big", rounds=4))
    plain = make_plan(target)
    cal = make_plan(target, calibrate=run)
    for a, b in zip(plain.steps, cal.steps):
        assert (a.round, a.role, a.phase) == (b.round, b.role, b.phase)
        assert b.requests == a.calls
        if a.role != "referee":
            assert b.calls == a.calls and b.usd_online == a.usd_online  # nothing measured: as planned
            continue
        want = 0.5 if a.round == 1 else 0.25  # rounds 3 and 4 take the pilot's last round
        assert b.calls == pytest.approx(a.calls * want, rel=0.02), a.round
        assert b.tokens_in == pytest.approx(a.tokens_in * want, rel=0.02)
        assert b.usd_online == pytest.approx(a.usd_online * want, rel=0.02)
        assert b.usd_batch == pytest.approx(a.usd_batch * want, rel=0.02)
    assert cal.calibrated is not None and cal.calibrated["rounds"] == [1, 2]
    assert any("calibrated on" in a and "referee/discrimination 0.2" in a for a in cal.assumptions), cal.assumptions


def test_calibrate_names_what_is_missing(tmp_path):
    cfg = config_from_dict(small(tmp_path / "run"))
    with pytest.raises(ConfigError, match="config.yaml not found"):
        make_plan(cfg, calibrate=tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text(json.dumps(small(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="no finished round"):
        make_plan(cfg, calibrate=tmp_path / "empty")


def test_the_plan_asks_the_referee_only_when_the_selector_does(tmp_path):
    """A referee-free selector (student_loss, progress) plans no referee call; a shadow referee its sample's share;
    pools.fresh_share plans that share of the new instructions without the generator."""
    def referee_calls(**disc: Any) -> float:
        plan = make_plan(config_from_dict(small(tmp_path / "run", discrimination=disc)))
        return sum(s.calls for s in steps(plan, "discrimination", "referee"))

    full = referee_calls()
    assert full > 0
    assert referee_calls(selector="student_loss") == 0 and referee_calls(selector="progress") == 0
    assert referee_calls(selector="student_loss", shadow_selectors=["referee"], shadow_sample=0.1) == \
        pytest.approx(0.1 * full)
    gen = lambda **pools: sum(s.calls for s in steps(make_plan(config_from_dict(small(  # noqa: E731
        tmp_path / "run", pools={"train_seed": str(SEEDS), "limit": 10, **pools}))), "generation", "generator"))
    assert 0 < gen(fresh_share=0.5) < gen() and gen(fresh_share=1.0) == 0
