"""Generation candidate filters: every rejection reason, shared dedup index, decontamination on real eval sets.

python -m pytest -q tests/test_filters.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_file

from lion.config import GenerationConfig
from lion.errors import DataError
from lion.filters import REASONS, CandidateFilter, load_eval_questions, main, normalise_words


def make(existing=(), questions=(), **cfg):
    return CandidateFilter(GenerationConfig(**cfg), existing, questions)


def test_each_reason_in_order():
    f = make(["Write a short poem about the sea at night."], ["Describe the water cycle to a ten year old child."],
             min_words=3, max_words=12, decontam_ngram=5)  # fmt: skip
    cases = {
        None: "parse",
        "  \n ": "empty",
        "Explain gravity.": "too_short",
        "Explain " + "very " * 20 + "slowly.": "too_long",
        "Rewrite the given prompt so it is harder.": "meta_word",
        "Please describe the water cycle to a ten year old.": "contaminated",
        "Write a short poem about the sea at dawn.": "near_duplicate",
    }
    for text, reason in cases.items():
        d = f.check(text)
        assert (d.ok, d.reason) == (False, reason), text
    assert {d for d in cases.values()} == set(REASONS)
    ok = f.check("Explain how tides depend on the moon.")
    assert ok.ok and ok.reason is None
    assert f.check("Write a short poem about the sea at dawn.").detail.startswith("ROUGE-L 0.8")


def test_accept_makes_later_candidates_duplicates_and_check_does_not():
    f = make([])
    text = "Compare the economies of Brazil and Argentina since 1990."
    assert f.check(text).ok and f.check(text).ok  # checking twice adds nothing
    f.accept(text)
    again = f.check("Compare the economies of Brazil and Chile since 1990.")
    assert again.reason == "near_duplicate" and "indexed text 0" in again.detail
    assert f.check("Summarise the plot of Hamlet in three sentences.").ok


def test_meta_words_match_at_word_boundaries_case_insensitively():
    f = make([])
    assert f.check("Follow these Instructions: sort the list.").reason == "meta_word"
    assert f.check("Improve this #New Prompt# for clarity please.").reason == "meta_word"
    assert f.check("Rewrite the GIVEN   PROMPT in French.").detail == "given   prompt".replace("   ", " ")
    assert f.check("Describe constructional details of Gothic cathedrals.").ok
    assert make([], meta_words=[]).check("Follow this instruction exactly now.").ok


def test_normalisation_for_decontamination():
    assert normalise_words("What's the BEST way—to learn, Python?!") == "what s the best way to learn python".split()
    f = make([], ["How many times does the average human blink in a lifetime?", "Hi!"], decontam_ngram=8)
    assert f.check("how many TIMES does the average human blink in a lifetime, roughly").reason == "contaminated"
    assert f.check("How many times does a cat blink in a day?").ok  # shares only short n-grams
    assert f.check("Say hi to the new colleague politely.").ok  # eval questions under 3 words are ignored
    short = make([], ["Who wrote Hamlet?"], decontam_ngram=8)  # shorter than n: contaminates when it occurs whole
    assert short.check("Tell me: who wrote Hamlet? Explain briefly.").reason == "contaminated"
    assert short.check("Who wrote the music for Hamlet?").ok


def test_real_eval_sets_every_turn_is_caught_and_real_seeds_pass(shared_data: Path):
    """Every turn of the real Vicuna-80 and MT-bench questions is caught as contamination; real seeds all pass."""
    vicuna = shared_file(shared_data, "vicuna80/question.jsonl").parent
    qs = load_eval_questions([vicuna, shared_file(shared_data, "mt_bench/question.jsonl")])
    assert len(qs) == 80 + 160  # vicuna: one turn each; MT-bench: both turns
    f = make([], qs, max_words=400, meta_words=[])
    caught = 0
    for q in qs:
        if len(normalise_words(q)) >= 3:
            d = f.check(f"Here is a task for you. {q} Answer carefully.")
            assert d.reason == "contaminated", q
            caught += 1
    assert caught >= 230
    seeds = [
        json.loads(ln)["instruction"]
        for ln in shared_file(shared_data, "self_instruct/seed_tasks.jsonl").read_text().splitlines()
    ]
    reasons = [f.check(s).reason for s in seeds]
    assert reasons.count("contaminated") == 0 and reasons.count(None) == len(seeds)


def test_load_eval_questions_formats_and_errors(tmp_path):
    ours = tmp_path / "ours.jsonl"
    ours.write_text(
        '{"instruction": "Sort numbers.", "input": "3 1 2"}\n\n{"question": "Why is the sky blue?"}\n"Plain?"\n'
    )
    assert load_eval_questions([ours]) == ["Sort numbers.\n3 1 2", "Why is the sky blue?", "Plain?"]
    txt = tmp_path / "q.txt"
    txt.write_text("first question here\n\nsecond question here\n")
    assert load_eval_questions([str(txt)]) == ["first question here", "second question here"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"turns": ["ok"]}\n{"turns": ["ok"], \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        load_eval_questions([bad])
    bad.write_text('{"turns": ["ok"]}\n{"turns": []}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: 'turns' must be a non-empty list"):
        load_eval_questions([bad])
    bad.write_text('{"id": 3, "answer": "x"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: no question field"):
        load_eval_questions([bad])
    bad.write_text('{"question": 42}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: 'question' must be a string"):
        load_eval_questions([bad])
    with pytest.raises(DataError, match=r"generation\.decontaminate: .*missing\.jsonl does not exist"):
        load_eval_questions([tmp_path / "missing.jsonl"])
    with pytest.raises(DataError, match=r"question\.jsonl does not exist"):
        load_eval_questions([tmp_path])  # a directory without question.jsonl


def test_cli(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"instruction": "Write a short poem about the sea at night."}) + "\n")
    cands = tmp_path / "cands.jsonl"
    rows = ["Write a short poem about the sea at dawn.", "Tell me a joke about cats and dogs.",
            "Tell me a joke about cats and mice.", "Hi"]  # fmt: skip
    cands.write_text("".join(json.dumps({"instruction": r}) + "\n" for r in rows))
    assert main([str(cands), "--against", str(pool)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == {"near_duplicate": 2, "accepted": 1, "too_short": 1}
