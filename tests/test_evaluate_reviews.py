"""python -m lion.evaluate --reviews: the relative score recomputed from existing judge reviews, no model called.

    python -m pytest -q tests/test_evaluate_reviews.py

The headline check: FastChat's 80 real GPT-4 reviews of gpt-3.5-turbo (Assistant 1, the reference) vs Vicuna-13B
(Assistant 2, the candidate) on Vicuna-80 record scores that sum to 693 for gpt-3.5-turbo and 638 for Vicuna-13B,
so the relative score they give is 100 * 638 / 693 = 92.06 (Vicuna's "92% of ChatGPT"). Parsing the review texts
again must give exactly that number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import shared_file

from lion.errors import DataError
from lion.evalscore import QuestionScores, summarize
from lion.evaluate import main
from lion.reviews import replay_report

REVIEWS = "real_reviews/vicuna-13b_20230322-clean-lang__review_gpt35_vicuna-13b.jsonl"
VICUNA_13B_VS_GPT35 = 100 * 638 / 693  # 92.0634...: what FastChat's recorded scores give


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(shared_data: Path) -> dict[str, Path]:
    return {
        "reviews": shared_file(shared_data, REVIEWS),
        "ref": shared_file(shared_data, "vicuna80/answer_gpt35.jsonl"),
        "cand": shared_file(shared_data, "vicuna80/answer_vicuna-13b.jsonl"),
        "questions": shared_file(shared_data, "vicuna80/question.jsonl"),
    }


def _last_json(out: str) -> dict[str, Any]:
    return json.loads(out.strip().splitlines()[-1])


def test_relative_score_of_vicuna_13b_recomputed_from_real_reviews(files, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = _jsonl(files["reviews"])
    assert sum(r["score"][0] for r in recorded) == 693 and sum(r["score"][1] for r in recorded) == 638
    argv = ["--reviews", str(files["reviews"]), "--answers", str(files["ref"]), str(files["cand"]),
            "--questions", str(files["questions"])]
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = _last_json(out)
    assert (result["rows"], result["parsed"], result["failed"]) == (80, 80, 0)
    assert result["parse_rate"] >= 0.99 and result["agreement"] == 1.0
    assert result["relative"]["ref_first"] == pytest.approx(VICUNA_13B_VS_GPT35, abs=1e-9)
    assert result["recorded_relative"]["ref_first"] == pytest.approx(VICUNA_13B_VS_GPT35, abs=1e-9)
    assert result["relative"]["cand_first"] is None and result["relative"]["mean"] is None  # one order only
    assert result["orders"] == ["ref_first"]
    assert result["reference"].startswith("gpt-3.5-turbo") and result["candidate"].startswith("vicuna-13b")
    assert "92.06" in out and "math" in out and "coding" in out  # the per-category table, from --questions


def test_without_answers_assistant_1_is_the_reference(files) -> None:
    result, text = replay_report(files["reviews"])
    assert result["relative"]["ref_first"] == pytest.approx(VICUNA_13B_VS_GPT35, abs=1e-9)
    assert (result["reference"], result["candidate"]) == ("Assistant 1", "Assistant 2")
    assert "uncategorised" in text  # no question file: no categories


def test_both_orders_give_the_mean_as_lion_evaluate_computes_it(tmp_path: Path, files) -> None:
    """The real reviews (reference first) plus a review of each question with the candidate shown first (made up
    here: the first-shown answer gets one point more, capped at 10); one of those fails to parse."""
    recorded = _jsonl(files["reviews"])
    swapped = []
    for r in recorded:
        ref, cand = r["score"]
        first = min(10.0, cand + 1)
        text = f"{first:g} {ref:g}\nThe answer shown first is a little better." if r["question_id"] != 5 else "n/a"
        swapped.append({"question_id": r["question_id"], "answer1_id": r["answer2_id"], "answer2_id": r["answer1_id"],
                        "text": text, "score": [first, ref]})
    both = _write(tmp_path / "both.jsonl", recorded + swapped)
    result, text = replay_report(both, [files["ref"], files["cand"]])
    assert result["orders"] == ["ref_first", "cand_first"] and (result["parsed"], result["failed"]) == (159, 1)
    assert "line 85 (question 5, cand_first)" in text  # the failure is shown, not hidden
    # what lion.evalscore gives on the same scores: question 5 is excluded from both orders
    rows = []
    for r, s in zip(recorded, swapped, strict=True):
        ok = r["question_id"] != 5
        rows.append(QuestionScores(str(r["question_id"]), "", {
            "ref_first": (float(r["score"][1]), float(r["score"][0])),
            "cand_first": (float(s["score"][0]), float(s["score"][1])) if ok else None,
        }))
    want = summarize(rows)["overall"]["relative"]
    assert result["relative"] == pytest.approx(want)
    assert want["mean"] == pytest.approx((want["ref_first"] + want["cand_first"]) / 2)
    assert result["summary"]["overall"]["n_excluded"] == 1 and result["summary"]["judge"]["swap_flip_rate"] > 0


def test_replays_our_own_judgements_in_the_lion_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"id": "q1", "order": "ref_first", "raw": "Fine.\nSCORES: A=8, B=6", "reference_score": 8, "candidate_score": 6},
        {"id": "q1", "order": "cand_first", "raw": "Fine.\nSCORES: A=7, B=8", "reference_score": 8, "candidate_score": 7},
        {"id": "q2", "order": "ref_first", "raw": "SCORES: A=5, B=10", "reference_score": 5, "candidate_score": 10},
        {"id": "q2", "order": "cand_first", "raw": None, "reference_score": None, "candidate_score": None},
    ]
    f = _write(tmp_path / "judgements.jsonl", rows)
    assert main(["--reviews", str(f), "--format", "lion"]) == 0
    result = _last_json(capsys.readouterr().out)
    assert (result["parsed"], result["failed"], result["agreement"]) == (3, 1, 1.0)
    # q2 lacks its cand_first verdict, so only q1 counts: (6 + 7) / (8 + 8)
    assert result["relative"]["mean"] == pytest.approx(100 * 13 / 16)
    assert (result["reference"], result["candidate"]) == ("reference", "candidate")


def test_bad_review_files_name_the_file_and_line(tmp_path: Path, files, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = _jsonl(files["reviews"])
    answers = [files["ref"], files["cand"]]
    bad = _write(tmp_path / "r.jsonl", [recorded[0], {**recorded[1], "answer2_id": "nope"}])
    with pytest.raises(DataError, match=r"r\.jsonl:2: answer1_id .* / answer2_id nope are not one answer of"):
        replay_report(bad, answers)
    bad = _write(tmp_path / "r.jsonl", [recorded[0], {**recorded[1], "answer1_id": recorded[0]["answer1_id"]}])
    with pytest.raises(DataError, match=r"r\.jsonl:2: the answers .* answer question 1 / 2, not 2"):
        replay_report(bad, answers)
    bad = _write(tmp_path / "r.jsonl", [recorded[0], recorded[0]])
    with pytest.raises(DataError, match=r"r\.jsonl:2: a second review of question 1 in order ref_first"):
        replay_report(bad)
    bad = _write(tmp_path / "r.jsonl", [{"text": "8 6"}])
    with pytest.raises(DataError, match=r"r\.jsonl:1: no 'question_id' or 'id'"):
        replay_report(bad)
    bad = _write(tmp_path / "r.jsonl", [{"id": 1, "text": "8 6", "order": "sideways"}])
    with pytest.raises(DataError, match=r"r\.jsonl:1: 'order' must be one of ref_first, cand_first"):
        replay_report(bad)
    with pytest.raises(SystemExit) as e:  # --reviews takes two answer files, the reference's and the candidate's
        main(["--reviews", str(files["reviews"]), "--answers", str(files["ref"])])
    assert e.value.code == 2 and "give two files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # every other mode still needs its config
        main(["--model", "x"])
    assert e.value.code == 2 and "--config" in capsys.readouterr().err


def test_a_file_with_no_readable_review_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _write(tmp_path / "r.jsonl", [{"question_id": 1, "text": "I liked both."}])
    assert main(["--reviews", str(f)]) == 1
    result = _last_json(capsys.readouterr().out)
    assert result["parsed"] == 0 and result["relative"]["ref_first"] is None  # no number from nothing


def test_what_the_judge_really_writes_a_zero_a_closing_tuple_and_a_misrecorded_score(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three shapes FastChat's GPT-4 judge wrote in its 2023 tables (texts written here, not copied): a `0` for an
    empty answer (a score, counted: excluding the pair would raise the empty side's relative score), a math review
    whose only scores close a sentence after the tuple, and a review whose recorded score disagrees with its text
    (the text is trusted)."""
    rows = [
        {"question_id": 1, "score": [8.0, 0.0],
         "text": "8 0\nAssistant 1 wrote a clear and complete letter. Assistant 2 left the answer empty, so it gets 0."},
        {"question_id": 2, "score": [10, 3],
         "text": "I solve it first: 12 * 7 = 84.\n\nAssistant 1 shows each step and reaches 84. Assistant 2 reaches 74."
                 "\n\nThe output tuple is (10, 3). Assistant 1 did better on this problem."},
        {"question_id": 3, "score": [9, 2],
         "text": "I solve it first: 2 ** 5 = 32.\n\nScores:\nAssistant 1: 9\nAssistant 2: 6\n\nAssistant 1 is exact."},
    ]
    f = _write(tmp_path / "r.jsonl", rows)
    result, text = replay_report(f)
    assert (result["rows"], result["parsed"], result["failed"]) == (3, 3, 0)
    assert result["zero_scores"] == 1
    assert (result["with_score"], result["agree"]) == (3, 2)
    assert "question 3): the text gives (9, 6), the row recorded [9.0, 2.0] (the text is trusted)" in text
    # Assistant 1 is the reference: the candidate's sum counts the 0 and the text's 6, not the recorded 2
    assert result["relative"]["ref_first"] == pytest.approx(100 * (0 + 3 + 6) / (8 + 10 + 9))
    assert result["recorded_relative"]["ref_first"] == pytest.approx(100 * (0 + 3 + 2) / (8 + 10 + 9))
    assert "1 zero scores" in text
