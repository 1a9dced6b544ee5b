"""The synthetic task world: families, phrasings, ground truth, grading, pools.

    python -m pytest -q tests/test_oracle_tasks.py
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lion.sim import tasks as W

# hand-computed truths, one or more per family and phrasing style
KNOWN = [
    ("Convert to uppercase: abc", "uppercase", "ABC", 1),
    ("All caps, please: hello", "uppercase", "HELLO", 3),
    ("Reverse the letters: abcd", "reverse", "dcba", 2),
    ("Spell in reverse order: stone", "reverse", "enots", 3),
    ("Sort these letters: dcba", "sort_letters", "abcd", 2),
    ("Arrange in alphabetical order: banana", "sort_letters", "aaabnn", 4),
    ("How many a's are in: banana", "count_letter", "3", 3),
    ("Count the letter z in: abcd", "count_letter", "0", 1),
    ("What is 47 plus 85?", "add", "132", 3),
    ("Calculate 7 + 5.", "add", "12", 1),
    ("Add 999 and 1.", "add", "1000", 3),  # 3 digits + 1 digit: no exact level, clipped by total digits
    ("Subtract 8 from 15.", "subtract", "7", 2),
    ("What is 300 minus 299?", "subtract", "1", 5),
    ("Largest of these numbers: 3, 99, 12", "largest", "99", 2),
    ("Give the maximum of: 5, 5", "largest", "5", 1),
    ("Even or odd: 347", "parity", "odd", 3),
    ("Is this number odd or even: 0", "parity", "even", 1),
    ("Last letter of: abcq", "last_letter", "q", 2),
    ("Which letter comes last in: stone", "last_letter", "e", 3),
    ("Make an acronym from: red apple tree", "acronym", "RAT", 2),
    ("Last word of: red apple tree", "last_word", "tree", 2),
    ("First word alphabetically: pear, bird, lamp", "alpha_first", "bird", 2),
    ("Which comes first in a dictionary: zebra, apple", "alpha_first", "apple", 1),
]


def test_world_shape() -> None:
    assert len(W.FAMILIES) >= 8
    assert len(W.DOMAINS) >= 3
    for fam in W.FAMILIES:
        assert len(set(fam.phrasings)) >= 4, fam.name
        assert fam.rarity > 0
    for domain, names in W.DOMAINS.items():
        rarities = sorted(W.BY_NAME[n].rarity for n in names)
        assert rarities[0] < rarities[-1], f"domain {domain} needs common and rare families"


@pytest.mark.parametrize("instruction,family,answer,difficulty", KNOWN)
def test_known_truths(instruction: str, family: str, answer: str, difficulty: int) -> None:
    t = W.parse_task(instruction)
    assert t is not None
    assert (t.family, t.answer, t.difficulty) == (family, answer, difficulty)
    assert W.grade(instruction, answer) is True


def test_every_phrasing_and_level_round_trips() -> None:
    rng = random.Random(7)
    for fam in W.FAMILIES:
        for d in range(W.MIN_DIFFICULTY, W.MAX_DIFFICULTY + 1):
            for k in range(len(fam.phrasings)):
                for _ in range(5):
                    t = fam.render(rng, d, phrasing=k)
                    back = W.parse_task(t.instruction)
                    assert back is not None, t
                    assert (back.family, back.domain, back.difficulty, back.answer) == (
                        t.family, t.domain, t.difficulty, t.answer), t
                    assert W.grade(t.instruction, t.answer) is True
                    assert len(t.instruction.split()) >= 3  # survives the generation filter's min_words


def test_difficulty_sets_size() -> None:
    rng = random.Random(1)
    lengths = {d: W.sample_task(rng, "reverse", d).answer for d in (1, 5)}
    assert len(lengths[1]) == 3 and len(lengths[5]) == 7
    digits = [max(len(x) for x in W.sample_task(rng, "add", d).instruction.rstrip("?.").split() if x.isdigit())
              for d in (1, 3, 5)]
    assert digits == [1, 2, 3]
    assert len(W.sample_task(rng, "largest", 4).instruction.split(",")) == 5
    assert W.sample_task(rng, "add", 9).difficulty == W.MAX_DIFFICULTY  # clipped


def test_grading_normalisation_and_case() -> None:
    assert W.grade("Reverse the letters: abc", " 'cba'. ") is True
    assert W.grade("Reverse the letters: abc", "CBA") is True  # case does not matter for reverse
    assert W.grade("Convert to uppercase: abc", "abc") is False  # but it does for uppercase
    assert W.grade("Convert to uppercase: abc", "ABC\n") is True
    assert W.grade("What is 2 plus 2?", "5") is False
    assert W.grade("What is 2 plus 2?", "") is False
    assert W.grade("Write a poem about the sea.", "anything") is None
    assert W.parse_task("Reverse the letters: ABC") is None  # outside the phrasing grammar: not ours


def test_seed_pool_rarity_and_determinism() -> None:
    rows = W.seed_pool(600, seed=3)
    assert rows == W.seed_pool(600, seed=3)
    assert rows != W.seed_pool(600, seed=4)
    assert len({r["instruction"] for r in rows}) == 600
    counts = Counter(r["meta"]["family"] for r in rows)
    assert set(counts) == set(W.BY_NAME)
    assert counts["uppercase"] > 2 * counts["alpha_first"]
    assert counts["add"] > 2 * counts["parity"]
    for r in rows[:50]:
        t = W.parse_task(r["instruction"])
        assert t is not None and t.meta == r["meta"]


def test_heldout_set_covers_every_family_and_level() -> None:
    rows = W.heldout_set(10, seed=0)
    per = Counter(r["meta"]["family"] for r in rows)
    assert per == {f: 10 for f in W.BY_NAME}
    levels = {(r["meta"]["family"], r["meta"]["difficulty"]) for r in rows}
    assert len(levels) == len(W.FAMILIES) * 5
    assert all(W.grade(r["instruction"], r["answer"]) for r in rows)


def test_cli_writes_a_loadable_seed_pool(tmp_path) -> None:
    from lion.records import load_instructions

    out = tmp_path / "seed.jsonl"
    assert W.main(["--seed-pool", "40", "--out", str(out)]) == 0
    pool, _report = load_instructions(out)
    assert len(pool) == 40
    assert all(W.parse_task(i.instruction) is not None for i in pool)


def test_family_accuracy() -> None:
    """lion.world.family_accuracy over the task world: per-family exact accuracy, unknown instructions skipped."""
    from lion.world import World, family_accuracy

    world = W.TaskWorld()
    assert isinstance(world, World)
    acc = family_accuracy(world, [
        ("Reverse the letters: abc", "cba"), ("Reverse the letters: abd", "xyz"),
        ("What is 2 plus 2?", "4"), ("Write a poem.", "roses"),
    ])
    assert acc == {"accuracy": {"add": 1.0, "reverse": 0.5}, "n": {"add": 1, "reverse": 2}, "overall": 2 / 3}
    assert family_accuracy(world, [])["overall"] is None
    held = world.heldout(3, seed=1)
    assert len(held) == 3 * len(W.FAMILIES) and all(world.grade(q.instruction, q.answer) for q in held)
