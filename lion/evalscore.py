"""Relative-score arithmetic of the Lion/Vicuna evaluation: pure functions, no I/O.

    python -m lion.evalscore EVAL_DIR/table.jsonl        # recompute the summary of a saved evaluation

A judge scores a candidate answer and a reference answer (ChatGPT's, in the paper) from 1 to 10, once with
the reference shown first and once with the candidate shown first. For each order the relative score is

    100 * (sum of the candidate's scores) / (sum of the reference's scores)

and the headline number is the mean of the two orders (Lion-7B: 94.74 and 92.88, mean 93.81). Totals run
over the questions whose verdicts parsed in *both* orders, so the two orders compare the same questions; a
question whose verdict failed after the retries is excluded and counted, never scored.

Also here: win/tie/loss (per question, on the mean of the two orders), mean scores, per-category figures,
judge health (parse failures, how often the preferred answer flips when the order is swapped, the average
advantage of the first position, zero scores), and the paired difference of two candidates judged on the same
questions with its bootstrap CI (`paired_difference`: the loop's student vs the control student, lion.control).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .referee import ORDERS  # the two presentation orders: the reference or the candidate shown first


@dataclass
class QuestionScores:
    """The judge's scores for one question: per order, (candidate score, reference score) or None if failed."""

    id: str
    category: str = ""
    scores: dict[str, tuple[float, float] | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.scores.get(o) is not None for o in ORDERS)

    def mean(self) -> tuple[float, float] | None:
        """(candidate, reference) averaged over both orders; None unless both parsed."""
        if not self.ok:
            return None
        c = sum(self.scores[o][0] for o in ORDERS) / len(ORDERS)  # type: ignore[index]
        r = sum(self.scores[o][1] for o in ORDERS) / len(ORDERS)  # type: ignore[index]
        return c, r

    def outcome(self) -> str | None:
        """'win' / 'tie' / 'loss' for the candidate, from the mean over both orders."""
        m = self.mean()
        if m is None:
            return None
        return "win" if m[0] > m[1] else "loss" if m[0] < m[1] else "tie"

    def flipped(self) -> bool | None:
        """Does the preferred answer (or a tie) change when the order is swapped? None unless both parsed."""
        if not self.ok:
            return None
        prefs = []
        for o in ORDERS:
            c, r = self.scores[o]  # type: ignore[misc]
            prefs.append("cand" if c > r else "ref" if r > c else "tie")
        return prefs[0] != prefs[1]


def relative(candidate_total: float, reference_total: float) -> float | None:
    """100 * candidate / reference; None when the reference total is zero (nothing to compare)."""
    if reference_total <= 0:
        return None
    return 100.0 * candidate_total / reference_total


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize_group(rows: Sequence[QuestionScores]) -> dict[str, Any]:
    """Relative score per order and their mean, mean scores and win/tie/loss over `rows`."""
    ok = [q for q in rows if q.ok]
    out: dict[str, Any] = {"n": len(rows), "n_scored": len(ok), "n_excluded": len(rows) - len(ok)}
    per_order: dict[str, float | None] = {}
    for o in ORDERS:
        cand = sum(q.scores[o][0] for q in ok)  # type: ignore[index]
        ref = sum(q.scores[o][1] for q in ok)  # type: ignore[index]
        per_order[o] = relative(cand, ref)
    vals = [v for v in per_order.values() if v is not None]
    out["relative"] = {**per_order, "mean": sum(vals) / len(vals) if len(vals) == len(ORDERS) else None}
    means = [q.mean() for q in ok]
    out["candidate_mean"] = _mean([m[0] for m in means if m])
    out["reference_mean"] = _mean([m[1] for m in means if m])
    outcomes = [q.outcome() for q in ok]
    out["win"] = outcomes.count("win")
    out["tie"] = outcomes.count("tie")
    out["loss"] = outcomes.count("loss")
    return out


def judge_health(rows: Sequence[QuestionScores]) -> dict[str, Any]:
    """Parse failures (per order), swap-flip rate, and the first position's average score advantage."""
    n_orders = sum(len(ORDERS) for _ in rows)
    failures = sum(1 for q in rows for o in ORDERS if q.scores.get(o) is None)
    flips = [q.flipped() for q in rows if q.ok]
    # first-position advantage: (score of whichever answer was shown first) - (score of the second)
    adv = []
    for q in rows:
        for o in ORDERS:
            s = q.scores.get(o)
            if s is None:
                continue
            c, r = s
            adv.append(r - c if o == "ref_first" else c - r)
    return {
        "orders_judged": n_orders,
        "parse_failures": failures,
        "parse_failure_rate": failures / n_orders if n_orders else 0.0,
        "pairs_excluded": sum(1 for q in rows if not q.ok),
        "swap_flip_rate": (sum(1 for f in flips if f) / len(flips)) if flips else None,
        "first_position_advantage": _mean(adv),
        "zero_scores": zero_scores(s for q in rows for o in ORDERS if (s := q.scores.get(o)) is not None),
    }


def zero_scores(pairs: Iterable[tuple[float, float]]) -> int:
    """How many scores of 0 the judge gave (FastChat's judge scores an empty answer 0; lion.verdicts): counted,
    never excluded, since dropping the pair would raise the empty answer's side."""
    return sum((c == 0) + (r == 0) for c, r in pairs)


def summarize(rows: Iterable[QuestionScores]) -> dict[str, Any]:
    """The full summary: overall, per category (sorted by name), and judge health."""
    rows = list(rows)
    cats: dict[str, list[QuestionScores]] = {}
    for q in rows:
        cats.setdefault(q.category or "uncategorised", []).append(q)
    return {
        "overall": summarize_group(rows),
        "by_category": {c: summarize_group(cats[c]) for c in sorted(cats)},
        "judge": judge_health(rows),
    }


def paired_difference(
    a: Iterable[QuestionScores], b: Iterable[QuestionScores], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Two candidates judged against the same reference on the same questions (the loop's student and a control):
    the relative score (mean of both orders) of each and the difference a - b, over the questions both have
    scored in both orders, with a paired percentile bootstrap CI: the questions are resampled with replacement
    `n_boot` times (numpy, seeded: the same inputs give the same interval), and each resample's difference is
    computed exactly like the point estimate (ratio of sums per order, then the mean of the orders).

    Returns {"n", "relative_a", "relative_b", "difference", "ci_low", "ci_high", "level", "n_boot",
    "n_only_a", "n_only_b"} (n_only_*: questions scored for one candidate only, left out of the pairing)."""
    import numpy as np

    sa = {q.id: q for q in a if q.ok}
    sb = {q.id: q for q in b if q.ok}
    ids = [i for i in sa if i in sb]
    out: dict[str, Any] = {"n": len(ids), "level": level, "n_boot": n_boot, "n_only_a": len(sa) - len(ids),
                           "n_only_b": len(sb) - len(ids), "relative_a": None, "relative_b": None,
                           "difference": None, "ci_low": None, "ci_high": None}
    if not ids:
        return out
    # per question: candidate and reference score in each order, for a then b -> shape (n, 2 candidates, 2 orders, 2)
    x = np.array([[[sc.scores[o] for o in ORDERS] for sc in (sa[i], sb[i])] for i in ids], dtype=float)

    def rel(sums: Any) -> Any:  # sums (..., 2 candidates, 2 orders, 2) -> relative score per candidate (..., 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = 100.0 * sums[..., 0] / sums[..., 1]
        r[sums[..., 1] <= 0] = np.nan
        return r.mean(axis=-1)

    point = rel(x.sum(axis=0))
    out["relative_a"], out["relative_b"] = (None if np.isnan(v) else float(v) for v in point)
    if np.isnan(point).any():
        return out
    out["difference"] = float(point[0] - point[1])
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    step = max(1, 2_000_000 // max(len(ids), 1))  # resamples per chunk: bounded memory for long question lists
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        idx = rng.integers(0, len(ids), size=(k, len(ids)))
        r = rel(x[idx].sum(axis=1))
        diffs[start:start + k] = r[:, 0] - r[:, 1]
    lo, hi = np.nanpercentile(diffs, [50 * (1 - level), 50 * (1 + level)])
    out["ci_low"], out["ci_high"] = float(lo), float(hi)
    return out


def format_summary(summary: dict[str, Any], title: str = "") -> str:
    """A short plain-text table of a `summarize` result."""

    def fmt(v: float | None) -> str:
        return "   -  " if v is None else f"{v:6.2f}"

    lines = [title] if title else []
    lines.append(f"{'category':16s} {'n':>4s} {'ref_1st':>7s} {'cand_1st':>8s} {'mean':>7s}  W/T/L")
    groups = [("OVERALL", summary["overall"])] + list(summary["by_category"].items())
    for name, g in groups:
        rel = g["relative"]
        lines.append(
            f"{name[:16]:16s} {g['n_scored']:4d} {fmt(rel['ref_first']):>7s} {fmt(rel['cand_first']):>8s} "
            f"{fmt(rel['mean']):>7s}  {g['win']}/{g['tie']}/{g['loss']}"
        )
    o = summary["overall"]
    j = summary["judge"]
    flip = "-" if j["swap_flip_rate"] is None else f"{j['swap_flip_rate']:.1%}"
    cm = "-" if o["candidate_mean"] is None else f"{o['candidate_mean']:.2f}"
    rm = "-" if o["reference_mean"] is None else f"{o['reference_mean']:.2f}"
    zeros = f", {j['zero_scores']} zero scores" if j.get("zero_scores") else ""
    lines.append(
        f"mean score: candidate {cm}, reference {rm}; judge: {j['parse_failures']} parse failures "
        f"({j['parse_failure_rate']:.1%} of orders), swap-flip rate {flip}, {o['n_excluded']} questions excluded"
        f"{zeros}"
    )
    return "\n".join(lines)


def rows_from_table(table: Iterable[dict[str, Any]]) -> list[QuestionScores]:
    """Rebuild QuestionScores from the per-question table rows that lion.evaluate writes."""
    out = []
    for t in table:
        scores: dict[str, tuple[float, float] | None] = {}
        for o in ORDERS:
            c, r = t.get(f"{o}_candidate"), t.get(f"{o}_reference")
            scores[o] = (float(c), float(r)) if c is not None and r is not None else None
        out.append(QuestionScores(id=str(t["id"]), category=str(t.get("category") or ""), scores=scores))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    from pathlib import Path

    from .records import read_jsonl

    ap = argparse.ArgumentParser(prog="python -m lion.evalscore", description=__doc__.splitlines()[0])
    ap.add_argument("table", help="table.jsonl written by python -m lion.evaluate")
    args = ap.parse_args(argv)
    if not Path(args.table).is_file():
        from .errors import DataError

        raise DataError(f"{args.table}: file not found")
    print(format_summary(summarize(rows_from_table(read_jsonl(Path(args.table))))))
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
