"""Benchmark: exact ROUGE-L near-duplicate filtering of 6,000 candidates against a 70,000-instruction pool.

    python bench/dedup.py [--pool 70000] [--candidates 6000] [--check 8] [--jobs 2] [--json]

The workload is the generation phase's filter: each candidate is checked against the pool plus every
candidate accepted before it (ROUGE-L F > 0.7 = duplicate) and, if new, added to the index.

Realistic instructions, built from the real instructions in ../shared/data (Self-Instruct's 175 seed tasks,
its 252 user-oriented instructions, the Vicuna-80 questions and both turns of the 80 MT-bench questions;
667 human-written texts). Each synthetic instruction is one of them, perturbed the way generated
instructions differ from their seeds:
  - recombination: with probability 0.4 one sentence is replaced by (or, for one-sentence bases, extended
    with) a sentence of another real instruction;
  - topic drift: a random 20-80% of the content words (not stop words, 4+ letters) are replaced by content
    words drawn from the whole corpus with their natural frequencies;
  - framing: with probability 0.3 a request prefix ("Could you", "Please", ...) and with probability 0.3 a
    constraint suffix ("Answer in three sentences.", ...).
Stop words, sentence shapes and lengths stay those of real instructions, which is what decides how many
texts share tokens with a query (the cost of search); the low-drift end of the range produces genuine
near-duplicates. Candidates come from the same process with another random stream.

Brute force is `rouge_score`'s own `RougeScorer(["rougeL"]).score(candidate, text)` over every indexed text,
run on a sample of candidates (stratified: duplicates and non-duplicates) in `--jobs` processes; its
decisions must equal the fast index's, and its per-candidate CPU time, extrapolated to all candidates and
divided by the fast path's CPU time (index build + filtering), gives the speedup (CPU seconds, because on
this shared machine wall time depends on what else runs; wall times are printed too). Every duplicate decision is also confirmed with rouge_score on the matched pair (so no false
positive anywhere; false negatives are what the brute-force sample looks for, and what
tests/test_dedup_exact.py checks exhaustively on smaller sets). The pool is dense: 70,000 variants of 667
texts, so about 40% of the candidates are near-duplicates, more than a real generator produces, which
makes the benchmark harder (more exact LCS work) rather than easier. The last line printed is one JSON
object with the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lion.dedup import RougeIndex  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

STOP = set(
    """a an the and or but if of to in on at by for with from as is are was were be been being it its this that
    these those you your yours i me my we our they them their he she his her what which who whom how why when
    where can could would should will shall may might must do does did not no yes than then there here also
    into about over under more most some any each every all both few many much such only own same so too very
    just one two three first given following following please""".split()
)
PREFIXES = [
    "Could you",
    "Please",
    "I need you to",
    "Can you",
    "Briefly,",
    "In simple terms,",
    "As an expert,",
    "For a beginner,",
    "Step by step,",
    "Quickly",
]
SUFFIXES = [
    "Answer in three sentences.",
    "Use a numbered list.",
    "Keep it under 100 words.",
    "Explain your reasoning.",
    "Give two examples.",
    "Write it for a high school student.",
    "Be concise.",
    "Include a short summary at the end.",
    "Use a friendly tone.",
    "Cite any assumptions you make.",
]


def load_sources() -> list[str]:
    out: list[str] = []
    for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        for line in (DATA / "self_instruct" / name).read_text().splitlines():
            if line.strip():
                out.append(json.loads(line)["instruction"])
    for sub in ("vicuna80", "mt_bench"):
        for line in (DATA / sub / "question.jsonl").read_text().splitlines():
            if line.strip():
                out.extend(json.loads(line)["turns"])
    return out


_SENT = re.compile(r"(?<=[.?!])\s+")
_WORD = re.compile(r"[A-Za-z]{4,}")


class Synth:
    def __init__(self, sources: list[str]) -> None:
        self.sources = sources
        self.sentences = [_SENT.split(s.strip()) for s in sources]
        counts = Counter(w.lower() for s in sources for w in _WORD.findall(s) if w.lower() not in STOP)
        self.content = list(counts)
        self.cum_weights = list(itertools.accumulate(counts[w] for w in self.content))

    def make(self, rng: random.Random) -> str:
        base = list(self.sentences[rng.randrange(len(self.sources))])
        if rng.random() < 0.4:
            other = self.sentences[rng.randrange(len(self.sources))]
            extra = rng.choice(other)
            if len(base) > 1:
                base[rng.randrange(len(base))] = extra
            else:
                base.append(extra)
        text = " ".join(base)
        drift = rng.uniform(0.2, 0.8)
        words = _WORD.findall(text)
        targets = [
            w for w in dict.fromkeys(words) if w.lower() not in STOP and rng.random() < drift
        ]  # ordered: reproducible
        if targets:
            repl = {w: rng.choices(self.content, cum_weights=self.cum_weights)[0] for w in targets}
            text = _WORD.sub(lambda m: repl.get(m.group(0), m.group(0)), text)
        if rng.random() < 0.3:
            p = rng.choice(PREFIXES)
            text = f"{p} {text[:1].lower()}{text[1:]}"
        if rng.random() < 0.3:
            text = f"{text} {rng.choice(SUFFIXES)}"
        return text


# ------------------------------------------------------------------------------------------ brute force

_POOL: list[str] = []


def _init(pool: list[str]) -> None:
    global _POOL, _SCORER
    from rouge_score import rouge_scorer

    _POOL = pool
    _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _brute(job: tuple[str, int, float]) -> tuple[bool, float, float, float]:
    cand, size, threshold = job
    t0, c0 = time.perf_counter(), time.process_time()
    best = 0.0
    for text in _POOL[:size]:
        f = _SCORER.score(cand, text)["rougeL"].fmeasure
        if f > best:
            best = f
    return best > threshold, best, time.perf_counter() - t0, time.process_time() - c0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", type=int, default=70_000)
    p.add_argument("--candidates", type=int, default=6_000)
    p.add_argument("--threshold", type=float, default=0.7)
    p.add_argument("--check", type=int, default=8, help="candidates checked against rouge_score brute force")
    p.add_argument("--jobs", type=int, default=2, help="processes for the brute-force sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print only the final JSON line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    say = (lambda *a: None) if args.json else print
    if not (DATA / "self_instruct" / "seed_tasks.jsonl").is_file():
        print(f"error: data not found at {DATA}", file=sys.stderr)
        return 2
    synth = Synth(load_sources())
    rng = random.Random(args.seed)
    pool = [synth.make(rng) for _ in range(args.pool)]
    crng = random.Random(args.seed + 1)
    cands = [synth.make(crng) for _ in range(args.candidates)]
    say(f"{len(synth.sources)} real source instructions -> pool {len(pool)}, candidates {len(cands)}")
    say(f"mean words: pool {sum(len(t.split()) for t in pool) / len(pool):.1f}")

    t0, c0 = time.perf_counter(), time.process_time()
    index = RougeIndex(pool, threshold=args.threshold)
    t_build, c_build = time.perf_counter() - t0, time.process_time() - c0
    texts = list(pool)
    decisions: list[tuple[bool, int]] = []  # (duplicate?, index size when checked)
    t0, c0 = time.perf_counter(), time.process_time()
    matches: list[tuple[int, int, float]] = []  # (candidate, matched text, F) for every duplicate
    for i, c in enumerate(cands):
        hit = index.find_near_duplicate(c)
        dup = hit is not None
        decisions.append((dup, len(index)))
        if hit is not None:
            matches.append((i, hit[1], hit[0]))
        else:
            index.add(c)
            texts.append(c)
    t_filter, c_filter = time.perf_counter() - t0, time.process_time() - c0
    n_dup = sum(d for d, _ in decisions)
    say(
        f"index build {t_build:.2f} s, filter {t_filter:.2f} s: {n_dup} duplicates, "
        f"{len(cands) - n_dup} accepted, {index.lcs_calls} exact LCS computations"
    )

    # every duplicate decision: the matched pair really scores > threshold in rouge_score (no false positive)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    false_pos = sum(
        not (scorer.score(cands[i], texts[j])["rougeL"].fmeasure == f > args.threshold) for i, j, f in matches
    )
    say(f"all {len(matches)} duplicate decisions confirmed by rouge_score on the matched pair: {false_pos == 0}")

    # stratified sample for the brute-force check (catches false negatives too)
    srng = random.Random(args.seed + 2)
    dups = [i for i, (d, _) in enumerate(decisions) if d]
    news = [i for i, (d, _) in enumerate(decisions) if not d]
    half = args.check // 2
    sample = srng.sample(dups, min(half, len(dups)))
    sample += srng.sample(news, min(args.check - len(sample), len(news)))
    jobs = [(cands[i], decisions[i][1], args.threshold) for i in sample]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=_init, initargs=(texts,)) as ex:
        results = list(ex.map(_brute, jobs))
    t_brute_wall = time.perf_counter() - t0
    mismatches = [i for i, (dup, *_) in zip(sample, results, strict=True) if dup != decisions[i][0]]
    # speedup from CPU seconds (process time) on both sides: on a shared machine wall time depends on what
    # else runs; CPU time is what each method costs
    per_cand = sum(r[3] for r in results) / max(1, len(results))
    per_cand_wall = sum(r[2] for r in results) / max(1, len(results))
    brute_total = per_cand * len(cands)
    fast_total = t_build + t_filter
    fast_cpu = c_build + c_filter
    for i, (dup, best, secs, _) in zip(sample, results, strict=True):
        say(f"  cand {i}: brute best {best:.4f} dup={dup} ({secs:.1f} s) fast dup={decisions[i][0]}")
    say(
        f"brute force: {per_cand:.2f} CPU s per candidate -> {brute_total / 3600:.1f} CPU h for {len(cands)}; "
        f"fast: {fast_cpu:.1f} CPU s ({fast_total:.1f} s wall) -> speedup x{brute_total / max(fast_cpu, 1e-9):,.0f}"
    )
    out = {
        "pool": len(pool),
        "candidates": len(cands),
        "threshold": args.threshold,
        "duplicates": n_dup,
        "accepted": len(cands) - n_dup,
        "index_build_s": round(t_build, 3),
        "filter_s": round(t_filter, 3),
        "fast_total_s": round(fast_total, 3),
        "fast_cpu_s": round(fast_cpu, 3),
        "exact_lcs_calls": index.lcs_calls,
        "duplicates_confirmed": len(matches) - false_pos,
        "checked": len(sample),
        "checked_duplicates": sum(decisions[i][0] for i in sample),
        "mismatches": len(mismatches),
        "brute_cpu_s_per_candidate": round(per_cand, 3),
        "brute_wall_s_per_candidate": round(per_cand_wall, 3),
        "brute_sample_wall_s": round(t_brute_wall, 3),
        "brute_extrapolated_cpu_s": round(brute_total, 1),
        "speedup_cpu": round(brute_total / max(fast_cpu, 1e-9), 1),
    }
    print(json.dumps(out))
    return 1 if mismatches or false_pos else 0


if __name__ == "__main__":
    sys.exit(main())
