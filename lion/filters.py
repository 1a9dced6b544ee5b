"""Filters for generated instructions: parse, length, meta words, decontamination, ROUGE-L near-duplicates.

    python -m lion.filters CANDIDATES.jsonl --against POOL.jsonl [--decontaminate ../shared/data/vicuna80 ...]
        # report what the generation filters would reject in a file of candidate instructions

Used by the generation phase (`lion.generation`): `check` decides without changing anything, `accept`
adds an accepted instruction to the near-duplicate index so later candidates are compared with it too
(hard and easy candidates share one index). The checks run cheapest first; the first failing one names the
reason:

- "parse": the generator's reply could not be parsed (the caller passes None);
- "empty": nothing but whitespace;
- "too_short" / "too_long": fewer than `generation.min_words` / more than `generation.max_words` words;
- "meta_word": a `generation.meta_words` entry occurs (case-insensitive; an entry that starts/ends with a
  letter or digit must start/end at a word boundary, a plural "s" allowed: "instruction" catches
  "Instructions:" but not "constructional");
- "contaminated": shares a word n-gram (n = `generation.decontam_ngram`) with an evaluation question, after
  lower-casing and replacing punctuation with spaces; an evaluation question shorter than n words counts
  as contaminating when it occurs whole (as a word sequence) in the candidate;
- "near_duplicate": ROUGE-L F > `generation.rouge_threshold` against the existing pool or anything accepted
  (exact rouge-score decisions, see `lion.dedup`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import GenerationConfig
from .dedup import RougeIndex
from .errors import DataError
from .records import iter_jsonl

__all__ = ["FilterDecision", "CandidateFilter", "load_eval_questions", "normalise_words", "REASONS"]

REASONS = ("parse", "empty", "too_short", "too_long", "meta_word", "contaminated", "near_duplicate")

_NON_WORD = re.compile(r"[^\w]+|_+")
_MIN_SHORT_QUESTION = 3  # shorter evaluation questions ("Hi!") would reject half the world


@dataclass(frozen=True)
class FilterDecision:
    ok: bool
    reason: str | None  # one of REASONS when rejected
    detail: str | None = None  # what triggered it (the meta word, the shared n-gram, the near-duplicate)


OK = FilterDecision(True, None)


def normalise_words(text: str) -> list[str]:
    """Lower-case words with punctuation removed (the decontamination view of a text)."""
    return _NON_WORD.sub(" ", text.lower()).split()


def _meta_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    parts = []
    for w in words:
        w = " ".join(w.lower().split())
        if not w:
            continue
        p = r"\s+".join(re.escape(x) for x in w.split(" "))
        if w[0].isalnum():
            p = r"(?<![a-z0-9])" + p
        if w[-1].isalnum():
            p = p + r"s?(?![a-z0-9])"
        parts.append(p)
    return re.compile("|".join(parts)) if parts else None


class CandidateFilter:
    def __init__(
        self,
        cfg: GenerationConfig,
        existing: Iterable[str],
        eval_questions: Iterable[str] = (),
        held_out: Iterable[str] = (),
    ) -> None:
        """`existing`: the Cache Pool (near-duplicates); `eval_questions`: n-gram decontamination; `held_out`:
        questions that must never enter a pool, rejected when a candidate is one of them (words normalised)."""
        self.cfg = cfg
        self._held_out = {" ".join(normalise_words(q)) for q in held_out}
        self.index = RougeIndex(existing, threshold=cfg.rouge_threshold)
        self._meta = _meta_pattern(cfg.meta_words)
        n = cfg.decontam_ngram
        self._ngrams: dict[tuple[str, ...], str] = {}
        self._short: dict[int, dict[tuple[str, ...], str]] = {}
        for q in eval_questions:
            words = normalise_words(q)
            if len(words) >= n:
                for i in range(len(words) - n + 1):
                    self._ngrams.setdefault(tuple(words[i : i + n]), q)
            elif len(words) >= _MIN_SHORT_QUESTION:
                self._short.setdefault(len(words), {}).setdefault(tuple(words), q)

    def _contamination(self, text: str) -> str | None:
        words = normalise_words(text)
        n = self.cfg.decontam_ngram
        for i in range(len(words) - n + 1):
            q = self._ngrams.get(tuple(words[i : i + n]))
            if q is not None:
                return f"{' '.join(words[i : i + n])!r} occurs in evaluation question {q[:120]!r}"
        for k, table in self._short.items():
            for i in range(len(words) - k + 1):
                q = table.get(tuple(words[i : i + k]))
                if q is not None:
                    return f"contains the whole evaluation question {q[:120]!r}"
        return None

    def check(self, text: str | None) -> FilterDecision:
        """The first filter `text` fails, or OK. Does not add `text` to the index."""
        if text is None:
            return FilterDecision(False, "parse")
        if not text.strip():
            return FilterDecision(False, "empty")
        n_words = len(text.split())
        if n_words < self.cfg.min_words:
            return FilterDecision(False, "too_short", f"{n_words} words < {self.cfg.min_words}")
        if n_words > self.cfg.max_words:
            return FilterDecision(False, "too_long", f"{n_words} words > {self.cfg.max_words}")
        if self._meta is not None and (m := self._meta.search(" ".join(text.lower().split()))):
            return FilterDecision(False, "meta_word", m.group(0))
        if " ".join(normalise_words(text)) in self._held_out:
            return FilterDecision(False, "held_out", "a held-out evaluation question")
        if (why := self._contamination(text)) is not None:
            return FilterDecision(False, "contaminated", why)
        hit = self.index.find_near_duplicate(text)
        if hit is not None:
            return FilterDecision(False, "near_duplicate", f"ROUGE-L {hit[0]:.3f} with indexed text {hit[1]}")
        return OK

    def accept(self, text: str) -> None:
        """Add an accepted instruction to the near-duplicate index."""
        self.index.add(text)


# --------------------------------------------------------------------------------------------- eval questions

_TEXT_KEYS = ("instruction", "question", "prompt", "text", "query")


def _questions_of(row: object, where: str) -> list[str]:
    if isinstance(row, str):
        return [row]
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object or string, got {type(row).__name__}")
    if "turns" in row:  # FastChat question: every turn is asked of the model
        turns = row["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise DataError(f"{where}: 'turns' must be a non-empty list of strings")
        return list(turns)
    key = next((k for k in _TEXT_KEYS if k in row), None)
    if key is None:
        raise DataError(f"{where}: no question field (expected 'turns' or one of: {', '.join(_TEXT_KEYS)})")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    extra = row.get("input")
    return [value + ("\n" + extra if isinstance(extra, str) and extra else "")]


def load_eval_questions(paths: Sequence[str | Path]) -> list[str]:
    """Every question text (all turns) of FastChat question.jsonl files, our JSONL pools or plain text files.

    A directory stands for its `question.jsonl` (so `../shared/data/vicuna80` works). Bad rows raise
    DataError naming file:line.
    """
    out: list[str] = []
    for spec in paths:
        path = Path(spec)
        if path.is_dir():
            path = path / "question.jsonl"
        if not path.is_file():
            raise DataError(f"generation.decontaminate: evaluation question file {path} does not exist")
        if path.suffix in (".txt", ".text"):
            out += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            continue
        for lineno, row in iter_jsonl(path):
            out += _questions_of(row, f"{path}:{lineno}")
    return out


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.filters", description=__doc__.split("\n\n")[0])
    p.add_argument("candidates", help="instructions to check, in order (any format lion.records loads)")
    p.add_argument("--against", help="existing pool they must not duplicate")
    p.add_argument("--decontaminate", action="append", default=[], help="evaluation question file or directory")
    p.add_argument("--ngram", type=int, default=GenerationConfig.decontam_ngram)
    p.add_argument("--threshold", type=float, default=GenerationConfig.rouge_threshold)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from collections import Counter

    from tqdm import tqdm

    from .records import load_instructions

    args = make_parser().parse_args(argv)
    cfg = GenerationConfig(decontam_ngram=args.ngram, rouge_threshold=args.threshold)
    cfg.check("generation")
    existing = [i.instruction for i in load_instructions(args.against)[0]] if args.against else []
    filt = CandidateFilter(cfg, existing, load_eval_questions(args.decontaminate))
    counts: Counter[str] = Counter()
    for row in tqdm(load_instructions(args.candidates)[0], desc="filter", unit="cand", disable=None):
        d = filt.check(row.instruction)
        counts[d.reason or "accepted"] += 1
        if d.ok:
            filt.accept(row.instruction)
        else:
            print(f"{row.id}\t{d.reason}\t{d.detail or ''}\t{row.instruction[:80]!r}")
    print(json.dumps(dict(counts)))
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
