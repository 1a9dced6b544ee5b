"""Generation's own pieces: the reply parser (and its marker, read from the template) and the seed sampler."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from lion.errors import ConfigError
from lion.generation import SeedSampler, parse_task
from lion.prompts import load_template, reply_marker
from lion.records import Instruction

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("TASK: Reverse the word 'cat'.", "Reverse the word 'cat'."),
        ("**TASK:** \"Name three rivers in Peru.\"", "Name three rivers in Peru."),
        ("Here is one.\n\nTask: Write a haiku about rain.", "Write a haiku about rain."),
        ("> TASK: Sort these numbers: 3, 1, 2", "Sort these numbers: 3, 1, 2"),
        ("TASK: Summarise the text.\nInput: The report says sales rose.",
         "Summarise the text.\nInput: The report says sales rose."),
        ("Write a haiku about rain.", None),  # no marker: a parse failure, never a guess
        ("TASK:", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_task(reply, expected):
    assert parse_task(reply) == expected


def test_marker_comes_from_the_template(tmp_path: Path):
    for name in ("generate_hard", "generate_easy"):
        assert reply_marker(load_template(name)) == "TASK:"
    text = (ROOT / "prompts" / "generate_hard.txt").read_text().replace('"TASK:"', '"NEW QUESTION:"')
    (tmp_path / "generate_hard.txt").write_text(text)
    marker = reply_marker(load_template("generate_hard", tmp_path))
    assert marker == "NEW QUESTION:"
    assert parse_task("NEW QUESTION: What is 2+2?", marker) == "What is 2+2?"
    assert parse_task("TASK: What is 2+2?", marker) is None
    (tmp_path / "generate_hard.txt").write_text(text.replace('"NEW QUESTION:"', "a new question"))
    with pytest.raises(ConfigError, match="no quoted reply marker"):
        reply_marker(load_template("generate_hard", tmp_path))


def test_seeds_are_drawn_without_replacement_while_they_last():
    seeds = [Instruction(f"seed number {i}") for i in range(5)]
    sampler = SeedSampler(seeds, random.Random(0))
    first = [sampler.next() for _ in range(5)]
    assert sorted(s.id for s, _ in first) == sorted(s.id for s in seeds)
    assert all(sample == 0 for _, sample in first)
    second = [sampler.next() for _ in range(5)]  # a fresh shuffle: each seed's second use is its sample 1
    assert sorted(s.id for s, _ in second) == sorted(s.id for s in seeds)
    assert all(sample == 1 for _, sample in second)


def test_uses_from_earlier_rounds_continue_the_sample_count():
    """A seed asked for twice in earlier rounds is asked for its sample 2 now: a new call, not a replay."""
    seeds = [Instruction(f"seed number {i}") for i in range(3)]
    used = Counter({seeds[0].id: 2, seeds[2].id: 1})
    sampler = SeedSampler(seeds, random.Random(0), used=used)
    draws = [sampler.next() for _ in range(3)]
    drawn = {s.id: n for s, n in filter(None, draws)}
    assert drawn == {seeds[0].id: 2, seeds[1].id: 0, seeds[2].id: 1}
    assert used[seeds[0].id] == 2  # the caller's counts are not changed

