"""What the judge really writes: lion's fastchat verdict parser over FastChat's 2023 GPT-4 review tables.

    python bench/fastchat_reviews.py --tables DIR [--exclude ../shared/data/real_reviews] [--show 10]

DIR is FastChat's `fastchat/eval/table/` (lm-sys/FastChat, Apache-2.0; not shipped with lion): `review/**/*.jsonl`
(one GPT-4 review per row: "question_id", "answer1_id", "answer2_id", "text", "score": the [s1, s2] FastChat's own
parser recorded, [-1, -1] when it could not), `answer/*.jsonl` (the answers the reviews judged, by "answer_id")
and `question.jsonl` (each question's category). Every review is parsed with `lion.verdicts.parse_fastchat`, with
the two answers it judged (so the copied-line defence is on, as in a real evaluation).

Printed: per review file, the reviews parsed and failed; then over every file, and over the reviews that are not
in `--exclude` (by review_id: the 80 reviews ../shared/data/real_reviews already holds), how many parse, the zero
scores accepted (FastChat's judge gives 0 to an empty answer), the math reviews read and how their verdict was
written (a closing tuple, labelled lines, ...), the reviews where the text and FastChat's recorded score disagree
(lion trusts the text) and the ones FastChat could not parse; and, for each file with a zero score, the relative
score of the side given the 0 (100 * its score sum / the other's) with the zero counted and with the pair excluded,
as a parser that refuses a 0 would have it (the exclusion raises it). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lion.evalscore import relative  # noqa: E402
from lion.verdicts import Verdict, parse_fastchat  # noqa: E402


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_tables(tables: Path) -> tuple[dict[str, str], dict[str, str], list[tuple[Path, list[dict[str, Any]]]]]:
    """(answer text by answer_id, category by question_id, [(review file, rows)])."""
    answers = {str(a["answer_id"]): a["text"] for f in sorted((tables / "answer").glob("*.jsonl")) for a in _jsonl(f)}
    categories = {str(q["question_id"]): str(q.get("category", "")) for q in _jsonl(tables / "question.jsonl")}
    reviews = [(f, _jsonl(f)) for f in sorted((tables / "review").rglob("*.jsonl"))]
    if not reviews:
        raise SystemExit(f"{tables}/review: no review files (is --tables FastChat's fastchat/eval/table/?)")
    return answers, categories, reviews


def excluded_ids(paths: list[str]) -> set[str]:
    ids: set[str] = set()
    for p in map(Path, paths):
        for f in sorted(p.rglob("*.jsonl")) if p.is_dir() else [p] if p.is_file() else []:
            ids |= {str(r["review_id"]) for r in _jsonl(f) if isinstance(r, dict) and "review_id" in r}
    return ids


def tally(items: list[tuple[dict[str, Any], Verdict, str]]) -> dict[str, Any]:
    """The figures over (review row, verdict, category) items."""
    parsed = [(r, v, c) for r, v, c in items if v.ok]
    recorded = [(r, v) for r, v, _ in parsed if r.get("score") not in (None, [-1, -1])]
    disagree = [(r, v) for r, v in recorded if [v.a, v.b] != [float(x) for x in r["score"]]]
    math = [(r, v) for r, v, c in items if c == "math"]
    return {
        "reviews": len(items),
        "parsed": len(parsed),
        "failed": len(items) - len(parsed),
        "zero_scores": sum((v.a == 0) + (v.b == 0) for _, v, _ in parsed),
        "reviews_with_a_zero": sum(1 for _, v, _ in parsed if 0 in (v.a, v.b)),
        "math": len(math),
        "math_parsed": sum(1 for _, v in math if v.ok),
        "math_forms": dict(Counter(v.form for _, v in math if v.ok)),
        "forms": dict(Counter(v.form for _, v, _ in parsed)),
        "recorded": len(recorded),
        "disagree_with_recorded": len(disagree),
        "fastchat_unparsed": sum(1 for r, _, _ in items if r.get("score") == [-1, -1]),
        "fastchat_unparsed_read": sum(1 for r, v, _ in parsed if r.get("score") == [-1, -1]),
    }


def zero_effect(rows: list[tuple[dict[str, Any], Verdict]]) -> dict[str, Any]:
    """The relative score of the side that was given zeros (vs the other side), with its zero scores counted and
    with their pairs excluded, as a parser that refuses a 0 would have it."""
    ok = [v for _, v in rows if v.ok]
    side = "1" if sum(v.a == 0 for v in ok) >= sum(v.b == 0 for v in ok) else "2"
    kept = [v for v in ok if 0 not in (v.a, v.b)]

    def rel(vs: list[Verdict]) -> float | None:
        mine, other = (sum(v.a for v in vs), sum(v.b for v in vs))  # type: ignore[misc]
        return relative(mine, other) if side == "1" else relative(other, mine)

    return {"side": f"Assistant {side}", "zero_counted": rel(ok), "zero_excluded": rel(kept)}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/fastchat_reviews.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", required=True, help="FastChat's fastchat/eval/table/ directory")
    p.add_argument("--exclude", nargs="*", default=[str(ROOT.parent / "shared" / "data" / "real_reviews")],
                   help="review files (or folders) whose review_ids the 'further' figures leave out")
    p.add_argument("--show", type=int, default=10, help="list at most this many failures and disagreements")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    tables = Path(args.tables)
    answers, categories, reviews = load_tables(tables)
    skip = excluded_ids(args.exclude)
    everything: list[tuple[dict[str, Any], Verdict, str]] = []
    effects: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for path, rows in reviews:
        name = str(path.relative_to(tables / "review"))
        judged = []
        for r in rows:
            shown = tuple(answers.get(str(r.get(k)), "") for k in ("answer1_id", "answer2_id"))
            v = parse_fastchat(r.get("text"), shown)
            cat = categories.get(str(r.get("question_id")), "")
            judged.append((r, v))
            everything.append((r, v, cat))
            where = f"{name}:{rows.index(r) + 1} (question {r.get('question_id')}, {cat})"
            if not v.ok:
                notes.append(f"  failed     {where}: {v.error}")
            elif r.get("score") not in (None, [-1, -1]) and [v.a, v.b] != [float(x) for x in r["score"]]:
                notes.append(f"  disagrees  {where}: the text gives ({v.a:g}, {v.b:g}), FastChat recorded "
                             f"{r['score']} (lion trusts the text)")
        t = tally([(r, v, "") for r, v in judged])
        print(f"{name}: {t['parsed']}/{t['reviews']} parsed" + (f", {t['reviews_with_a_zero']} with a 0"
                                                                 if t["reviews_with_a_zero"] else ""))
        if t["reviews_with_a_zero"]:
            effects[name] = zero_effect(judged)
    print(*notes[: args.show], sep="\n")
    if len(notes) > args.show:
        print(f"  ... {len(notes) - args.show} more")
    total = tally(everything)
    further = tally([x for x in everything if str(x[0].get("review_id")) not in skip])
    for label, t in (("all reviews", total), (f"further reviews (not in {', '.join(args.exclude) or '-'})", further)):
        print(f"{label}: {t['parsed']} of {t['reviews']} parsed ({t['failed']} failed); {t['zero_scores']} zero "
              f"scores accepted in {t['reviews_with_a_zero']} reviews; math {t['math_parsed']}/{t['math']} read "
              f"(by form: {t['math_forms']}); text vs FastChat's recorded score: {t['disagree_with_recorded']} of "
              f"{t['recorded']} disagree (the text is trusted); {t['fastchat_unparsed']} FastChat could not parse "
              f"({t['fastchat_unparsed_read']} read here)")
    for name, e in effects.items():
        zc, ze = e["zero_counted"], e["zero_excluded"]
        if zc is not None and ze is not None:
            print(f"{name}: {e['side']}, given the 0, scores {zc:.2f}% of the other with the zero counted, "
                  f"{ze:.2f}% if its pair were excluded ({ze - zc:+.2f} points)")
    print(json.dumps({"tables": str(tables), "files": len(reviews), "all": total, "further": further,
                      "zero_effect": effects}))
    return 0 if total["parsed"] else 1


if __name__ == "__main__":
    sys.exit(main())
