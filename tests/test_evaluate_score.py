"""Relative-score arithmetic of lion.evalscore against hand-checked examples."""

from __future__ import annotations

import pytest

from lion.evalscore import QuestionScores, format_summary, rows_from_table, summarize


def _hand_example() -> list[QuestionScores]:
    # scores are (candidate, reference) per order; worked out by hand in the comments of the test below
    return [
        QuestionScores("q1", "generic", {"ref_first": (8, 9), "cand_first": (9, 9)}),
        QuestionScores("q2", "generic", {"ref_first": (6, 8), "cand_first": (7, 8)}),
        QuestionScores("q3", "math", {"ref_first": (4, 3), "cand_first": (3, 3)}),
        QuestionScores("q4", "generic", {"ref_first": None, "cand_first": (5, 5)}),  # one verdict failed
    ]


def test_hand_checked_example() -> None:
    s = summarize(_hand_example())
    o = s["overall"]
    # q4 is excluded from every total (its ref_first verdict failed): 3 scored questions
    assert (o["n"], o["n_scored"], o["n_excluded"]) == (4, 3, 1)
    # ref_first: candidate 8+6+4 = 18, reference 9+8+3 = 20 -> 90.00
    # cand_first: candidate 9+7+3 = 19, reference 9+8+3 = 20 -> 95.00 ; mean of the two orders 92.50
    assert o["relative"]["ref_first"] == pytest.approx(90.0)
    assert o["relative"]["cand_first"] == pytest.approx(95.0)
    assert o["relative"]["mean"] == pytest.approx(92.5)
    # per-question means: q1 8.5 v 9 (loss), q2 6.5 v 8 (loss), q3 3.5 v 3 (win)
    assert (o["win"], o["tie"], o["loss"]) == (1, 0, 2)
    assert o["candidate_mean"] == pytest.approx((8.5 + 6.5 + 3.5) / 3)
    assert o["reference_mean"] == pytest.approx((9 + 8 + 3) / 3)
    # generic: 14/17 and 16/17 ; math: 4/3 and 3/3
    g = s["by_category"]["generic"]
    assert g["relative"]["ref_first"] == pytest.approx(100 * 14 / 17)
    assert g["relative"]["cand_first"] == pytest.approx(100 * 16 / 17)
    assert g["n_excluded"] == 1
    m = s["by_category"]["math"]
    assert m["relative"]["mean"] == pytest.approx((400 / 3 + 100) / 2)
    # judge health: 1 failed order of 8; flips: q1 ref->tie yes, q2 ref->ref no, q3 cand->tie yes => 2/3
    j = s["judge"]
    assert j["parse_failures"] == 1
    assert j["parse_failure_rate"] == pytest.approx(1 / 8)
    assert j["swap_flip_rate"] == pytest.approx(2 / 3)
    # first position advantage: ref_first r-c = 1, 2, -1 ; cand_first c-r = 0, -1, 0, 0 (q4) -> 1/7
    assert j["first_position_advantage"] == pytest.approx(1 / 7)
    text = format_summary(s)
    assert "OVERALL" in text and " 92.50" in text and "1/0/2" in text


def test_paper_lion7b_figures() -> None:
    """Totals that give the paper's Lion-7B figures: 94.74 / 92.88 -> 93.81."""
    rows = []
    for i in range(80):
        # ref_first: reference 40x9 + 40x10 = 760, candidate 80x9 = 720 -> 94.74
        # cand_first: reference 74x8 + 6x9 = 646, candidate 40x7 + 40x8 = 600 -> 92.88
        rows.append(
            QuestionScores(
                str(i),
                "generic",
                {
                    "ref_first": (9, 9 if i < 40 else 10),
                    "cand_first": (7 if i < 40 else 8, 9 if i < 6 else 8),
                },
            )
        )
    rel = summarize(rows)["overall"]["relative"]
    assert round(rel["ref_first"], 2) == 94.74
    assert round(rel["cand_first"], 2) == 92.88
    assert round(rel["mean"], 2) == 93.81


def test_no_scored_question_gives_no_number() -> None:
    s = summarize([QuestionScores("a", "x", {"ref_first": None, "cand_first": (3, 4)})])
    assert s["overall"]["relative"] == {"ref_first": None, "cand_first": None, "mean": None}
    assert s["judge"]["swap_flip_rate"] is None
    assert "-" in format_summary(s)


def test_rows_from_table_round_trip() -> None:
    table = [
        {
            "id": "a",
            "category": "c",
            "ref_first_candidate": 7,
            "ref_first_reference": 8,
            "cand_first_candidate": 8,
            "cand_first_reference": 8,
        },
        {
            "id": "b",
            "category": "c",
            "ref_first_candidate": None,
            "ref_first_reference": None,
            "cand_first_candidate": 2,
            "cand_first_reference": 9,
        },
    ]
    rows = rows_from_table(table)
    assert rows[0].scores == {"ref_first": (7.0, 8.0), "cand_first": (8.0, 8.0)}
    assert not rows[1].ok and rows[1].scores["cand_first"] == (2.0, 9.0)


def _pair(n: int, shift: float = 0.0, seed: int = 0) -> tuple[list[QuestionScores], list[QuestionScores]]:
    import random

    rng = random.Random(seed)
    a, b = [], []
    for i in range(n):
        ref = (rng.randint(6, 9), rng.randint(6, 9))
        cb = (rng.randint(3, 8), rng.randint(3, 8))
        ca = tuple(min(10.0, c + shift) for c in cb)
        # the judge scores the reference afresh in each evaluation: b's reference scores differ by a little noise
        a.append(QuestionScores(f"q{i}", "", {"ref_first": (ca[0], ref[0]), "cand_first": (ca[1], ref[1])}))
        b.append(QuestionScores(f"q{i}", "", {"ref_first": (cb[0], ref[0]), "cand_first": (cb[1], ref[1] - (i % 2))}))
    return a, b


def test_paired_difference_point_estimate_is_the_two_relative_scores_on_the_common_questions() -> None:
    from lion.evalscore import paired_difference

    a, b = _pair(30, shift=1.0)
    b[0] = QuestionScores("q0", "", {"ref_first": None, "cand_first": (5, 5)})  # failed for the control: unpaired
    a.append(QuestionScores("extra", "", {"ref_first": (9, 9), "cand_first": (9, 9)}))  # scored for the loop only
    d = paired_difference(a, b, n_boot=500)
    common = [q for q in a if q.id not in ("q0", "extra")]
    assert (d["n"], d["n_only_a"], d["n_only_b"]) == (29, 2, 0)
    assert d["relative_a"] == pytest.approx(summarize(common)["overall"]["relative"]["mean"])
    assert d["relative_b"] == pytest.approx(summarize(b[1:])["overall"]["relative"]["mean"])
    assert d["difference"] == pytest.approx(d["relative_a"] - d["relative_b"])
    assert d["ci_low"] < d["difference"] < d["ci_high"]
    assert d["ci_low"] > 0  # one point better on every question: the interval leaves out 0
    assert paired_difference(a, b, n_boot=500) == d  # seeded: the same inputs, the same interval


def test_paired_difference_of_identical_candidates_is_zero_and_narrows_with_more_questions() -> None:
    from lion.evalscore import paired_difference

    a, _ = _pair(40)
    same = paired_difference(a, a, n_boot=300)
    assert same["difference"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0
    small = paired_difference(*_pair(20, shift=0.3, seed=1), n_boot=1000)
    large = paired_difference(*_pair(320, shift=0.3, seed=1), n_boot=1000)
    assert large["ci_high"] - large["ci_low"] < 0.6 * (small["ci_high"] - small["ci_low"])
    one = paired_difference(*_pair(1, shift=1.0), n_boot=50)  # one question: every resample is that question
    assert one["ci_low"] == pytest.approx(one["difference"]) == pytest.approx(one["ci_high"])
    empty = paired_difference([], a)
    assert empty["n"] == 0 and empty["difference"] is None and empty["n_only_b"] == 40
