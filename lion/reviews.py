"""Replay judge reviews: parse reviews that already exist and recompute the relative score, calling no model.

    python -m lion.evaluate --reviews REVIEWS.jsonl [--answers REF.jsonl CAND.jsonl] [--questions Q.jsonl]
                            [--format fastchat|lion]

Review rows: FastChat review files ({"question_id", "answer1_id", "answer2_id", "text", "score": [s1, s2]}) or
lion's judgements.jsonl ({"id", "order", "raw", "reference_score", "candidate_score", ...}); the reply is read from
"text" (or "raw") with the verdict parser of `--format` (lion.verdicts; default fastchat).

Which answer was shown first: with `--answers REF.jsonl CAND.jsonl` (FastChat answer files {"answer_id",
"model_id", "question_id", "text"}: the reference's and the candidate's), each row's answer1_id / answer2_id say
it (reference first: order ref_first; candidate first: cand_first), and the two answer texts feed the parser's
copied-line defence. Without them, a row's "order" field says it, else Assistant 1 is the reference (FastChat's
review files put the reference model, gpt-3.5-turbo, first).

The relative score is 100 * (candidate's score sum) / (reference's score sum) (lion.evalscore): with both orders
in the file, exactly as `lion.evaluate` computes it (over the questions parsed in both orders, and their mean);
with one order, that order's figure over its parsed reviews. The same figures are computed from the scores the rows
recorded ("score", or our reference/candidate scores), so a replay shows whether the parser agrees with them.
A review that cannot be parsed is excluded and counted, never scored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .evalscore import QuestionScores, format_summary, relative, summarize, zero_scores
from .records import iter_jsonl
from .referee import ORDERS, Order
from .verdicts import Verdict, get_format

__all__ = ["Review", "Replayed", "load_answer_file", "load_reviews", "replay", "score_summary", "replay_report"]


@dataclass(frozen=True)
class Review:
    """One existing review of one question in one order."""

    line: int
    qid: str
    order: Order
    text: str | None
    answers: tuple[str, ...]  # the texts shown first and second, when known (for the copied-line defence)
    recorded: tuple[float, float] | None  # recorded scores of the answers shown first and second
    category: str = ""


@dataclass(frozen=True)
class Answers:
    """One FastChat answer file: answer_id -> (question_id, text), and the model that wrote them."""

    path: Path
    model: str
    by_id: dict[str, tuple[str, str]]


def load_answer_file(path: str | Path) -> Answers:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: answers file not found")
    by_id: dict[str, tuple[str, str]] = {}
    models: set[str] = set()
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or row.get("answer_id") is None:
            raise DataError(f"{path}:{lineno}: expected a FastChat answer row with 'answer_id' and 'text'")
        by_id[str(row["answer_id"])] = (str(row.get("question_id")), row["text"])
        if row.get("model_id"):
            models.add(str(row["model_id"]))
    return Answers(path, ", ".join(sorted(models)) or path.stem, by_id)


def _recorded(row: dict[str, Any], order: Order, where: str) -> tuple[float, float] | None:
    """Recorded scores of (shown first, shown second): FastChat's "score", or our role-named scores."""
    score = row.get("score")
    if score is not None:
        if not (isinstance(score, list) and len(score) == 2 and all(isinstance(x, int | float) for x in score)):
            raise DataError(f"{where}: 'score' must be a list of two numbers, got {score!r}")
        return None if -1 in score else (float(score[0]), float(score[1]))  # [-1, -1]: FastChat could not parse
    for ref_key, cand_key in (("reference_score", "candidate_score"), ("teacher_score", "student_score")):
        ref, cand = row.get(ref_key), row.get(cand_key)
        if isinstance(ref, int | float) and isinstance(cand, int | float):
            return (float(ref), float(cand)) if order == "ref_first" else (float(cand), float(ref))
    return None


def load_reviews(
    path: str | Path, answers: Sequence[str | Path] | None = None, categories: dict[str, str] | None = None
) -> tuple[list[Review], tuple[str, str] | None]:
    """The reviews of `path`, and (with `answers` = (reference file, candidate file)) the two models' names."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: reviews file not found")
    ref = cand = None
    if answers is not None:
        if len(answers) != 2:
            raise DataError(f"--answers: give the reference's and the candidate's answer files, got {len(answers)}")
        ref, cand = load_answer_file(answers[0]), load_answer_file(answers[1])
    out: list[Review] = []
    seen: dict[tuple[str, Order], int] = {}
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        text = row.get("text", row.get("raw"))
        if text is not None and not isinstance(text, str):
            raise DataError(f"{where}: the review must be a string under 'text' or 'raw'")
        qid = row.get("question_id", row.get("id"))
        if qid is None:
            raise DataError(f"{where}: no 'question_id' or 'id' (which question does the review judge?)")
        qid = str(qid)
        shown: tuple[str, ...] = ()
        if ref is not None and cand is not None:
            a1, a2 = (str(row.get(k)) for k in ("answer1_id", "answer2_id"))
            if a1 in ref.by_id and a2 in cand.by_id:
                order: Order = "ref_first"
                first, second = ref.by_id[a1], cand.by_id[a2]
            elif a1 in cand.by_id and a2 in ref.by_id:
                order = "cand_first"
                first, second = cand.by_id[a1], ref.by_id[a2]
            else:
                raise DataError(
                    f"{where}: answer1_id {a1} / answer2_id {a2} are not one answer of {ref.path} and one of "
                    f"{cand.path}; are these the answers the review judged?"
                )
            if {first[0], second[0]} != {qid}:
                raise DataError(f"{where}: the answers {a1} / {a2} answer question {first[0]} / {second[0]}, "
                                f"not {qid}")
            shown = (first[1], second[1])
        else:
            o = row.get("order", "ref_first")
            if o not in ORDERS:
                raise DataError(f"{where}: 'order' must be one of {', '.join(ORDERS)}, got {o!r}")
            order = o
        if (qid, order) in seen:
            raise DataError(f"{where}: a second review of question {qid} in order {order} (the first is on line "
                            f"{seen[(qid, order)]})")
        seen[(qid, order)] = lineno
        category = (categories or {}).get(qid) or str(row.get("category") or "")
        out.append(Review(lineno, qid, order, text, shown, _recorded(row, order, where), category))
    if not out:
        raise DataError(f"{path}: no reviews in the file")
    return out, ((ref.model, cand.model) if ref is not None and cand is not None else None)


@dataclass(frozen=True)
class Replayed:
    review: Review
    verdict: Verdict

    @staticmethod
    def _cand_ref(order: Order, pair: tuple[float, float] | None) -> tuple[float, float] | None:
        if pair is None:
            return None
        first, second = pair
        return (second, first) if order == "ref_first" else (first, second)

    @property
    def parsed(self) -> tuple[float, float] | None:
        """(candidate score, reference score) from the parsed verdict; None when it failed."""
        return self._cand_ref(self.review.order, self.verdict.as_tuple())

    @property
    def recorded(self) -> tuple[float, float] | None:
        """(candidate score, reference score) as the row recorded them."""
        return self._cand_ref(self.review.order, self.review.recorded)


def replay(reviews: Sequence[Review], verdict_format: str = "fastchat") -> list[Replayed]:
    parse = get_format(verdict_format)
    return [Replayed(r, parse(r.text, r.answers)) for r in reviews]


def _one_order(items: Sequence[tuple[str, tuple[float, float] | None]], order: Order) -> dict[str, Any]:
    """summarize_group's figures when only one order was judged: that order's relative score, no mean."""
    ok = [s for _, s in items if s is not None]
    rel = relative(sum(c for c, _ in ok), sum(r for _, r in ok))
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "n": len(items),
        "n_scored": len(ok),
        "n_excluded": len(items) - len(ok),
        "relative": {**{o: (rel if o == order else None) for o in ORDERS}, "mean": None},
        "candidate_mean": mean([c for c, _ in ok]),
        "reference_mean": mean([r for _, r in ok]),
        "win": sum(1 for c, r in ok if c > r),
        "tie": sum(1 for c, r in ok if c == r),
        "loss": sum(1 for c, r in ok if c < r),
    }


def score_summary(replayed: Sequence[Replayed], recorded: bool = False) -> dict[str, Any]:
    """lion.evalscore's summary (overall, by_category, judge) of the parsed (or the recorded) scores."""
    orders = sorted({x.review.order for x in replayed}, key=ORDERS.index)
    scores = [(x, x.recorded if recorded else x.parsed) for x in replayed]
    if len(orders) == len(ORDERS):
        by_q: dict[str, QuestionScores] = {}
        for x, s in scores:
            q = by_q.setdefault(x.review.qid, QuestionScores(x.review.qid, x.review.category, {o: None for o in ORDERS}))
            q.scores[x.review.order] = s
        return summarize(by_q.values())
    order = orders[0]
    cats: dict[str, list[tuple[str, tuple[float, float] | None]]] = {}
    for x, s in scores:
        cats.setdefault(x.review.category or "uncategorised", []).append((x.review.qid, s))
    failed = sum(1 for _, s in scores if s is None)
    adv = [(r - c) if order == "ref_first" else (c - r) for _, s in scores if s is not None for c, r in [s]]
    return {
        "overall": _one_order([(x.review.qid, s) for x, s in scores], order),
        "by_category": {c: _one_order(cats[c], order) for c in sorted(cats)},
        "judge": {
            "orders_judged": len(scores),
            "parse_failures": failed,
            "parse_failure_rate": failed / len(scores) if scores else 0.0,
            "pairs_excluded": failed,
            "swap_flip_rate": None,
            "first_position_advantage": sum(adv) / len(adv) if adv else None,
            "zero_scores": zero_scores(s for _, s in scores if s is not None),
        },
    }


def replay_report(
    path: str | Path, answers: Sequence[str | Path] | None = None, questions: str | None = None,
    verdict_format: str = "fastchat",
) -> tuple[dict[str, Any], str]:
    """(the JSON summary, the text to print) of replaying the reviews in `path`."""
    categories: dict[str, str] = {}
    if questions:
        from .records import load_instructions

        insts, _ = load_instructions(questions)
        categories = {str(i.meta["question_id"]): str(i.meta.get("category") or "")
                      for i in insts if i.meta.get("question_id") is not None}
    reviews, models = load_reviews(path, answers, categories)
    replayed = replay(reviews, verdict_format)
    n = len(replayed)
    parsed = sum(1 for x in replayed if x.verdict.ok)
    with_score = [x for x in replayed if x.review.recorded is not None]
    agree = sum(1 for x in with_score if x.verdict.ok and x.verdict.as_tuple() == x.review.recorded)
    parsed_summary = score_summary(replayed)
    if models is not None:
        names = models
    elif all(r.order == "ref_first" for r in reviews):  # nothing says otherwise: FastChat's Assistant 1 / 2
        names = ("Assistant 1", "Assistant 2")
    else:
        names = ("reference", "candidate")
    recorded_summary = score_summary(with_score, recorded=True) if with_score else None
    result: dict[str, Any] = {
        "reviews": str(path),
        "format": verdict_format,
        "rows": n,
        "parsed": parsed,
        "failed": n - parsed,
        "parse_rate": parsed / n,
        "with_score": len(with_score),
        "agree": agree,
        "agreement": agree / len(with_score) if with_score else None,
        "zero_scores": parsed_summary["judge"]["zero_scores"],
        "orders": sorted({x.review.order for x in replayed}, key=ORDERS.index),
        "reference": names[0],
        "candidate": names[1],
        "relative": parsed_summary["overall"]["relative"],
        "recorded_relative": recorded_summary["overall"]["relative"] if recorded_summary else None,
        "summary": parsed_summary,
    }
    lines = [
        f"reviews {path} (format {verdict_format}): {n} rows, {parsed} parsed ({parsed / n:.1%}), {n - parsed} failed",
    ]
    for x in [x for x in replayed if not x.verdict.ok][:10]:
        lines.append(f"  failed: line {x.review.line} (question {x.review.qid}, {x.review.order}): {x.verdict.error}")
    if with_score:
        lines.append(f"recorded scores: {agree} of {len(with_score)} reviews agree with the parsed verdict "
                     f"({agree / len(with_score):.1%})")
        for x in [x for x in with_score if x.verdict.ok and x.verdict.as_tuple() != x.review.recorded][:10]:
            a, b = x.verdict.as_tuple()  # type: ignore[misc]
            lines.append(f"  disagrees: line {x.review.line} (question {x.review.qid}): the text gives ({a:g}, {b:g}), "
                         f"the row recorded {list(x.review.recorded)} (the text is trusted)")  # type: ignore[arg-type]
    lines.append(format_summary(parsed_summary, title=f"{result['candidate']} (candidate) vs {result['reference']} "
                                                      "(reference), replayed"))
    if recorded_summary:
        rel = recorded_summary["overall"]["relative"]
        lines.append("recorded scores give: " + ", ".join(
            f"{k} {'-' if v is None else format(v, '.2f')}" for k, v in rel.items()))
    lines.append(json.dumps({k: v for k, v in result.items() if k != "summary"}))
    return result, "\n".join(lines)
