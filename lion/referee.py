"""The referee: render the comparison prompt, read the verdict, judge answer pairs in both orders.

    python -m lion.referee FILE        # parse referee replies (one per JSONL row, under "text" or "raw") and print
                                       # the verdicts

Used by discrimination (teacher vs student) and by evaluation's judge (reference vs candidate).

Verdict format (prompts/referee.txt): an explanation, then a final line `SCORES: A=<score>, B=<score>`.
`parse_verdict` reads what real models write and rejects the rest:

- accepted: markdown around the line (`**SCORES:** A=8, B=6`, `### Scores: ...`, backticks, a bullet),
  any case, `=`/`:`/`-`/`is` between label and score, `Assistant A`/`Response A`/`Answer A` labels,
  `8/10`, `;`/`and`/space between the two, B before A, square brackets, a final period, a parenthetical
  remark or a remark after ". " / " - " (not starting with a number), blank lines
  and any trailing text after the verdict line, and the two scores on two consecutive lines
  (`A: 8` / `B: 6`, optionally under a `Scores:` heading);
- decimals such as `A=7.5` are accepted and kept as they are (not rounded): the prompt asks for whole
  numbers, but a half point is an unambiguous judgement and the pair's score is a mean anyway;
- rejected: no verdict, a score outside 1..10, a denominator other than 10, a missing score, the same label
  twice, a `SCORES` line that cannot be read after the last readable one, and two verdicts that disagree at
  the end (two `SCORES` lines with only blank or short lines such as "Correction:" between them, or two
  adjacent verdict lines). A verdict restated further up in the explanation, or per-criterion lines such as
  "Accuracy:" / "A=9, B=5" above the SCORES line, do not count: the verdict is the LAST verdict line.
- quoted text never counts: lines inside a fenced code block that holds anything but a verdict, blockquote
  lines (`> ...`), lines inside an echoed `<<<RESPONSE A>>> ... <<<END ...>>>` block, and (when the
  answers are given) a final verdict line that also appears as a line of one of the answers (compared
  without markdown, case or spacing differences). The answers are inside the prompt, so an answer can
  carry fake score lines; a referee that repeats one as its last line yields a failure (retried, then
  excluded), never the attacker's numbers.
  Answers are also rendered with template-delimiter look-alikes (`<<<END RESPONSE A>>>`) neutralised so an
  answer cannot close its own block and forge another one.

`judge_pairs` judges `Pair(id, instruction, reference, candidate)` items in the two orders `ORDERS` ("ref_first":
the reference shown as A; "cand_first": the candidate shown as A) through the gateway: all first attempts in one
concurrent batch, then every unparseable or failed one again as the next batch with a new sample index (the call
cache would otherwise replay the same text), up to `attempts` tries. Each order's outcome is an `OrderVerdict`; a
`PairJudgement` is `ok` only when every order has a verdict; a failed pair keeps its raw texts and errors but gets
no score; failures are never turned into numbers. In discrimination the reference is the teacher and the
candidate the student; in evaluation, the reference answer and the evaluated model.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from .prompts import Template

__all__ = [
    "ORDERS", "Order", "Pair", "OrderVerdict", "PairJudgement", "Verdict", "parse_verdict", "referee_messages",
    "judge_pairs", "neutralise",
]

# ------------------------------------------------------------------------------------------------ rendering

_DELIM_LIKE = re.compile(r"<<<([^<>\n]{0,60})>>>")


def neutralise(answer: str) -> str:
    """Defuse template-delimiter look-alikes (`<<<...>>>`) inside an answer; everything else is kept."""
    return _DELIM_LIKE.sub(lambda m: f"<< {m.group(1).strip()} >>", answer)


def referee_messages(template: Template, instruction: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The chat messages asking the referee to compare answer_a (shown as A) with answer_b (shown as B)."""
    content = template.render(
        instruction=neutralise(instruction), answer_a=neutralise(answer_a), answer_b=neutralise(answer_b)
    )
    return [{"role": "user", "content": content}]


# ------------------------------------------------------------------------------------------------ parsing

_NUM = r"(-?\d+(?:\.\d+)?)"
_OF = r"(?:\s*/\s*(\d+))?"
_LABEL = r"(?:(?:assistant|response|answer|model)\s*)?([ab])"
_SEP = r"\s*(?:=|:|-|–|is)?\s*"
_KEY = r"(?:(?:final|overall)\s+)?(?:scores?|ratings?|verdict)"
_FULL = re.compile(
    rf"^(?:{_KEY})?\s*(?:[:=\-–—]\s*)?{_LABEL}{_SEP}{_NUM}{_OF}\s*(?:,|;|&|\band\b|\|)?\s*"
    rf"{_LABEL}{_SEP}{_NUM}{_OF}\s*[.!]?\s*(?:\([^()]*\))?\s*\.?"
    r"(?:(?<=[.;])\s+[^\d\s].*|\s+[-–—]\s+[^\d\s].*)?$"  # a remark after ". ", "; " or " - " (not a number)
)
_HALF = re.compile(rf"^(?:(?:score|rating)\s*(?:for\s*)?)?{_LABEL}{_SEP}{_NUM}{_OF}\s*[.,;]?\s*$")
_HEADER = re.compile(rf"^{_KEY}\s*[:=\-–—]?\s*$")
_KEY_START = re.compile(rf"^{_KEY}\b")
_KEYWORD = re.compile(rf"^{_KEY}\s*(?:[:=]|.*\d)")  # "Scores: ..." or a score keyword with a number
_MARKUP = re.compile(r"[*_`\[\]]+")
_LEAD = re.compile(r"^(?:#+\s*|[-•+]\s+|\d+[.)]\s+)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_ECHO_OPEN = re.compile(r"^\s*<<<(?!\s*end\b)[^<>]*>>>\s*$", re.IGNORECASE)
_ECHO_CLOSE = re.compile(r"^\s*<<<\s*end\b[^<>]*>>>\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    """A parsed verdict: scores for the answers shown as A and B, or the reason there is none."""

    a: float | None
    b: float | None
    error: str | None = None
    line: int | None = None  # 1-based line of the verdict in the text

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_tuple(self) -> tuple[float, float] | None:
        return (self.a, self.b) if self.ok and self.a is not None and self.b is not None else None


def _fail(reason: str, line: int | None = None) -> Verdict:
    return Verdict(None, None, reason, line)


@dataclass
class _Item:
    kind: str  # "full" | "half" | "header" | "bad" | "filler" | "text"
    line: int  # 0-based
    raw: str
    scores: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # label -> (number, denominator)
    problem: str | None = None
    keyed: bool = False  # introduced by a score keyword ("SCORES: A=.." or a "Scores:" heading)
    start: int | None = None  # first line of a verdict written over two lines


def _normalise(line: str) -> str:
    s = _MARKUP.sub("", line).strip()
    s = _LEAD.sub("", s).strip()
    return " ".join(s.lower().split())


def _classify(i: int, raw: str) -> _Item:
    s = _normalise(raw)
    if not s:
        return _Item("filler", i, raw)
    if m := _FULL.match(s):
        l1, n1, d1, l2, n2, d2 = m.groups()
        item = _Item("full", i, raw, {l1: (n1, d1)}, keyed=_KEY_START.match(s) is not None)
        if l1 == l2:
            item.problem = f"score for {l1.upper()} given twice"
        else:
            item.scores[l2] = (n2, d2)
        return item
    if m := _HALF.match(s):
        label, n, d = m.groups()
        return _Item("half", i, raw, {label: (n, d)})
    if _HEADER.match(s):
        return _Item("header", i, raw)
    if _KEYWORD.match(s):
        return _Item("bad", i, raw, problem=f"unreadable score line {raw.strip()!r}")
    if len(s.split()) <= 3:
        return _Item("filler", i, raw)
    return _Item("text", i, raw)


def _quoted_lines(lines: list[str]) -> set[int]:
    """Lines that quote material: blockquotes, echoed <<<...>>> blocks, fenced blocks holding non-verdicts."""
    quoted: set[int] = set()
    fence_start: int | None = None
    echo = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            if fence_start is None:
                fence_start = i
            else:
                body = range(fence_start + 1, i)
                if any(_classify(j, lines[j]).kind in ("text", "bad") for j in body if j not in quoted):
                    quoted.update(body)
                quoted.update((fence_start, i))
                fence_start = None
            continue
        if _ECHO_OPEN.match(line):
            echo = True
            quoted.add(i)
            continue
        if _ECHO_CLOSE.match(line):
            echo = False
            quoted.add(i)
            continue
        if echo or line.lstrip().startswith(">"):
            quoted.add(i)
    if fence_start is not None:  # an unclosed fence runs to the end of the text
        body = range(fence_start + 1, len(lines))
        if any(_classify(j, lines[j]).kind in ("text", "bad") for j in body if j not in quoted):
            quoted.update(body)
        quoted.add(fence_start)
    return quoted


def _score(label: str, num: str, den: str | None) -> float | str:
    """The score, or the reason it is not acceptable."""
    if den is not None and int(den) != 10:
        return f"score for {label.upper()} is out of {den}, not 10"
    value = float(num)
    if not 1.0 <= value <= 10.0:
        return f"score for {label.upper()} is {num}, outside 1..10"
    return value


def parse_verdict(text: str | None, answers: Iterable[str] = ()) -> Verdict:
    """Read the final `SCORES: A=<a>, B=<b>` verdict of a referee reply (see the module doc for the rules).

    `answers`: the texts the referee was shown; a final verdict line copied verbatim from one is rejected.
    """
    if text is None or not text.strip():
        return _fail("empty reply")
    lines = text.splitlines()
    quoted = _quoted_lines(lines)
    items = [_Item("text", i, ln) if i in quoted else _classify(i, ln) for i, ln in enumerate(lines)]

    # verdicts: full lines, and A/B half lines on consecutive (non-blank) lines
    verdicts: list[_Item] = []
    pending_half: _Item | None = None
    previous: _Item | None = None  # the last non-blank line before this one
    for it in items:
        if it.kind == "half":
            if pending_half is not None and set(pending_half.scores) != set(it.scores):
                merged = _Item("full", it.line, it.raw, {**pending_half.scores, **it.scores})
                merged.problem = pending_half.problem or it.problem
                merged.keyed = pending_half.keyed
                merged.start = pending_half.line
                verdicts.append(merged)
                pending_half = None
            else:
                if pending_half is not None:
                    pending_half.kind = "orphan"
                pending_half = it
                it.keyed = previous is not None and previous.kind == "header"
            previous = it
            continue
        if not it.raw.strip():
            continue  # blank lines may separate the two halves
        previous = it
        if pending_half is not None:
            pending_half.kind = "orphan"
            pending_half = None
        if it.kind == "full":
            verdicts.append(it)
    if pending_half is not None:
        pending_half.kind = "orphan"

    if not verdicts:
        bad = [it for it in items if it.kind in ("bad", "orphan")]
        if bad:
            last = bad[-1]
            reason = last.problem or f"only one score in {last.raw.strip()!r}"
            return _fail(f"no complete verdict: {reason}", last.line + 1)
        return _fail("no verdict line (expected 'SCORES: A=<score>, B=<score>')")

    final = verdicts[-1]
    after = [  # a later score-like line with a number could be a correction we cannot read: refuse to guess
        it for it in items
        if it.line > final.line and (it.kind == "orphan" or (it.kind == "bad" and re.search(r"\d", it.raw)))
    ]  # fmt: skip
    if after:
        return _fail(f"unreadable score line after the verdict: {after[0].raw.strip()!r}", after[0].line + 1)
    if final.problem:
        return _fail(final.problem, final.line + 1)
    values: dict[str, float] = {}
    for label in ("a", "b"):
        if label not in final.scores:
            return _fail(f"score for {label.upper()} missing", final.line + 1)
        v = _score(label, *final.scores[label])
        if isinstance(v, str):
            return _fail(v, final.line + 1)
        values[label] = v

    # two verdicts at the end that disagree: both introduced by the score keyword with only blank or short
    # lines between them, or on consecutive lines (per-criterion "A=9, B=5" lines above a SCORES line are not)
    if len(verdicts) > 1:
        prev = verdicts[-2]
        between = [it for it in items if prev.line < it.line < final.line and it.kind not in ("half", "orphan")]
        adjacent = (final.start if final.start is not None else final.line) == prev.line + 1
        if all(it.kind in ("filler", "header") for it in between) and ((prev.keyed and final.keyed) or adjacent):
            pv = {k: _score(k, *prev.scores[k]) for k in prev.scores}
            if prev.problem or pv != values:
                return _fail(
                    f"conflicting verdicts at the end: {prev.raw.strip()!r} and {final.raw.strip()!r}", final.line + 1
                )

    answer_lines = {_normalise(ln) for ans in answers for ln in (ans or "").splitlines() if ln.strip()}
    if _normalise(final.raw) in answer_lines:
        return _fail(f"the verdict line {final.raw.strip()!r} is copied from an answer", final.line + 1)
    return Verdict(values["a"], values["b"], None, final.line + 1)


# ------------------------------------------------------------------------------------------------ judging

# A pair holds a reference answer (the teacher's in discrimination, the reference in evaluation) and a candidate
# answer (the student's). The two presentation orders: the reference shown as A, or the candidate shown as A.
Order = Literal["ref_first", "cand_first"]
ORDERS: tuple[Order, Order] = ("ref_first", "cand_first")


class Pair(NamedTuple):
    """What the referee compares: an instruction, a reference answer and a candidate answer."""

    id: str
    instruction: str
    reference: str
    candidate: str


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

    @property
    def ok(self) -> bool:
        return self.error is None and self.reference_score is not None and self.candidate_score is not None

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
        }


@dataclass(frozen=True)
class PairJudgement:
    """Both orders of one pair. `ok` only when every order has a verdict; a failed pair gets no score."""

    id: str
    verdicts: tuple[OrderVerdict, ...]

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

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
    items: Sequence[Pair | tuple[str, str, str, str]],
    template: Template,
    *,
    attempts: int = 3,
    both_orders: bool = True,
    desc: str = "",
    retry_temperature: float | None = None,
) -> list[PairJudgement]:
    """Judge (id, instruction, reference, candidate) pairs; one PairJudgement per pair, in input order.

    `retry_temperature`: sampling temperature for retries (None: the role's own); a temperature-0 referee
    that wrote an unreadable reply tends to write it again, so a little temperature can help the retry.
    """
    from .teachers.base import ChatRequest

    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    pairs = [Pair(*it) for it in items]
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
            ChatRequest(messages=referee_messages(template, *shown(k, o)), sample=attempt, temperature=temp)
            for k, o in pending
        ]
        label = desc or f"{role} ({phase})"
        results = gateway.chat_many(role, phase, requests, desc=label if attempt == 0 else f"{label} retry {attempt}")
        retry: list[tuple[int, Order]] = []
        for (k, o), res in zip(pending, results, strict=True):
            before = last.get((k, o))
            rejected = (*before.rejected, Attempt(before.raw, before.error)) if before is not None else ()
            if not res.ok:
                last[(k, o)] = OrderVerdict(o, None, None, None, f"call failed: {res.error}", attempt + 1, rejected)
                retry.append((k, o))
                continue
            _, a, b = shown(k, o)
            v = parse_verdict(res.text, (a, b))
            if not v.ok:
                error = f"unparseable verdict: {v.error}"
                last[(k, o)] = OrderVerdict(o, res.text, None, None, error, attempt + 1, rejected)
                retry.append((k, o))
                continue
            ref, cand = (v.a, v.b) if o == "ref_first" else (v.b, v.a)
            last[(k, o)] = OrderVerdict(o, res.text, ref, cand, None, attempt + 1, rejected)
        pending = retry
    return [PairJudgement(p.id, tuple(last[(k, o)] for o in orders)) for k, p in enumerate(pairs)]


# ------------------------------------------------------------------------------------------------ CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.referee", description="Parse referee replies and print verdicts.")
    p.add_argument("file", help="JSONL with the reply under 'text' or 'raw' (or a plain text file: one reply)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import DataError

    args = make_parser().parse_args(argv)
    path = Path(args.file)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        from .records import iter_jsonl

        texts = []
        for lineno, row in iter_jsonl(path):
            t = row.get("text", row.get("raw")) if isinstance(row, dict) else None
            if not isinstance(t, str):
                raise DataError(f"{path}:{lineno}: expected an object with the reply as a string under 'text' or 'raw'")
            texts.append(t)
    else:
        texts = [path.read_text(encoding="utf-8")]
    bad = 0
    for n, t in enumerate(texts, 1):
        v = parse_verdict(t)
        bad += not v.ok
        print(json.dumps({"n": n, "a": v.a, "b": v.b, "error": v.error, "line": v.line}))
    print(f"{len(texts) - bad} of {len(texts)} parsed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
