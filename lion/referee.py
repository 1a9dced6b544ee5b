"""The referee: render the comparison prompt, read the verdict, judge answer pairs in both orders.

    python -m lion.referee [--format lion|fastchat] FILE.jsonl   # parse judge replies (one per row, under "text"
                                                                 # or "raw"): one JSON line per row, then a summary

Used by discrimination (teacher vs student) and by evaluation's judge (reference vs candidate).

The prompt is a `lion.judge_prompts.JudgePrompt`: one of our templates (prompts/referee.txt, `eval.judge_template`)
or a FastChat-style prompt file (`eval.judge_prompts`, `discrimination.referee_prompts`) routed by question
category. Each prompt declares the verdict format its replies come in; `lion.verdicts` holds the parsers (`lion`:
a final `SCORES: A=<score>, B=<score>` line; `fastchat`: the Vicuna/FastChat GPT-4 judge's first-line pair,
`(s1, s2)` tuple or `Assistant 1: s1` lines) and their rules: quoted answer text never counts, conflicting
verdicts fail, a failure is never a number. `parse_verdict(text, answers, format=...)` is re-exported here.

`judge_pairs` judges `Pair(id, instruction, reference, candidate, category)` items in the two orders `ORDERS`
("ref_first": the reference shown first, as A / Assistant 1; "cand_first": the candidate shown first) through the
gateway: all first attempts in one concurrent batch, then every unparseable or failed one again as the next batch
with a new sample index (the call cache would otherwise replay the same text), up to `attempts` tries. Each order's
outcome is an `OrderVerdict` (with the name of the prompt that judged it); a `PairJudgement` is `ok` only when every
order has a verdict; a failed pair keeps its raw texts and errors but gets no score; failures are never turned into
numbers. In discrimination the reference is the teacher and the candidate the student; in evaluation, the
reference answer and the evaluated model.

The command line reads JSONL rows (a FastChat review file, our judgements.jsonl, or any rows with the reply under
"text" or "raw"; optional "answers": [shown first, shown second] for the copied-line defence, and a recorded
"score": [s1, s2] to compare with) and prints `{"id", "a", "b"}` or `{"id", "error"}` per row (with "agree" when
the row has a score), then one summary line {"rows", "parsed", "failed", "parse_rate"} (and, when rows carry a
score, "with_score", "agree", "disagree", "agreement"; a reply that failed counts as not agreeing; FastChat's own
"could not parse" score [-1, -1] is counted apart as "score_unparsed").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from .judge_prompts import JudgePrompt, JudgePrompts, TemplateJudge, judge_router, neutralise
from .prompts import Template
from .verdicts import FORMATS, Verdict, get_format, parse_verdict

__all__ = [
    "ORDERS", "Order", "Pair", "OrderVerdict", "PairJudgement", "Verdict", "parse_verdict", "referee_messages",
    "judge_pairs", "neutralise",
]

# ------------------------------------------------------------------------------------------------ rendering


def referee_messages(template: Template, instruction: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The chat messages asking the referee to compare answer_a (shown as A) with answer_b (shown as B)."""
    return TemplateJudge(template).messages(instruction, answer_a, answer_b)


# ------------------------------------------------------------------------------------------------ judging

# A pair holds a reference answer (the teacher's in discrimination, the reference in evaluation) and a candidate
# answer (the student's). The two presentation orders: the reference shown as A, or the candidate shown as A.
Order = Literal["ref_first", "cand_first"]
CALL_FAILED = "call failed"  # the start of an OrderVerdict's error when its call failed (not its verdict)
ORDERS: tuple[Order, Order] = ("ref_first", "cand_first")


class Pair(NamedTuple):
    """What the referee compares: an instruction, a reference answer and a candidate answer (and the question's
    category, which picks the prompt when the judge prompts are routed by category)."""

    id: str
    instruction: str
    reference: str
    candidate: str
    category: str = ""


@dataclass(frozen=True)
class Attempt:
    """An earlier reply to one order that could not be used (kept for inspection)."""

    raw: str | None
    error: str | None


@dataclass(frozen=True)
class OrderVerdict:
    """The referee's verdict on one pair in one order: scores for the reference and the candidate, or the error."""

    order: Order
    raw: str | None  # the last reply (None when the call failed)
    reference_score: float | None
    candidate_score: float | None
    error: str | None  # why there is no verdict; None when there is one
    attempts: int
    rejected: tuple[Attempt, ...] = ()  # earlier unusable replies
    prompt: str | None = None  # the judge prompt that asked (a template name, or FILE:category)
    model: str | None = None  # the snapshot the provider said answered (lion.snapshots), when it said
    fingerprint: str | None = None  # its system_fingerprint, when given

    @property
    def ok(self) -> bool:
        return self.error is None and self.reference_score is not None and self.candidate_score is not None

    @property
    def call_failed(self) -> bool:
        """No verdict because the last try's call failed (the gateway's reason is in `error`), not its text."""
        return (self.error or "").startswith(CALL_FAILED)

    def to_row(self, id: str, reference: str = "reference", candidate: str = "candidate") -> dict[str, Any]:
        """A judgements.jsonl row; the scores are named after the pair's roles (e.g. teacher / student)."""
        return {
            "id": id,
            "order": self.order,
            "raw": self.raw,
            f"{reference}_score": self.reference_score,
            f"{candidate}_score": self.candidate_score,
            "ok": self.ok,
            "error": self.error,
            "attempts": self.attempts,
            "rejected": [asdict(a) for a in self.rejected],
            "prompt": self.prompt,
            **({"model": self.model} if self.model else {}),
            **({"fingerprint": self.fingerprint} if self.fingerprint else {}),
        }


@dataclass(frozen=True)
class PairJudgement:
    """Both orders of one pair. `ok` only when every order has a verdict; a failed pair gets no score."""

    id: str
    verdicts: tuple[OrderVerdict, ...]

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def unparsed(self) -> bool:
        """No score because an order's every reply was unreadable (not because a call failed)."""
        return not self.ok and not any(v.call_failed for v in self.verdicts)

    def _mean(self, scores: list[float | None]) -> float | None:
        return sum(s for s in scores if s is not None) / len(scores) if self.ok else None

    @property
    def reference_score(self) -> float | None:
        """Mean over the orders; None unless every order has a verdict."""
        return self._mean([v.reference_score for v in self.verdicts])

    @property
    def candidate_score(self) -> float | None:
        return self._mean([v.candidate_score for v in self.verdicts])

    @property
    def flipped(self) -> bool | None:
        """Does the preferred answer (reference, candidate or a tie) change with the order? None unless both
        orders were judged and parsed."""
        if not self.ok or len(self.verdicts) != 2:
            return None
        a, b = (_preference(v.reference_score, v.candidate_score) for v in self.verdicts)  # type: ignore[arg-type]
        return a != b


def _preference(ref: float, cand: float) -> str:
    return "ref" if ref > cand else "cand" if cand > ref else "tie"


def judge_pairs(
    gateway: Any,
    role: str,
    phase: str,
    items: Sequence[Pair | tuple[str, str, str, str] | tuple[str, str, str, str, str]],
    template: Template | JudgePrompt | JudgePrompts,
    *,
    attempts: int = 3,
    both_orders: bool = True,
    desc: str = "",
    retry_temperature: float | None = None,
) -> list[PairJudgement]:
    """Judge (id, instruction, reference, candidate[, category]) pairs; one PairJudgement per pair, in input order.

    `template`: one of our templates, any JudgePrompt, or a FastChat prompt file (each pair then gets the prompt of
    its category); the replies are read in the verdict format that prompt declares.
    `retry_temperature`: sampling temperature for retries (None: the role's own); a temperature-0 referee
    that wrote an unreadable reply tends to write it again, so a little temperature can help the retry.
    """
    from .teachers.base import ChatRequest

    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    pairs = [Pair(*it) for it in items]
    route = judge_router(template)
    prompts = [route(p.category) for p in pairs]
    orders = ORDERS if both_orders else ORDERS[:1]
    last: dict[tuple[int, Order], OrderVerdict] = {}
    jobs = [(k, o) for k in range(len(pairs)) for o in orders]

    def shown(k: int, o: Order) -> tuple[str, str, str]:
        p = pairs[k]
        return (p.instruction, p.reference, p.candidate) if o == "ref_first" else (p.instruction, p.candidate, p.reference)

    pending = jobs
    for attempt in range(attempts):
        if not pending:
            break
        temp = retry_temperature if attempt > 0 else None
        requests = [
            ChatRequest(messages=prompts[k].messages(*shown(k, o)), sample=attempt, temperature=temp)
            for k, o in pending
        ]
        label = desc or f"{role} ({phase})"
        results = gateway.chat_many(role, phase, requests, desc=label if attempt == 0 else f"{label} retry {attempt}")
        retry: list[tuple[int, Order]] = []
        for (k, o), res in zip(pending, results, strict=True):
            before = last.get((k, o))
            rejected = (*before.rejected, Attempt(before.raw, before.error)) if before is not None else ()
            name = prompts[k].name
            if not res.ok:
                error = f"{CALL_FAILED}: {res.error}"
                last[(k, o)] = OrderVerdict(o, None, None, None, error, attempt + 1, rejected, name)
                retry.append((k, o))
                continue
            _, a, b = shown(k, o)
            v = get_format(prompts[k].verdict_format)(res.text, (a, b))
            snap = {"model": res.served_model, "fingerprint": res.fingerprint}
            if not v.ok:
                error = f"unparseable verdict: {v.error}"
                last[(k, o)] = OrderVerdict(o, res.text, None, None, error, attempt + 1, rejected, name, **snap)
                retry.append((k, o))
                continue
            ref, cand = (v.a, v.b) if o == "ref_first" else (v.b, v.a)
            last[(k, o)] = OrderVerdict(o, res.text, ref, cand, None, attempt + 1, rejected, name, **snap)
        pending = retry
    return [PairJudgement(p.id, tuple(last[(k, o)] for o in orders)) for k, p in enumerate(pairs)]


# ------------------------------------------------------------------------------------------------ CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.referee", description="Parse judge replies and print verdicts.")
    p.add_argument("file", help="JSONL with the reply under 'text' or 'raw' (or a plain text file: one reply)")
    p.add_argument("--format", default="lion", choices=sorted(FORMATS),
                   help="verdict format of the replies (default: lion; FastChat review files: fastchat)")
    return p


def _row_id(row: dict[str, Any], lineno: int) -> Any:
    for key in ("id", "review_id", "question_id"):
        if row.get(key) is not None:
            return row[key]
    return lineno


def _recorded(row: dict[str, Any], where: str) -> tuple[float, float] | None:
    """The row's recorded "score" pair (None when it has none)."""
    from .errors import DataError

    score = row.get("score")
    if score is None:
        return None
    if not (isinstance(score, list) and len(score) == 2 and all(isinstance(x, int | float) for x in score)):
        raise DataError(f"{where}: 'score' must be a list of two numbers, got {score!r}")
    return float(score[0]), float(score[1])


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import DataError

    args = make_parser().parse_args(argv)
    parse = get_format(args.format)
    path = Path(args.file)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows: list[tuple[Any, str | None, tuple[str, ...], tuple[float, float] | None]] = []
    if path.suffix == ".jsonl":
        from .records import iter_jsonl

        for lineno, row in iter_jsonl(path):
            t = row.get("text", row.get("raw")) if isinstance(row, dict) else None
            if not isinstance(t, str) and not (isinstance(row, dict) and "raw" in row and t is None):
                raise DataError(f"{path}:{lineno}: expected an object with the reply as a string under 'text' or 'raw'")
            answers = row.get("answers", ())
            if not (isinstance(answers, list | tuple) and all(isinstance(x, str) for x in answers)):
                raise DataError(f"{path}:{lineno}: 'answers' must be a list of the answer texts")
            rows.append((_row_id(row, lineno), t, tuple(answers), _recorded(row, f"{path}:{lineno}")))
    else:
        rows.append((1, path.read_text(encoding="utf-8"), (), None))
    parsed = with_score = agree = unparsed_score = 0
    for rid, text, answers, score in rows:
        v = parse(text, answers)
        parsed += v.ok
        out: dict[str, Any] = {"id": rid, "a": v.a, "b": v.b} if v.ok else {"id": rid, "error": v.error}
        if score is not None:
            if score == (-1.0, -1.0):  # FastChat's own "could not parse": nothing to agree with
                unparsed_score += 1
            else:
                with_score += 1
                out["agree"] = v.ok and (v.a, v.b) == score
                agree += out["agree"]
        print(json.dumps(out, ensure_ascii=False))
    n = len(rows)
    summary: dict[str, Any] = {"rows": n, "parsed": parsed, "failed": n - parsed, "parse_rate": parsed / n if n else None}
    if with_score or unparsed_score:
        summary.update(with_score=with_score, agree=agree, disagree=with_score - agree,
                       agreement=agree / with_score if with_score else None, score_unparsed=unparsed_score)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
