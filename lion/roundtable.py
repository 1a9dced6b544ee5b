"""The per-round summary: one definition for the loop's printout (lion.run) and the run report (lion.report).

    from lion.roundtable import collect_round, summary_table

A round's figures are gathered from its phase files (`collect_round`: imitation, discrimination, generation and
evaluation figures, plus the offline world's Cache Pool accuracy); `COLUMNS` says how each column of the table
is read from them; `summary_table` lays the rows out, `round_line` prints one round as it finishes and
`family_table` shows the offline world's per-family accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .layout import ControlPaths, RoundPaths
from .records import read_json_or_empty

FIGURES = ("imitation", "discrimination", "preference", "generation")


def collect_round(rp: RoundPaths) -> dict[str, Any]:
    """Round `rp.no`'s figures from its phase files (whatever exists so far; usage is the caller's)."""
    m: dict[str, Any] = {"round": rp.no}
    for phase in FIGURES:
        part = read_json_or_empty(rp.phase_metrics(phase))
        if part:
            m[phase] = part
    evaluation = read_json_or_empty(rp.eval_summary)
    if evaluation:
        m["eval"] = evaluation
    bench = read_json_or_empty(rp.eval.benchmarks)
    if bench:
        m["benchmarks"] = bench
    control = collect_control(rp.control)
    if control:
        m["control"] = control
    if "discrimination" in m and "oracle" in m["discrimination"]:
        m["oracle"] = m["discrimination"].pop("oracle")
    return m


def collect_control(cp: ControlPaths) -> dict[str, Any]:
    """The control student's figures of a round (lion.control), from its files: its new instructions (selection),
    training, evaluation, the comparison with the loop's student, and its benchmarks."""
    out: dict[str, Any] = {}
    for key, path in (("selection", cp.phase_metrics("selection")), ("imitation", cp.phase_metrics("imitation")),
                      ("eval", cp.eval_summary), ("comparison", cp.comparison), ("benchmarks", cp.eval.benchmarks)):
        part = read_json_or_empty(path)
        if part:
            out[key] = part
    return out


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.0f}"


def _pct1(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _cmp(m: dict[str, Any]) -> dict[str, Any]:
    return m.get("control", {}).get("comparison", {})


def ci_text(c: dict[str, Any]) -> str:
    """A comparison's confidence interval as "[-1.2, +3.4]" ("-" when there is none)."""
    if c.get("ci_low") is None or c.get("ci_high") is None:
        return "-"
    return f"[{c['ci_low']:+.1f}, {c['ci_high']:+.1f}]"


def control_text(m: dict[str, Any]) -> str | None:
    """The control student's figures of a round in a few words: loop vs control, the difference and its CI."""
    ctl = m.get("control") or {}
    if not ctl:
        return None
    sel, c = ctl.get("selection") or {}, ctl.get("comparison") or {}
    text = f"[control {sel.get('rule', '?')}: new {sel.get('new', '-')}"
    if c.get("difference") is not None:
        text += (f", loop {_fmt(c.get('loop'), '.1f')} vs control {_fmt(c.get('control'), '.1f')}: "
                 f"{c['difference']:+.1f} {ci_text(c)} (n={c.get('n')})")
    bench = (ctl.get("benchmarks") or {}).get("mean")
    if bench is not None:
        text += f", bench {_pct1(bench)}%"
    return text + "]"


def bench_text(b: dict[str, Any]) -> str | None:
    """The benchmarks of a round's student in a few words: the mean headline metric, the failed tasks."""
    if not b:
        return None
    text = f"bench {_pct1(b.get('mean'))}%" if b.get("mean") is not None else "bench -"
    if b.get("failed"):
        text += f" ({len(b['failed'])} failed: {', '.join(b['failed'])})"
    return text


def _disc(m: dict[str, Any], key: str) -> Any:
    return m.get("discrimination", {}).get(key)


def _accepted(m: dict[str, Any], kind: str) -> str:
    return str(m.get("generation", {}).get("accepted", {}).get(kind, "-"))


def _cut(m: dict[str, Any]) -> str:
    """Student answers cut at max_new_tokens: the count, `x` when they were excluded from the split."""
    n = _disc(m, "student_truncated")
    if n is None:
        return "-"
    return f"{n}x" if n and _disc(m, "truncated_student") == "exclude" else str(n)


def cut_text(d: dict[str, Any]) -> str:
    """The round line's words on student answers cut at max_new_tokens."""
    n = d.get("student_truncated") or 0
    if d.get("truncated_student") == "exclude":
        return f"student cut {n} (excluded)"
    return f"student cut {n} (kept, {d.get('student_truncated_hard', 0)} hard)"


def _total(m: dict[str, Any]) -> dict[str, Any]:
    return m.get("usage", {}).get("total", {})


# the per-round summary: (header, value from a round's figures)
COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("round", lambda m: str(m["round"])),
    ("train", lambda m: str(m.get("imitation", {}).get("n_train", "-"))),
    ("cache", lambda m: str(_disc(m, "n") if _disc(m, "n") is not None else "-")),
    ("hard%", lambda m: _pct(_disc(m, "hard_ratio"))),
    ("T mean", lambda m: _fmt(_disc(m, "teacher_mean"))),
    ("S mean", lambda m: _fmt(_disc(m, "student_mean"))),
    ("flip%", lambda m: _pct(_disc(m, "swap_flip_rate"))),
    ("parse fail", lambda m: str(_disc(m, "parse_failures") if _disc(m, "parse_failures") is not None else "-")),
    ("pref pairs", lambda m: str(m["preference"].get("pairs", "-")) if "preference" in m else "-"),
    ("excluded", lambda m: str(_disc(m, "excluded") if _disc(m, "excluded") is not None else "-")),
    # student answers cut at student.infer.max_new_tokens (judged, or excluded: discrimination.truncated_student)
    ("S cut", lambda m: _cut(m)),
    ("new hard", lambda m: _accepted(m, "hard")),
    ("new easy", lambda m: _accepted(m, "easy")),
    ("rejected", lambda m: str(sum(m["generation"]["rejected"].values())) if "generation" in m else "-"),
    # offline world: exact accuracy on the Cache Pool (seen in training) and on held-out questions (eval)
    ("pool acc%", lambda m: _pct(m.get("oracle", {}).get("overall"))),
    ("held-out acc%", lambda m: _pct(m.get("eval", {}).get("oracle", {}).get("overall"))),
    ("eval rel%", lambda m: _fmt(m.get("eval", {}).get("overall", {}).get("relative", {}).get("mean"), ".1f")),
    # the control student (eval.control) on the same questions: its relative score, loop - control and the 95% CI
    ("ctrl rel%", lambda m: _fmt(_cmp(m).get("control"), ".1f")),
    ("loop-ctrl", lambda m: _fmt(_cmp(m).get("difference"), "+.1f")),
    ("95% CI", lambda m: ci_text(_cmp(m))),
    # standard benchmarks (eval.benchmarks): the mean of the tasks' headline metrics, the loop's and the control's
    ("bench%", lambda m: _pct1(m.get("benchmarks", {}).get("mean"))),
    ("ctrl bench%", lambda m: _pct1(m.get("control", {}).get("benchmarks", {}).get("mean"))),
    ("USD", lambda m: f"{_total(m).get('usd', 0):.4f}"),
    ("tokens", lambda m: str(sum(_total(m).get(k, 0) for k in ("tokens_in", "tokens_out")))),
]


def table_rows(rounds: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(headers, one row of cells per round)."""
    return [h for h, _ in COLUMNS], [[f(m) for _, f in COLUMNS] for m in rounds]


def summary_table(rounds: Sequence[dict[str, Any]]) -> str:
    """The per-round summary: hard ratio, scores, referee health, new instructions, accuracy, spend (cumulative)."""
    head, rows = table_rows(rounds)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def round_line(m: dict[str, Any]) -> str:
    """One round in one line, printed as it finishes."""
    d, g, im = m.get("discrimination", {}), m.get("generation", {}), m.get("imitation", {})
    parts = [f"round {m['round']}:", f"train {im.get('n_train', '-')}"]
    if im.get("n_truncated_answers"):
        fate = "kept" if im.get("truncated_policy") == "keep" else "dropped"
        parts[-1] += f" ({im['n_truncated_answers']} truncated answers {fate})"
    if d:
        parts += [
            f"cache {d['n']}",
            f"hard {d['hard']} ({_fmt(d['hard_ratio'])})",
            f"scores T {_fmt(d['teacher_mean'])} / S {_fmt(d['student_mean'])}",
            f"flip {_fmt(d['swap_flip_rate'])}",
            f"parse-fail {'-' if d.get('parse_failures') is None else d['parse_failures']}",
            f"excluded {d.get('excluded', 0)}",
        ]
        if "student_truncated" in d:
            parts += [cut_text(d)]
    for name, sh in (d.get("shadows") or {}).items():
        parts += [shadow_text(name, sh)]
    if m.get("preference"):
        parts += [preference_text(m["preference"])]
    if g:
        fresh = f"+{g['fresh']}f" if g.get("fresh") else ""
        parts += [f"new {g['accepted']['hard']}h+{g['accepted']['easy']}e{fresh} ({g['stopped']})"]
    if "oracle" in m:
        parts += [f"pool acc {_pct(m['oracle'].get('overall'))}%"]
    held_out = m.get("eval", {}).get("oracle", {}).get("overall")
    if held_out is not None:
        parts += [f"held-out acc {_pct(held_out)}%"]
    rel = m.get("eval", {}).get("overall", {}).get("relative", {}).get("mean")
    if rel is not None:
        parts += [f"eval rel {_fmt(rel, '.1f')}%"]
    parts += [t for t in (bench_text(m.get("benchmarks") or {}), control_text(m)) if t]
    total = _total(m)
    if total:
        parts += [f"spent ${total.get('usd', 0):.4f}"]
    return "  ".join(parts)


def shadow_text(name: str, sh: dict[str, Any]) -> str:
    """A shadow selector's figures in a few words: hard share, agreement with the run's split, referee health."""
    text = f"[{name} shadow: hard {sh.get('hard', 0)} ({_fmt(sh.get('hard_ratio'))}), agree {_fmt(sh.get('agreement'))}"
    n_verdicts = sh.get("n_verdicts")
    if n_verdicts:
        text += f", parse-fail {sh.get('parse_failures', 0)}/{n_verdicts} ({_pct(sh.get('parse_failure_rate'))}%)"
    if sh.get("excluded"):
        text += f", excluded {sh['excluded']}"
    return text + "]"


def preference_text(p: dict[str, Any]) -> str:
    """The preference stage in a few words: method, pairs, the implicit reward margin and the share ranked right."""
    t = p.get("train") or {}
    if not t:
        return f"[{p.get('method')}: {p.get('pairs', 0)} pairs, not trained]"
    return (f"[{p.get('method')}: {p.get('pairs', 0)} pairs, margin {_fmt(t.get('margin_first'))}->"
            f"{_fmt(t.get('margin_last'))}, right {_pct(t.get('ranked_right_first'))}->"
            f"{_pct(t.get('ranked_right_last'))}%]")


def family_table(rounds: Sequence[dict[str, Any]]) -> str | None:
    """Offline world: the student's exact accuracy per task family and round (held-out when evaluated)."""
    cols: list[tuple[str, dict[str, float]]] = []
    for m in rounds:
        held_out = m.get("eval", {}).get("oracle", {}).get("accuracy")
        pool = m.get("oracle", {}).get("accuracy")
        if held_out:
            cols.append((f"r{m['round']} held-out", held_out))
        elif pool:
            cols.append((f"r{m['round']} pool", pool))
    if not cols:
        return None
    families = sorted({f for _, acc in cols for f in acc})
    width = max(len(f) for f in [*families, "family"])
    lines = ["family".ljust(width) + "".join(f"  {h:>13}" for h, _ in cols)]
    for f in families:
        lines.append(f.ljust(width) + "".join(f"  {_pct(acc.get(f)):>13}" for _, acc in cols))
    return "student accuracy per task family (%):\n" + "\n".join(lines)
