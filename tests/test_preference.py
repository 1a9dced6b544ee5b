"""The preference stage (imitation.preference): DPO on the referee's verdicts, SPIN on every differing pair,
trained after discrimination and resumed after a crash like SFT; the loss against a hand-computed case.

    python -m pytest -q tests/test_preference.py
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_student_resume import Crash, crash_at

from lion.config import load_config
from lion.context import RunContext
from lion.discrimination import discrimination
from lion.errors import ConfigError
from lion.imitation import imitation
from lion.pools import prepare_round
from lion.preference import preference
from lion.records import read_jsonl
from lion.run import lion_loop
from lion.student.objectives import preference_loss, sequence_logps

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "student.tiny.hidden=32", "student.tiny.layers=1", "student.tiny.heads=2", "student.max_steps=6",
    "student.per_device_batch_size=16", "pools.limit=40", "generation.n_hard=6", "generation.n_easy=4",
    "eval.every_round=false", "sim.options.referee_noise=0", "sim.options.position_bias=0", "student.cpu_threads=1",
    "imitation.preference_max_steps=5", "imitation.preference_lr=1e-3", "student.save_minutes=0",
]


def cfg_of(tmp_path: Path, *over: str, name: str = "run"):
    return load_config(ROOT / "configs" / "smoke.yaml", [*TINY, f"run_dir={tmp_path / name}", "rounds=1", *over])


def test_loss_and_log_probabilities_by_hand() -> None:
    """sequence_logps sums the supervised tokens' log-probabilities (token t predicted at t-1); the DPO loss of a
    pair is -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 0.0]]])  # p(token 0 at step 2) = 3/4
    labels = torch.tensor([[-100, 0, 1]])
    lp, n = sequence_logps(logits, labels)
    assert n.tolist() == [2] and lp.item() == pytest.approx(math.log(0.5) + math.log(0.25))
    pi, ref = torch.tensor([[-2.0, -5.0]]), torch.tensor([[-3.0, -4.0]])
    loss, margin = preference_loss(pi, ref, beta=0.5)
    assert margin.item() == pytest.approx(0.5 * ((-2 + 3) - (-5 + 4)))
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))


def test_spin_trains_on_every_differing_pair_and_the_next_round_starts_from_it(tmp_path: Path) -> None:
    cfg = cfg_of(tmp_path, "imitation.preference=spin", "discrimination.selector=student_loss", "final_imitation=true")
    summaries = lion_loop(cfg, progress=False, echo=False)
    rd = tmp_path / "run" / "round_01"
    m = json.loads((rd / "preference.json").read_text())
    pairs = read_jsonl(rd / "preference_pairs.jsonl")
    assert m["method"] == "spin" and m["pairs"] == len(pairs) > 0
    assert all(" ".join(p["chosen"].split()) != " ".join(p["rejected"].split()) for p in pairs)
    assert all(p["ref_chosen"] < 0 and p["ref_rejected"] < 0 for p in pairs)
    assert sum(m["left_out"].values()) + len(pairs) == 40
    t = m["train"]
    assert t["steps"] == 5 and t["n_pairs"] == len(pairs) and t["margin_last"] > t["margin_first"]
    assert (rd / "student_pref" / "lion_student.json").is_file()
    nxt = json.loads((tmp_path / "run" / "round_02" / "imitation.json").read_text())
    assert nxt["init_from"] == str(rd / "student_pref")
    assert "referee" not in {u["role"] for u in json.loads((tmp_path / "run" / "usage.json").read_text())["by"]}
    assert summaries[0]["preference"]["pairs"] == len(pairs)
    from lion.report import build_figures, load_run
    from lion.roundtable import round_line

    assert "[spin: " in round_line(summaries[0]) and "pairs, margin" in round_line(summaries[0])
    figures = {title: png for _, title, png in build_figures(load_run(tmp_path / "run"))}
    assert figures["Reward margin and loss of the preference stage"]  # drawn (PNG bytes)


def test_dpo_takes_only_pairs_the_referee_judged_hard_in_both_orders(tmp_path: Path) -> None:
    # a noisy referee biased to the first answer flips some verdicts with the order: those are left out
    cfg = cfg_of(tmp_path, "imitation.preference=dpo", "final_imitation=false", "sim.options.position_bias=5",
                 "sim.options.referee_noise=2")
    lion_loop(cfg, progress=False, echo=False)
    rd = tmp_path / "run" / "round_01"
    split = {r["id"]: r for r in read_jsonl(rd / "split.jsonl")}
    pairs = read_jsonl(rd / "preference_pairs.jsonl")
    assert pairs
    assert all(split[p["id"]]["label"] == "hard" and split[p["id"]]["flipped"] is False for p in pairs)
    m = json.loads((rd / "preference.json").read_text())
    assert m["left_out"].get("not judged hard in both orders", 0) > 0


def test_dpo_without_a_referee_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="imitation.preference: dpo trains on the referee's verdicts"):
        cfg_of(tmp_path, "imitation.preference=dpo", "discrimination.selector=student_loss")


def test_a_crashed_preference_stage_resumes_and_ends_bitwise_equal(tmp_path: Path, monkeypatch) -> None:
    """Round 1 up to discrimination, copied; one copy trains the preference stage straight through, the other crashes
    at step 3 (after the checkpoint of step 2) and is run again: it resumes from step 2 and ends with the same
    weights, bit for bit."""
    over = ["imitation.preference=spin", "discrimination.selector=student_loss", "student.save_steps=2"]
    cfg_a = cfg_of(tmp_path, *over, name="a")
    with RunContext(cfg_a, progress=False) as ctx:
        prepare_round(ctx, 1)
        imitation(ctx, 1)
        discrimination(ctx, 1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with RunContext(cfg_a, progress=False) as ctx:
        straight = preference(ctx, 1)
    cfg_b = cfg_of(tmp_path, *over, name="b")
    with monkeypatch.context() as mp:
        crash_at(mp, 3)
        with RunContext(cfg_b, progress=False) as ctx, pytest.raises(Crash):
            preference(ctx, 1)
    assert not (tmp_path / "b" / "round_01" / "preference.done").exists()
    with RunContext(cfg_b, progress=False) as ctx:
        resumed = preference(ctx, 1)
    assert resumed["train"]["resumed_at"] == [2]
    a = load_file(str(tmp_path / "a" / "round_01" / "student_pref" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "round_01" / "student_pref" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["pairs"] == straight["pairs"]
