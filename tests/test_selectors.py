"""The selectors of discrimination (lion.selectors), the category cap and held-out rejection of generation, and the
student's answer loss (lion.student.score), in the offline world: the oracle on the local server, a tiny student.

    python -m pytest -q tests/test_selectors.py
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lion.config import GenerationConfig, load_config
from lion.filters import CandidateFilter
from lion.records import read_jsonl
from lion.run import lion_loop
from lion.selectors import own_or_ancestors, stuck
from lion.sim import tasks as W

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "student.tiny.hidden=32", "student.tiny.layers=1", "student.tiny.heads=2", "student.max_steps=4",
    "student.per_device_batch_size=16", "pools.limit=40", "generation.n_hard=6", "generation.n_easy=4",
    "eval.every_round=false", "sim.options.referee_noise=0", "sim.options.position_bias=0",
]


def run(tmp_path: Path, *over: str, rounds: int = 1) -> tuple[Any, dict[int, list[dict[str, Any]]], dict[str, Any]]:
    """A short smoke run with overrides; (config, split rows per round, usage)."""
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [*TINY, f"run_dir={tmp_path / 'run'}", f"rounds={rounds}",
                                                        "final_imitation=false", *over])  # fmt: skip
    lion_loop(cfg, progress=False, echo=False)
    rounds_ = {r: read_jsonl(tmp_path / "run" / f"round_{r:02d}" / "split.jsonl") for r in range(1, rounds + 1)}
    usage = json.loads((tmp_path / "run" / "usage.json").read_text())
    return cfg, rounds_, usage


def roles(usage: dict[str, Any]) -> Counter[str]:
    return Counter({u["role"]: u["calls"] + u["cached"] for u in usage["by"]})


def test_student_loss_needs_no_referee_and_splits_by_loss(tmp_path: Path) -> None:
    """selector student_loss: no referee call; the hard_fraction with the highest loss is hard, the rest easy.
    With generation.max_category_share, no family grows more than its share of a branch's new instructions."""
    cfg, split, usage = run(tmp_path, "discrimination.selector=student_loss", "discrimination.hard_fraction=0.25",
                            "generation.max_category_share=0.34", "generation.n_hard=9", "generation.n_easy=6")
    rows = split[1]
    assert "referee" not in roles(usage) and roles(usage)["teacher"] > 0
    assert not (tmp_path / "run" / "round_01" / "judgements.jsonl").exists()
    hard = [r for r in rows if r["label"] == "hard"]
    easy = [r for r in rows if r["label"] == "easy"]
    assert len(hard) == math.ceil(0.25 * (len(hard) + len(easy))) and len(hard) + len(easy) == 40
    assert min(r["loss"] for r in hard) >= max(r["loss"] for r in easy)
    assert all(r["gap"] is None and r["teacher_score"] is None for r in rows)
    gen = read_jsonl(tmp_path / "run" / "round_01" / "generated.jsonl")
    hard_ids = {r["id"] for r in hard}
    assert all(g["parent"] in hard_ids for g in gen if g["kind"] == "hard")
    family = {r["id"]: r["meta"]["family"] for r in rows}
    for kind, wanted in (("hard", 9), ("easy", 6)):
        per = Counter(family[g["parent"]] for g in gen if g["kind"] == kind)
        assert per and max(per.values()) <= max(1, math.floor(0.34 * wanted)), (kind, per)


def test_none_is_self_instruct_every_item_seeds_both_branches(tmp_path: Path) -> None:
    """selector none: nothing judged; every Cache Pool item is unjudged and may seed either branch."""
    _, split, usage = run(tmp_path, "discrimination.selector=none")
    assert {r["label"] for r in split[1]} == {"unjudged"} and "referee" not in roles(usage)
    gen = read_jsonl(tmp_path / "run" / "round_01" / "generated.jsonl")
    assert Counter(g["kind"] for g in gen) == {"hard": 6, "easy": 4}
    pool = {r["id"] for r in split[1]}
    assert all(g["parent"] in pool for g in gen)


def test_learnable_marks_items_that_stay_hard_without_shrinking(tmp_path: Path) -> None:
    """selector learnable: with a clean referee and a student that learns nothing, an item hard in round 1 that is
    hard again with the same gap in round 2 is stuck, and seeds neither branch."""
    _, split, _ = run(tmp_path, "discrimination.selector=learnable", "discrimination.stuck_rounds=2", rounds=2)
    assert not any(r["label"] == "stuck" for r in split[1])  # no history yet
    r1 = {r["id"]: r for r in split[1]}
    stuck_rows = [r for r in split[2] if r["label"] == "stuck"]
    assert stuck_rows
    for r in stuck_rows:
        if r["id"] in r1:  # own history: hard last round, gap not smaller now
            assert r1[r["id"]]["label"] == "hard" and r["gap"] >= r1[r["id"]]["gap"]
    gen = read_jsonl(tmp_path / "run" / "round_02" / "generated.jsonl")
    assert not {g["parent"] for g in gen} & {r["id"] for r in stuck_rows}


def test_stuck_rule_and_lineage() -> None:
    """k hard entries whose signal did not shrink are stuck; a new item inherits its nearest ancestor's history."""
    assert stuck([("hard", 5.0), ("hard", 5.0)], 2) and stuck([("hard", 4.0), ("hard", 6.0)], 2)
    assert not stuck([("hard", 6.0), ("hard", 4.0)], 2)  # it is improving
    assert not stuck([("easy", 6.0), ("hard", 7.0)], 2) and not stuck([("hard", 6.0)], 2)
    past = {"a": [("hard", 6.0)]}
    assert own_or_ancestors("c", past, {"c": "b", "b": "a", "a": None}) == [("hard", 6.0)]
    assert own_or_ancestors("x", past, {"x": None}) == []
    assert own_or_ancestors("a", past, {"a": "a"}) == [("hard", 6.0)]  # a cycle cannot hang it


def test_only_unseen_judges_items_never_trained_on(tmp_path: Path) -> None:
    """discrimination.only_unseen: Train Pool items are excluded with the reason; the others are judged."""
    seeds = tmp_path / "cache_seeds.jsonl"
    rows = W.seed_pool(60, 0)
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = tmp_path / "train.jsonl"  # a Cache Pool twice the Train Pool
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    _, split, _ = run(tmp_path, "discrimination.only_unseen=true", f"pools.cache_seed={seeds}",
                      "pools.limit=null", f"pools.train_seed={train}")  # fmt: skip
    trained = {W.parse_task(r["instruction"]).instruction for r in rows[:30]}  # type: ignore[union-attr]
    for r in split[1]:
        assert (r["label"] == "excluded") == (" ".join(r["instruction"].split()) in trained)


def test_held_out_questions_are_rejected_by_generation() -> None:
    """A candidate that is a held-out question (spacing and case aside) never enters a pool."""
    filt = CandidateFilter(GenerationConfig(), ["Count the vowels in banana"], held_out=["Reverse the letters: cat"])
    assert filt.check("reverse  the letters: cat").reason == "held_out"
    assert filt.check("Reverse the letters: cab").ok


def test_answer_loss_is_batch_invariant_and_low_on_what_was_learnt(facts_student: Path) -> None:
    """lion.student.score: a row's loss does not depend on its batch; the learnt answer scores lower than a wrong one."""
    from conftest import STUDENT_FACTS

    from lion.config import InferConfig
    from lion.student.data import format_prompt
    from lion.student.score import answer_losses

    prompts = [format_prompt(q, fmt="alpaca") for q, _ in STUDENT_FACTS]
    right = [a for _, a in STUDENT_FACTS]
    wrong = [a[::-1] + " no" for a in right]
    one = answer_losses(facts_student, prompts, right, InferConfig(batch_size=1), max_length=64)
    many = answer_losses(facts_student, prompts, right, InferConfig(batch_size=8), max_length=64)
    bad = answer_losses(facts_student, prompts, wrong, InferConfig(batch_size=8), max_length=64)
    assert one == pytest.approx(many, abs=1e-4)
    assert all(r is not None and b is not None and r < b for r, b in zip(one, bad, strict=True))
    assert answer_losses(facts_student, ["x" * 200], ["y"], InferConfig(), max_length=64) == [None]


def test_the_shadow_sample_is_a_fixed_draw_of_about_its_share():
    from lion.discrimination import in_shadow_sample

    ids = [f"{i:016x}" for i in range(4000)]
    quarter = [i for i in ids if in_shadow_sample(0, 1, i, 0.25)]
    assert 0.22 < len(quarter) / len(ids) < 0.28
    assert quarter == [i for i in ids if in_shadow_sample(0, 1, i, 0.25)]  # the same draw every time
    assert quarter != [i for i in ids if in_shadow_sample(0, 2, i, 0.25)]  # another round, another sample
    assert all(in_shadow_sample(0, 1, i, 1.0) for i in ids[:10])


def _split_seeds(tmp_path: Path, n_train: int, n_cache: int) -> list[str]:
    """A train seed file and a cache seed file holding it plus `n_cache - n_train` instructions more."""
    rows = W.seed_pool(n_cache, 3)
    train, cache = tmp_path / "train.jsonl", tmp_path / "cache.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [f"pools.train_seed={train}", f"pools.cache_seed={cache}", "pools.limit=null"]


def test_progress_shares_generation_by_gain_per_example_on_a_probe_never_trained(tmp_path: Path) -> None:
    """selector progress: no referee; a probe set drawn from Cache Pool items outside every Train Pool is scored
    before and after each round's training; allocation.json gives each family (the offline clusters) a share of
    the next round's requests, at least its floor; generation draws each kind's seeds by those shares; within a
    family the hard items are its highest-loss ones; no probe item ever reaches a Train Pool."""
    cfg, split, usage = run(tmp_path, *_split_seeds(tmp_path, 40, 70), "discrimination.selector=progress",
                            "discrimination.probe_size=20", "discrimination.progress_floor=0.3",
                            "generation.n_hard=12", "generation.n_easy=6", "final_imitation=true", rounds=2)
    assert "referee" not in roles(usage)
    run_dir = tmp_path / "run"
    probe = {r["id"] for r in read_jsonl(run_dir / "probe.jsonl")}
    assert len(probe) == 20
    for r in (1, 2, 3):
        assert not probe & {row["id"] for row in read_jsonl(run_dir / f"round_{r:02d}" / "train_pool.jsonl")}
    for r in (1, 2):
        rd = run_dir / f"round_{r:02d}"
        alloc = json.loads((rd / "allocation.json").read_text())
        shares = {c: v["share"] for c, v in alloc["clusters"].items()}
        assert abs(sum(shares.values()) - 1) < 1e-6 and min(shares.values()) >= 0.3 / len(shares) - 1e-9
        losses = read_jsonl(rd / "probe_losses.jsonl")
        assert len(losses) == 20 and all(x["before"] is not None and x["after"] is not None for x in losses)
        rows = [x for x in split[r] if x["label"] in ("hard", "easy")]
        assert all(x["cluster"] == W.parse_task(x["instruction"]).family for x in rows)  # type: ignore[union-attr]
        for fam in {x["cluster"] for x in rows}:  # within a family the hard items are its highest-loss ones
            mine = [x for x in rows if x["cluster"] == fam]
            hard = [x["loss"] for x in mine if x["label"] == "hard"]
            easy = [x["loss"] for x in mine if x["label"] == "easy"]
            assert hard and (not easy or min(hard) >= max(easy))
        drawn = json.loads((rd / "generation.json").read_text())["cluster_requests"]["hard"]
        with_seeds = {c: shares[c] for c in drawn}
        total, norm = sum(drawn.values()), sum(with_seeds.values())
        for c, n in drawn.items():  # requests follow the shares (smooth round robin: within one request)
            assert abs(n - total * with_seeds[c] / norm) <= 1.0 + 1e-9, (c, n, total, with_seeds)


def test_progress_needs_cache_pool_items_outside_the_train_pool(tmp_path: Path) -> None:
    from lion.errors import ConfigError

    with pytest.raises(ConfigError, match="discrimination.probe_size"):
        run(tmp_path, "discrimination.selector=progress", "discrimination.probe_size=20")


def test_progress_shares_rule() -> None:
    """The share rule: the floor evenly, the rest by max(gain, 0) / (new examples + prior); unmeasured = mean."""
    from lion.selectors import shares

    s = shares({"a": 0.4, "b": -0.1, "c": 0.4}, {"a": 100, "b": 100, "c": 10}, ["a", "b", "c", "d"], 0.2)
    assert abs(sum(v["share"] for v in s.values()) - 1) < 1e-9
    assert s["b"]["share"] == pytest.approx(0.05)  # no gain: the floor alone
    assert s["c"]["share"] > s["a"]["share"] > s["b"]["share"]  # the same gain on fewer examples pays more
    assert s["d"]["gain_per_example"] == pytest.approx((s["a"]["gain_per_example"] + s["c"]["gain_per_example"]
                                                        + 0.0) / 3)
    flat = shares({}, {}, ["x", "y"], 0.0)
    assert flat["x"]["share"] == flat["y"]["share"] == 0.5


def test_fresh_share_draws_part_of_each_round_from_unused_seed_rows(tmp_path: Path) -> None:
    """pools.fresh_share: that share of a round's new instructions are train seed rows past pools.limit that no pool
    holds (kind fresh), the generator is asked for the rest; the next Train Pool holds them; the draw is the same
    on a re-run; a file with too few unused rows is made up by the generator."""
    rows = W.seed_pool(70, 5)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = {" ".join(str(r["instruction"]).split()) for r in rows[:40]}
    _, split, _ = run(tmp_path, f"pools.train_seed={seeds}", "pools.limit=40", "pools.fresh_share=0.5",
                      "discrimination.selector=student_loss", "final_imitation=true", rounds=2)
    rd = tmp_path / "run"
    for r in (1, 2):
        gen = read_jsonl(rd / f"round_{r:02d}" / "generated.jsonl")
        kinds = Counter(g["kind"] for g in gen)
        assert kinds == {"fresh": 5, "hard": 3, "easy": 2}, kinds
        fresh = [g for g in gen if g["kind"] == "fresh"]
        assert all(g["instruction"] not in first and g["round"] == r for g in fresh)
        later = {x["id"] for x in read_jsonl(rd / f"round_{r + 1:02d}" / "train_pool.jsonl")}
        assert {g["id"] for g in fresh} <= later
    gen1 = {g["id"] for g in read_jsonl(rd / "round_01" / "generated.jsonl") if g["kind"] == "fresh"}
    gen2 = {g["id"] for g in read_jsonl(rd / "round_02" / "generated.jsonl") if g["kind"] == "fresh"}
    assert not gen1 & gen2
    assert json.loads((rd / "round_01" / "generation.json").read_text())["fresh"] == 5
    # the same draw again for a generation of round 1 resumed before anything later existed
    import shutil

    from lion.context import RunContext

    for later in ("round_02", "round_03"):
        shutil.rmtree(rd / later)
    from lion.generation import fresh_rows

    cfg = load_config(ROOT / "configs" / "smoke.yaml", [*TINY, f"run_dir={rd}", f"pools.train_seed={seeds}",
                                                        "pools.limit=40", "pools.fresh_share=0.5", "rounds=2",
                                                        "final_imitation=true", "discrimination.selector=student_loss"])
    with RunContext(cfg, progress=False) as ctx:
        assert {i.id for i in fresh_rows(ctx, 1)} == gen1
        # 70 rows, 40 in round 1's pools: 30 unused, fewer than the 34 wanted -> the generator makes up the rest
        cfg.pools.fresh_share, cfg.generation.n_hard = 1.0, 30
        assert len(fresh_rows(ctx, 1)) == 30
