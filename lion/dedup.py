"""Fast exact ROUGE-L near-duplicate search over a growing set of instructions.

    python -m lion.dedup POOL.jsonl [--threshold 0.7] [--query "text"]   # index a pool, report its duplicates

`RougeIndex` answers "what is the highest ROUGE-L F-measure between this text and any indexed text?" with
results identical to `rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)`:

- tokens come from rouge_score's own tokenizer (lower-case, non-alphanumerics to spaces, no stemming);
- F is computed with the very same floating-point expression as `rouge_score` (`scorer.score(query, text)`:
  the query is the *target*, the indexed text the *prediction*), so scores equal to the threshold decide
  the same way;
- pruning never changes a result: ROUGE-L counts a common subsequence, which is at most the clipped
  unigram overlap, so `2 * overlap / (n + m)` (the ROUGE-1 F) bounds ROUGE-L F from above. The bound is
  compared with a 1e-9 safety margin, and exact LCS runs only on the texts whose bound can still win.

How it is fast:

- multiset unigrams become set features: the k-th occurrence of token t is feature (t, k), so the clipped
  overlap `sum_t min(count_q(t), count_d(t))` is the size of a set intersection, and an inverted index of
  features gives every overlap with one `numpy.bincount`;
- the bound (which also encodes the length filter, as overlap <= min(n, m)) is one vectorised expression
  over all texts, so only the few texts whose bound exceeds the threshold reach Python code (a prefix
  filter over the query's rarest features was tried: on real instructions its candidate sets stayed large
  and counting their overlaps one by one in Python was 20x slower than the single bincount);
- the LCS length is bit-parallel (one Python big-int operation per token of the other text).

`best()` follows `RougeScorer.score_multi`'s tie rule: among equal maxima the earliest indexed text wins.
A text with no tokens scores 0 against everything; `best()` then returns `(0.0, None)`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable, Sequence

import numpy as np
from rouge_score import tokenize as _rouge_tokenize

from .errors import ConfigError

__all__ = ["RougeIndex", "rouge_tokens", "rouge_l_f", "lcs_length"]

_NON_ALNUM = _rouge_tokenize.NON_ALPHANUM_RE
_MARGIN = 1e-9  # bound slack: a float bound may sit an ulp below the exact F of the same overlap


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenisation without stemming (what `RougeScorer(use_stemmer=False)` uses).

    Same steps as `rouge_score.tokenize.tokenize(text, None)` with its own pattern: lower-case, every run of
    characters outside [a-z0-9] becomes a space, split. (rouge_score then drops tokens that do not match
    ^[a-z0-9]+$, which after that substitution are only the empty strings `str.split()` never makes; the
    tests compare the two on real text.)
    """
    return _NON_ALNUM.sub(" ", text.lower()).split()


def _fmeasure(lcs: int, target_len: int, prediction_len: int) -> float:
    """rouge_score's `_score_lcs` + `scoring.fmeasure`, operation for operation (same float rounding)."""
    if not target_len or not prediction_len:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _match_masks(seq: Sequence[int]) -> dict[int, int]:
    masks: dict[int, int] = {}
    for i, tok in enumerate(seq):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def _lcs_bits(masks: dict[int, int], n: int, other: Sequence[int]) -> int:
    """LCS length of the sequence behind `masks` (length n) and `other` (bit-parallel, Hyyro's variant)."""
    full = (1 << n) - 1
    v = full
    for tok in other:
        m = masks.get(tok)
        if m is None:
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    return n - (v.bit_count() if hasattr(v, "bit_count") else bin(v).count("1"))


def lcs_length(a: Sequence[object], b: Sequence[object]) -> int:
    """Length of the longest common subsequence of two token sequences."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    ids: dict[object, int] = {}
    aa = [ids.setdefault(x, len(ids)) for x in a]
    bb = [ids.get(x, -1) for x in b]
    return _lcs_bits(_match_masks(aa), len(aa), bb)


def rouge_l_f(target: str, prediction: str) -> float:
    """ROUGE-L F-measure as `RougeScorer(["rougeL"]).score(target, prediction)["rougeL"].fmeasure`."""
    t, p = rouge_tokens(target), rouge_tokens(prediction)
    return _fmeasure(lcs_length(t, p), len(t), len(p))


class _Postings:
    """Growable int32 arrays, one per feature (amortised O(1) append, zero-copy views)."""

    __slots__ = ("bufs", "sizes")

    def __init__(self) -> None:
        self.bufs: list[np.ndarray] = []
        self.sizes: list[int] = []

    def new(self) -> int:
        self.bufs.append(np.empty(4, dtype=np.int32))
        self.sizes.append(0)
        return len(self.bufs) - 1

    def append(self, fid: int, doc: int) -> None:
        buf, size = self.bufs[fid], self.sizes[fid]
        if size == len(buf):
            grown = np.empty(2 * len(buf), dtype=np.int32)
            grown[:size] = buf
            self.bufs[fid] = buf = grown
        buf[size] = doc
        self.sizes[fid] = size + 1

    def view(self, fid: int) -> np.ndarray:
        return self.bufs[fid][: self.sizes[fid]]


class RougeIndex:
    """Indexed texts for exact max-ROUGE-L queries. Indices are positions in insertion order (0-based)."""

    def __init__(self, texts: Iterable[str] = (), threshold: float = 0.7) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"rouge threshold: must be between 0 and 1, got {threshold!r}")
        self.threshold = float(threshold)
        self._vocab: dict[str, int] = {}
        self._features: dict[tuple[int, int], int] = {}  # (token id, occurrence k) -> feature id
        self._postings = _Postings()
        self._docs: list[tuple[int, ...]] = []  # token ids per indexed text
        self._lens = np.zeros(1024, dtype=np.int32)
        self.lcs_calls = 0  # exact LCS computations so far (for benchmarks)
        self.add_many(texts)

    def __len__(self) -> int:
        return len(self._docs)

    # ------------------------------------------------------------------------------------ building

    def _encode(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and feature ids of a text being indexed (new tokens and features get new ids)."""
        vocab, features = self._vocab, self._features
        ids = []
        for tok in rouge_tokens(text):
            tid = vocab.get(tok)
            if tid is None:
                tid = vocab[tok] = len(vocab)
            ids.append(tid)
        seen: dict[int, int] = {}
        fids = []
        for tid in ids:
            k = seen.get(tid, 0) + 1
            seen[tid] = k
            fid = features.get((tid, k))
            if fid is None:
                fid = features[(tid, k)] = self._postings.new()
            fids.append(fid)
        return ids, fids

    def _store(self, ids: list[int]) -> int:
        doc = len(self._docs)
        self._docs.append(tuple(ids))
        if doc == len(self._lens):
            self._lens = np.concatenate([self._lens, np.zeros(len(self._lens), dtype=np.int32)])
        self._lens[doc] = len(ids)
        return doc

    def add(self, text: str) -> None:
        """Index one more text (it gets index `len(self)` before the call)."""
        ids, fids = self._encode(text)
        doc = self._store(ids)
        for fid in fids:
            self._postings.append(fid, doc)

    def add_many(self, texts: Iterable[str], chunk: int = 65536) -> None:
        """Index many texts, in order (same result as `add` one by one, built in bulk with numpy, `chunk` texts at
        a time so the bulk buffers stay small however long the stream)."""
        it = iter(texts)
        while True:
            n = self._add_chunk(itertools.islice(it, chunk))
            if n < chunk:
                return

    def _add_chunk(self, texts: Iterable[str]) -> int:
        all_fids: list[int] = []
        all_docs: list[int] = []
        n = 0
        for text in texts:
            n += 1
            ids, fids = self._encode(text)
            doc = self._store(ids)
            all_fids += fids
            all_docs += [doc] * len(fids)
        if not all_fids:
            return n
        f = np.asarray(all_fids, dtype=np.int64)
        d = np.asarray(all_docs, dtype=np.int32)
        order = np.argsort(f, kind="stable")  # stable: postings stay in document order
        f, d = f[order], d[order]
        starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])
        ends = np.r_[starts[1:], len(f)]
        post = self._postings
        for fid, a, b in zip(f[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
            old = post.sizes[fid]
            new = d[a:b]
            if old:
                new = np.concatenate([post.view(fid), new])
            post.bufs[fid] = new.copy() if not old else new
            post.sizes[fid] = len(new)
        return n

    # ------------------------------------------------------------------------------------ queries

    def _query(self, text: str) -> tuple[list[int], list[int]]:
        """Query token ids (unknown tokens get -1) and the ids of its features present in the index."""
        ids = [self._vocab.get(tok, -1) for tok in rouge_tokens(text)]
        feats = []
        seen: dict[int, int] = {}
        for tid in ids:
            if tid < 0:
                continue
            k = seen.get(tid, 0) + 1
            seen[tid] = k
            fid = self._features.get((tid, k))
            if fid is not None:
                feats.append(fid)
        return ids, feats

    def _overlaps(self, feats: list[int]) -> np.ndarray:
        n_docs = len(self._docs)
        if not feats:
            return np.zeros(n_docs, dtype=np.int64)
        views = [self._postings.view(f) for f in feats]
        return np.bincount(np.concatenate(views), minlength=n_docs)

    def _exact(self, masks: dict[int, int], ids: list[int], doc: int) -> float:
        self.lcs_calls += 1
        other = self._docs[doc]
        return _fmeasure(_lcs_bits(masks, len(ids), other), len(ids), len(other))

    def score(self, text: str, index: int) -> float:
        """Exact ROUGE-L F between `text` (target) and indexed text `index` (prediction)."""
        ids, _ = self._query(text)
        return self._exact(_match_masks(ids), ids, index) if ids else 0.0

    def best(self, text: str) -> tuple[float, int | None]:
        """Highest ROUGE-L F of `text` against the indexed texts and the (earliest) index reaching it."""
        ids, feats = self._query(text)
        n = len(ids)
        if not n or not self._docs:
            return 0.0, None
        ov = self._overlaps(feats)
        cand = np.flatnonzero(ov)
        if not len(cand):
            return 0.0, None
        bound = 2.0 * ov[cand] / (n + self._lens[cand])
        order = np.lexsort((cand, -bound))  # by bound descending, then index ascending
        masks = _match_masks(ids)
        best_f, best_i = 0.0, None
        for j in order:
            if bound[j] + _MARGIN < best_f:
                break
            doc = int(cand[j])
            f = self._exact(masks, ids, doc)
            if f > best_f or (f == best_f and best_i is not None and doc < best_i):
                best_f, best_i = f, doc
        if best_f == 0.0:
            return 0.0, None
        return best_f, best_i

    def find_near_duplicate(self, text: str, threshold: float | None = None) -> tuple[float, int] | None:
        """Some indexed text with ROUGE-L F > threshold (the one with the highest bound first), or None."""
        t = self.threshold if threshold is None else float(threshold)
        ids, feats = self._query(text)
        n = len(ids)
        if not n or not feats:
            return None
        ov = self._overlaps(feats)
        bound = 2.0 * ov / (n + self._lens[: len(ov)])
        cand = np.flatnonzero((bound > t - _MARGIN) & (ov > 0))
        if not len(cand):
            return None
        order = cand[np.argsort(-bound[cand], kind="stable")]
        masks = _match_masks(ids)
        for doc in order.tolist():
            f = self._exact(masks, ids, doc)
            if f > t:
                return f, doc
        return None

    def is_near_duplicate(self, text: str) -> bool:
        """True when some indexed text has ROUGE-L F strictly greater than the threshold."""
        return self.find_near_duplicate(text) is not None


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lion.dedup",
        description="Index a pool and report its near-duplicates (each row against the rows before it).",
    )
    p.add_argument("pool", help="any instruction file lion.records can load")
    p.add_argument("--threshold", type=float, default=0.7, help="ROUGE-L F above which two texts are duplicates")
    p.add_argument("--query", action="append", default=[], help="also report the best match of this text")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    from .records import load_instructions

    args = make_parser().parse_args(argv)
    rows, _ = load_instructions(args.pool)
    index = RougeIndex(threshold=args.threshold)
    dups = 0
    for row in tqdm(rows, desc="dedup", unit="row", disable=None):
        hit = index.find_near_duplicate(row.instruction)
        if hit is not None:
            dups += 1
            print(f"{row.id}: ROUGE-L {hit[0]:.3f} with row {hit[1]}: {row.instruction[:80]!r}")
        index.add(row.instruction)
    print(f"{dups} of {len(rows)} rows are near-duplicates of an earlier row (ROUGE-L F > {args.threshold})")
    for q in args.query:
        f, i = index.best(q)
        print(
            f"query {q[:60]!r}: best ROUGE-L {f:.3f}"
            + (f" with row {i}: {rows[i].instruction[:60]!r}" if i is not None else "")
        )
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
