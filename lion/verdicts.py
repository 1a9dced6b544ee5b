"""Verdict formats: read a referee's (or judge's) reply into two scores, or the reason there are none.

    python -m lion.referee --format lion|fastchat FILE.jsonl   # parse a file of replies (see lion.referee)

A judge template declares the format its replies come in (`{# verdict_format: NAME #}` at the top of a
prompts/*.txt file, see lion.prompts; FastChat prompt files are `fastchat`). `parse_verdict(text, answers,
format=NAME)` dispatches to the format's parser; every parser returns a `Verdict` whose `a` / `b` are the scores of
the answer shown first / second, or an `error` and no number at all. `answers` are the texts the judge was shown:
a verdict line copied from one of them does not count (an answer can carry fake score lines).

Format `lion` (prompts/referee.txt): an explanation, then a final line `SCORES: A=<score>, B=<score>`.

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
  lines (`> ...`), lines inside an echoed `<<<RESPONSE A>>> ... <<<END ...>>>` (or FastChat-style
  `[The Start of ...]` ... `[The End of ...]`) block, and (when the answers are given) a final verdict line that
  also appears as a line of one of the answers (compared without markdown, case or spacing differences). The
  answers are inside the prompt, so an answer can carry fake score lines; a referee that repeats one as its last
  line yields a failure (retried, then excluded), never the attacker's numbers.

Format `fastchat` (the Vicuna/FastChat GPT-4 judge, as in the Lion paper's evaluation): "Assistant 1" is the answer
shown first, "Assistant 2" the second. A verdict is any of

- the two scores alone on the FIRST line (`9 8.5`, `9, 8`, `8/10 6/10`; also directly under a `Scores:`
  heading), as the general and coding prompts ask;
- a tuple line (`(10, 6)`, `[10, 6]`, `[[10, 6]]`, `Scores: (10, 6)`, `Python tuple: (10, 6)`), as the math
  prompt asks, anywhere in the reply; also a keyed tuple closing a sentence, with what math replies add after it
  (`The output tuple is (10, 1). Assistant 1 did better.`, `the scores are (1, 5) for Assistant 1 and Assistant 2,
  respectively.`: the remark after it holds no other parenthesis);
- a keyed pair anywhere (`Scores: 9 8`, `Final scores: 9/10, 8/10`);
- labelled scores, on one line (`Assistant 1: 8, Assistant 2: 6`) or on lines of their own anywhere
  (`Assistant 1: 10 (correct)` ... `Assistant 2: 6 - a slip in step 2`, `Score for Assistant 2: 6/10`).

Scores run from 0 to 10: the prompts ask for 1 to 10, but FastChat's GPT-4 judge gives 0 to an empty answer (`0 9`
on the first line), and excluding that pair would drop it from both sums and *raise* the empty answer's side's
relative score; a 0 is therefore a score (lion.evalscore counts them as `zero_scores`).
Every score the reply states for an assistant must be the same number: a reply whose first line says `9 8` and
whose last line says `(7, 8)`, or two different `Assistant 1:` scores, is a conflict and fails. Also rejected: a
score outside 0..10, a denominator other than 10, a score for only one assistant, the same assistant twice on one
line, and a line that starts with a score keyword and has a number but cannot be read. Quoted text never counts
(fences that hold anything but a verdict, blockquotes, echoed answer blocks, and lines copied from an answer: a
reply whose only verdict is copied from an answer fails). A bare pair of numbers further down (`3 5` inside a
worked solution) is not a verdict; a tuple of numbers alone on its own line is, so a coordinate such as `(2, -2)`
alone on a line makes the reply fail rather than guess.

`Verdict.form` says how the verdict was written (fastchat: `first_line`, `tuple`, `tuple_sentence`, `keyed`, `labelled`; lion:
`scores`), for the replay's and the benchmark's counts (bench/fastchat_reviews.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["FORMATS", "Verdict", "VerdictParser", "get_format", "parse_fastchat", "parse_lion", "parse_verdict"]

# ------------------------------------------------------------------------------------------------ format lion


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
_START_OF = re.compile(r"^\s*\[\s*the start of [^\[\]\n]*\]\s*$", re.IGNORECASE)  # FastChat-style answer blocks
_END_OF = re.compile(r"^\s*\[\s*the end of [^\[\]\n]*\]\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    """A parsed verdict: scores for the answers shown as A and B, or the reason there is none."""

    a: float | None
    b: float | None
    error: str | None = None
    line: int | None = None  # 1-based line of the verdict in the text
    form: str | None = None  # how it was written (fastchat: first_line, tuple, tuple_sentence, keyed, labelled; lion: scores)

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


def _lion_text(line: str) -> bool:
    """A line that is not part of a lion-format verdict (prose, code, or an unreadable score line)."""
    return _classify(0, line).kind in ("text", "bad")


def _quoted_lines(lines: list[str], is_text: Callable[[str], bool] = _lion_text) -> set[int]:
    """Lines that quote material: blockquotes, echoed <<<...>>> or [The Start of ...] blocks, fenced blocks
    holding anything but a verdict (`is_text`: a line that is no part of a verdict in this format)."""
    quoted: set[int] = set()
    fence_start: int | None = None
    echo = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            if fence_start is None:
                fence_start = i
            else:
                body = range(fence_start + 1, i)
                if any(is_text(lines[j]) for j in body if j not in quoted and lines[j].strip()):
                    quoted.update(body)
                quoted.update((fence_start, i))
                fence_start = None
            continue
        if _ECHO_OPEN.match(line) or _START_OF.match(line):
            echo = True
            quoted.add(i)
            continue
        if _ECHO_CLOSE.match(line) or _END_OF.match(line):
            echo = False
            quoted.add(i)
            continue
        if echo or line.lstrip().startswith(">"):
            quoted.add(i)
    if fence_start is not None:  # an unclosed fence runs to the end of the text
        body = range(fence_start + 1, len(lines))
        if any(is_text(lines[j]) for j in body if j not in quoted and lines[j].strip()):
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


def parse_lion(text: str | None, answers: Iterable[str] = ()) -> Verdict:
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
    return Verdict(values["a"], values["b"], None, final.line + 1, "scores")



# ------------------------------------------------------------------------------------------------ format fastchat

FASTCHAT_MIN = 0.0  # FastChat's GPT-4 judge gives 0 to a missing answer: a score, not a failure (see the module doc)

_FC_KEY = r"(?:(?:final|overall)\s+)?(?:scores?|ratings?)"
_FC_LAB = (  # "Assistant 1", "Assistant 1's score", "Score for Assistant 1"
    r"(?:(?:the\s+)?(?:scores?|ratings?)\s+(?:for|of)\s+)?assistant\s*#?\s*([12])(?:'s)?(?:\s+(?:scores?|ratings?))?"
)
_FC_SEP = r"\s*(?:[:=]|[-–—]|\bis\b)\s*"  # between a label and its score
_FC_TWO = r"(?:\s*[,;&|]\s*|\s+and\s+|\s+)"  # between two bare scores: "9 8", "9, 8", "9 and 8"
_FC_PAREN = r"(?:\s*\([^()]*\))?"
_FC_REMARK = r"(?:\s*\([^()]*\)|\s+[-–—]\s+[^\d\s].*|[.;,]\s+[^\d\s].*)?\s*[.!]?"  # not starting with a number
_FC_BARE = re.compile(rf"^{_NUM}{_OF}{_FC_TWO}{_NUM}{_OF}\s*\.?$")
_FC_KEYED = re.compile(rf"^{_FC_KEY}\s*(?:[:=\-–—]|\bare\b|\bis\b)?\s*{_NUM}{_OF}{_FC_TWO}{_NUM}{_OF}\s*\.?$")
_FC_TUPLE = re.compile(
    r"^(?:[a-z0-9', ]{0,60}?\b(?:scores?|tuple|ratings?|verdict|output)\b[a-z0-9', ]{0,40}?\s*(?:[:=]|\bis\b|\bare\b)?\s*)?"
    rf"[(\[]{{1,2}}\s*{_NUM}{_OF}\s*,\s*{_NUM}{_OF}\s*[)\]]{{1,2}}\s*[.!]?$"
)
# a keyed tuple closing a sentence, with what the math prompt's replies add after it: "the scores are (1, 5) for
# Assistant 1 and Assistant 2, respectively. Assistant 2 performed better." (a remark holds no other parenthesis)
_FC_TUPLE_SENTENCE = re.compile(
    r"^[a-z0-9', ]{0,60}?\b(?:scores?|tuple|ratings?)\b[a-z0-9', ]{0,40}?\s*(?:[:=]|\bis\b|\bare\b)\s*"
    rf"[(\[]{{1,2}}\s*{_NUM}{_OF}\s*,\s*{_NUM}{_OF}\s*[)\]]{{1,2}}"
    r"(?:\s+for\s+assistants?\s*1\s+and\s+(?:assistant\s*)?2)?(?:\s*,?\s*respectively)?"
    r"\s*(?:[.!;]\s+[^\d\s()][^()]*|[.!])?$"
)
_FC_BOTH = re.compile(
    rf"^(?:{_FC_KEY}\s*[:=\-–—]?\s*)?{_FC_LAB}{_FC_SEP}{_NUM}{_OF}{_FC_PAREN}\s*(?:[,;&|/]|\band\b)?\s*"
    rf"{_FC_LAB}{_FC_SEP}{_NUM}{_OF}{_FC_PAREN}\s*[.!]?$"
)
_FC_HALF = re.compile(rf"^{_FC_LAB}{_FC_SEP}{_NUM}{_OF}{_FC_REMARK}$")
_FC_HEADER = re.compile(rf"^{_FC_KEY}\s*[:=\-–—]?$")
_FC_KEYWORD = re.compile(rf"^{_FC_KEY}\s*[:=]")
_FC_MARKUP = re.compile(r"[*_`]+")
_FC_LEAD = re.compile(r"^(?:#+\s*|[-•+]\s+)")
_FC_EXPECTED = (
    "no verdict (expected the two scores alone on the first line, a tuple '(s1, s2)', or 'Assistant 1: s1' and "
    "'Assistant 2: s2')"
)


@dataclass
class _Cand:
    """A line of a fastchat-format reply that states scores: for assistant "1" and/or "2"."""

    line: int  # 0-based
    raw: str
    scores: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # "1"/"2" -> (number, denominator)
    problem: str | None = None
    form: str | None = None  # first_line, tuple, tuple_sentence, keyed, labelled


def _fc_normalise(line: str) -> str:
    s = _FC_MARKUP.sub("", line).strip()
    s = _FC_LEAD.sub("", s).strip()
    return " ".join(s.lower().split())


def _fc_classify(i: int, raw: str, first: bool) -> _Cand | None:
    """The scores a line states, or None; `first`: the line may be a bare pair (first line, or under a heading)."""
    s = _fc_normalise(raw)
    if m := _FC_BOTH.match(s):
        l1, n1, d1, l2, n2, d2 = m.groups()
        if l1 == l2:
            return _Cand(i, raw, problem=f"score for Assistant {l1} given twice in {raw.strip()!r}")
        return _Cand(i, raw, {l1: (n1, d1), l2: (n2, d2)}, form="labelled")
    for pattern, form in ((_FC_TUPLE, "tuple"), (_FC_TUPLE_SENTENCE, "tuple_sentence"), (_FC_KEYED, "keyed"),
                          *(((_FC_BARE, "first_line"),) if first else ())):
        if m := pattern.match(s):
            n1, d1, n2, d2 = m.groups()
            return _Cand(i, raw, {"1": (n1, d1), "2": (n2, d2)}, form=form)
    if m := _FC_HALF.match(s):
        label, n, d = m.groups()
        return _Cand(i, raw, {label: (n, d)}, form="labelled")
    if _FC_KEYWORD.match(s) and re.search(r"\d", s):
        return _Cand(i, raw, problem=f"unreadable score line {raw.strip()!r}")
    return None


def _fc_text(line: str) -> bool:
    return _fc_classify(0, line, True) is None


def _fc_score(label: str, num: str, den: str | None) -> float | str:
    if den is not None and int(den) != 10:
        return f"score for Assistant {label} is out of {den}, not 10"
    value = float(num)
    if not FASTCHAT_MIN <= value <= 10.0:
        return f"score for Assistant {label} is {num}, outside {FASTCHAT_MIN:g}..10"
    return value


def parse_fastchat(text: str | None, answers: Iterable[str] = ()) -> Verdict:
    """Read a FastChat-style judge reply: `a` is Assistant 1's score, `b` Assistant 2's (rules: module doc)."""
    if text is None or not text.strip():
        return _fail("empty reply")
    lines = text.splitlines()
    quoted = _quoted_lines(lines, _fc_text)
    answer_lines = {_fc_normalise(ln) for ans in answers for ln in (ans or "").splitlines() if ln.strip()}
    first = next((i for i, ln in enumerate(lines) if ln.strip() and not _FENCE.match(ln)), None)
    cands: list[_Cand] = []
    copied: list[_Cand] = []
    under_heading = False
    for i, raw in enumerate(lines):
        if not raw.strip() or _FENCE.match(raw):
            continue
        if i in quoted:
            under_heading = False
            continue
        c = _fc_classify(i, raw, first=i == first or under_heading)
        under_heading = _FC_HEADER.match(_fc_normalise(raw)) is not None
        if c is None:
            continue
        (copied if _fc_normalise(raw) in answer_lines else cands).append(c)
    if not cands:
        if copied:
            c = copied[-1]
            return _fail(f"the verdict line {c.raw.strip()!r} is copied from an answer", c.line + 1)
        return _fail(_FC_EXPECTED)
    stated: dict[str, list[tuple[float, _Cand]]] = {"1": [], "2": []}
    for c in cands:
        if c.problem:
            return _fail(c.problem, c.line + 1)
        for label, (num, den) in c.scores.items():
            v = _fc_score(label, num, den)
            if isinstance(v, str):
                return _fail(v, c.line + 1)
            stated[label].append((v, c))
    for label, other in (("1", "2"), ("2", "1")):
        if not stated[label]:
            c = stated[other][-1][1]
            return _fail(f"no score for Assistant {label} (only {c.raw.strip()!r})", c.line + 1)
        v0, c0 = stated[label][0]
        for v, c in stated[label][1:]:
            if v != v0:
                return _fail(
                    f"conflicting scores for Assistant {label}: {c0.raw.strip()!r} (line {c0.line + 1}) and "
                    f"{c.raw.strip()!r} (line {c.line + 1})",
                    c.line + 1,
                )
    complete = [c for c in cands if len(c.scores) == 2]
    last = complete[-1] if complete else max(cands, key=lambda c: c.line)
    return Verdict(stated["1"][0][0], stated["2"][0][0], None, last.line + 1, last.form)


# ------------------------------------------------------------------------------------------------ registry


class VerdictParser(Protocol):
    """A verdict format's parser: the reply, the answers the judge was shown -> a Verdict (a: first shown)."""

    def __call__(self, text: str | None, answers: Iterable[str] = ()) -> Verdict: ...


FORMATS: dict[str, VerdictParser] = {"lion": parse_lion, "fastchat": parse_fastchat}


def get_format(name: str) -> VerdictParser:
    """The parser of verdict format `name`; a ValueError naming the known formats otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown verdict format {name!r} (known: {', '.join(sorted(FORMATS))})") from None


def parse_verdict(text: str | None, answers: Iterable[str] = (), format: str = "lion") -> Verdict:
    """Parse a judge reply in verdict format `format` (default: lion's `SCORES: A=<a>, B=<b>`)."""
    return get_format(format)(text, answers)
