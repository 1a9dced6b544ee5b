"""Worlds as data: the offline task world read from a file (`sim.world`), the shipped worlds, bad files.

    python -m pytest -q tests/test_worlds.py
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from lion.config import load_config
from lion.errors import ConfigError
from lion.sim import tasks as W
from lion.sim.oracle import OracleResponder

ROOT = Path(__file__).resolve().parents[1]
WORLDS = ROOT / "configs" / "worlds"


def test_the_default_world_file_is_the_built_in_world() -> None:
    """configs/worlds/default.yaml draws the same pools and held-out questions as the built-in world, and its oracle
    answers every role exactly as the smoke run's (options referee_noise 0.5, position_bias 0.5)."""
    w = W.load_world(WORLDS / "default.yaml")
    assert w.seed_pool(300, 3) == W.seed_pool(300, 3)
    assert w.heldout_set(4, 9) == W.heldout_set(4, 9)
    from_file = OracleResponder(seed=2, world=str(WORLDS / "default.yaml"))
    from_options = OracleResponder(seed=2, referee_noise=0.5, position_bias=0.5)
    t = from_file.templates
    rng = random.Random(0)
    for _ in range(30):
        task = W.sample_task(rng)
        bodies = [
            [{"role": "user", "content": t["referee"].render(instruction=task.instruction, answer_a=task.answer,
                                                              answer_b=task.answer[::-1] + "x")}],
            [{"role": "user", "content": t["generate_hard"].render(instruction=task.instruction)}],
            [{"role": "user", "content": t["generate_easy"].render(instruction=task.instruction)}],
        ]
        for msgs in bodies:
            body = {"model": "oracle", "messages": msgs}
            assert from_file.respond(body) == from_options.respond(body)


def test_shipped_worlds_load_and_differ_as_documented() -> None:
    worlds = {p.stem: W.load_world(p) for p in sorted(WORLDS.glob("*.yaml"))}
    assert {"default", "rare_learnable", "noisy_referee"} <= set(worlds)
    learnable = {"uppercase", "reverse", "last_letter", "acronym", "sort_letters", "last_word", "parity"}

    def share(w: W.TaskWorld) -> float:
        return sum(f.rarity for f in w.families if f.name in learnable) / sum(f.rarity for f in w.families)

    assert share(worlds["default"]) > 0.6 > 0.4 > share(worlds["rare_learnable"])
    d, r = worlds["default"], worlds["rare_learnable"]
    assert sorted(f.rarity for f in d.families) == sorted(f.rarity for f in r.families)  # same weights, reassigned
    n, d_ref = worlds["noisy_referee"].referee, d.referee
    assert n is not None and d_ref is not None
    assert n.noise > d_ref.noise and n.position_bias > d_ref.position_bias
    seeds = Counter(str(row["meta"]["family"]) for row in r.seed_pool(1000, 0))  # type: ignore[index]
    assert sum(v for k, v in seeds.items() if k in learnable) < 400


def test_noisy_referee_flips_more_often() -> None:
    """The noisy world's referee prefers the other answer when the order is swapped far more often."""
    def flips(world: str) -> float:
        o = OracleResponder(seed=1, world=str(WORLDS / world))
        rng = random.Random(5)
        n = 0
        for k in range(200):
            task = W.sample_task(rng)
            wrong = task.answer[:-1] + ("x" if task.answer[-1:] != "x" else "y")
            a = o._referee(task.instruction, task.answer, wrong, random.Random(f"a{k}"))
            b = o._referee(task.instruction, wrong, task.answer, random.Random(f"b{k}"))
            sa = [int(x) for x in a.rsplit("A=", 1)[1].replace("B=", "").split(",")[:2]] if "A=" in a else None
            sb = [int(x) for x in b.rsplit("A=", 1)[1].replace("B=", "").split(",")[:2]] if "A=" in b else None
            assert sa is not None and sb is not None, (a, b)
            n += (sa[0] > sa[1]) != (sb[1] > sb[0])
        return n / 200

    assert flips("noisy_referee.yaml") > flips("default.yaml") + 0.05


def test_generator_fidelity_zero_strays_from_the_seed_family(tmp_path: Path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text("families: {uppercase: {rarity: 1}, add: {rarity: 1}, parity: {rarity: 1}}\n"
                 "generator: {fidelity: 0.0}\n")
    o = OracleResponder(seed=0, world=str(f))
    hard = o.templates["generate_hard"]
    fams = Counter()
    for k in range(60):
        body = {"model": "oracle", "messages": [{"role": "user", "content": hard.render(
            instruction=f"Convert to uppercase: {'abcdefgh'[: 3 + k % 4]}")}], "seed": k}
        reply = o.respond(body).split(":", 1)[1].strip()
        fams[W.parse_task(reply).family] += 1  # type: ignore[union-attr]
    assert set(fams) == {"uppercase", "add", "parity"} and fams["uppercase"] < 40


def test_difficulty_range_bounds_the_samples(tmp_path: Path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text("families: {reverse: {rarity: 2, difficulty: [4, 5]}}\n")
    w = W.load_world(f)
    rng = random.Random(0)
    assert {len(w.sample_task(rng).answer) for _ in range(100)} == {6, 7}
    assert {len(str(r["answer"])) for r in w.heldout_set(10, 0)} == {6, 7}


@pytest.mark.parametrize("text,key", [
    ("families: {uppercase: {rarity: -1}}", "families.uppercase.rarity: must be > 0"),
    ("families: {shouting: {rarity: 1}}", "families.shouting: unknown family"),
    ("families: {uppercase: {rarity: 1, difficulty: [0, 3]}}", "families.uppercase.difficulty"),
    ("families: {uppercase: {weight: 1}}", "families.uppercase.weight: unknown key"),
    ("families: {uppercase: {}}\nreferee: {noise: -2}", "referee.noise"),
    ("families: {uppercase: {}}\nreferee: {correct_score: 3, wrong_score: 5}", "referee.wrong_score"),
    ("families: {uppercase: {}}\ngenerator: {fidelity: 1.5}", "generator.fidelity"),
    ("families: {uppercase: {}}\nnoise: 1", "noise: unknown key"),
    ("families: {}", "families: must map at least one family"),
    ("families: [uppercase", "not a valid YAML world file"),
])
def test_a_bad_world_file_is_one_line_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs" / "smoke.yaml", [f"sim.world={f}", "sim.options={seed: 0}"])
    msg = str(e.value)
    assert key in msg and str(f) in msg and "\n" not in msg


def test_world_and_options_may_not_both_set_the_referee(tmp_path: Path) -> None:
    """The smoke config sets the referee through sim.options; a world file that sets it too is refused by name."""
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"sim.world={WORLDS / 'noisy_referee.yaml'}"])
    from lion.context import sim_responder

    with pytest.raises(ConfigError, match=r"sim.options.position_bias: the world file .* sets the referee"):
        sim_responder(cfg)


def test_cli_writes_a_seed_pool_of_the_world(tmp_path: Path, capsys) -> None:
    out = tmp_path / "seed.jsonl"
    assert W.main(["--world", str(WORLDS / "rare_learnable.yaml"), "--seed-pool", "50", "--out", str(out)]) == 0
    assert W.main(["--world", str(WORLDS / "rare_learnable.yaml"), "--families"]) == 0
    assert "world rare_learnable" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 50
