"""The run report: one self-contained HTML file with plots, plus a short text summary.

    python -m lion.report RUN_DIR [--out RUN_DIR/report.html] [--lineages 3]

Reads only the run directory (docs/run-dir.md): round_XX/metrics.json, split.jsonl, generated.jsonl,
rejected.jsonl, student_answers.jsonl, eval/summary.json, the run-level usage.json, state.json and
config.yaml. Works on a finished run or one still in progress (missing pieces are reported as missing).
Writes RUN_DIR/report.html (every image embedded as a base64 PNG data URI, so it opens from disk with no
server and can be mailed as one file) and RUN_DIR/report.txt, and prints the text summary.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import plots
from .errors import DataError, LionError
from .layout import OPTIONAL_PHASES, PHASES, RoundPaths, RunLayout
from .records import atomic_write_text, read_jsonl
from .roundtable import ci_text, collect_round, shadow_text, table_rows
from .snapshots import format_roles, per_role, read_snapshots

# --------------------------------------------------------------------------------------------- reading


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


@dataclass
class RoundData:
    paths: RoundPaths
    figures: dict[str, Any] = field(default_factory=dict)  # metrics.json, or lion.roundtable.collect_round
    split: list[dict[str, Any]] = field(default_factory=list)
    generated: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    student_answers: dict[str, str] = field(default_factory=dict)
    eval: dict[str, Any] | None = None

    @property
    def no(self) -> int:
        return self.paths.no

    @property
    def disc(self) -> dict[str, Any]:
        return self.figures.get("discrimination") or {}

    @property
    def gen(self) -> dict[str, Any]:
        return self.figures.get("generation") or {}

    @property
    def pref(self) -> dict[str, Any]:
        """The preference stage's figures (imitation.preference), {} when it did not run."""
        return self.figures.get("preference") or {}

    @property
    def oracle(self) -> dict[str, Any] | None:
        """Offline world: the student's exact accuracy per family, on the held-out evaluation questions when
        the round was evaluated, else on the Cache Pool (measured by discrimination)."""
        return (self.eval or {}).get("oracle") or self.figures.get("oracle")

    @property
    def oracle_source(self) -> str:
        return "held-out" if (self.eval or {}).get("oracle") else "Cache Pool"

    def phases_done(self) -> list[str]:
        return [p for p in (*PHASES, *OPTIONAL_PHASES) if self.paths.done(p).exists()]


@dataclass
class RunData:
    layout: RunLayout
    rounds: list[RoundData]
    usage: dict[str, Any] | None
    state: dict[str, Any] | None
    config: dict[str, Any] | None
    other_evals: dict[str, dict[str, Any]]
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # lion.snapshots: served model per role

    @property
    def path(self) -> Path:
        return self.layout.root


def load_round(rp: RoundPaths) -> RoundData:
    r = RoundData(rp)
    # a finished round's metrics.json; a round in progress: whatever its phases have written so far
    r.figures = _json(rp.metrics) or collect_round(rp)
    r.split = _jsonl(rp.split)
    r.generated = _jsonl(rp.generated)
    r.rejected = _jsonl(rp.rejected)
    r.student_answers = {str(a.get("id")): str(a.get("answer", "")) for a in _jsonl(rp.student_answers)}
    r.eval = _json(rp.eval.summary) or r.figures.get("eval") or None
    if r.eval is not None:
        r.figures["eval"] = r.eval
    return r


def load_run(run_dir: str | Path) -> RunData:
    layout = RunLayout(run_dir)
    if not layout.root.is_dir():
        raise LionError(f"{layout.root}: no such run directory")
    rounds = [load_round(rp) for rp in layout.rounds()]
    if not rounds:
        raise LionError(f"{layout.root}: no round_XX directories; is this a lion run directory?")
    config = None
    if layout.config.is_file():
        import yaml

        try:
            config = yaml.safe_load(layout.config.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            config = None
    others = {}
    if layout.evals_dir.is_dir():
        for d in sorted(layout.evals_dir.iterdir()):
            summary = _json(layout.eval(d.name).summary) if d.is_dir() else None
            if summary:
                others[d.name] = summary
    return RunData(
        layout=layout,
        rounds=rounds,
        usage=_json(layout.usage),
        state=_json(layout.state),
        config=config if isinstance(config, dict) else None,
        other_evals=others,
        snapshots=read_snapshots(layout.calls_file(_get(config if isinstance(config, dict) else None, "llm",
                                                         "cache_path"))),
    )


# --------------------------------------------------------------------------------------------- figures


def _get(d: dict[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _eval_rel(e: dict[str, Any] | None, which: str = "mean") -> float | None:
    return _get(e, "overall", "relative", which)


def _usage_rows(run: RunData) -> list[dict[str, Any]]:
    usage = run.usage
    if not usage:  # fall back to the newest round's snapshot
        for r in reversed(run.rounds):
            if r.figures.get("usage"):
                usage = r.figures["usage"]
                break
    rows = (usage or {}).get("by") or []
    return [u for u in rows if isinstance(u, dict)]


def _xs(run: RunData) -> list[int]:
    return [r.no for r in run.rounds]


def _labels(run: RunData) -> list[str]:
    return [f"round {r.no}" for r in run.rounds]


# ---------------------------------------------------------------- discrimination


def _hard_ratio(run: RunData) -> bytes | None:
    return plots.line_chart(
        "Share of the Cache Pool judged hard", _xs(run), {"hard ratio": [r.disc.get("hard_ratio") for r in run.rounds]},
        ylabel="hard", percent=True, ylim=(-3, 103),
    )  # fmt: skip


def _mean_scores(run: RunData) -> bytes | None:
    series = {who: [r.disc.get(f"{who}_mean") for r in run.rounds] for who in ("teacher", "student")}
    return plots.line_chart("Referee mean score per round", _xs(run), series, ylabel="score (1-10)")


def _gap_histogram(run: RunData) -> bytes | None:
    tau = _get(run.config, "discrimination", "tau")
    gaps = {f"round {r.no}": [float(s["gap"]) for s in r.split if s.get("gap") is not None] for r in run.rounds}
    return plots.histogram(
        "Gap = teacher score - student score (both orders averaged)", gaps, xlabel="gap",
        marker=float(tau) if isinstance(tau, (int, float)) else None, marker_label="tau",
    )  # fmt: skip


def _shadows(run: RunData) -> list[str]:
    return sorted({name for r in run.rounds for name in (r.disc.get("shadows") or {})})


def _selectors_hard(run: RunData) -> bytes | None:
    """The hard share of the run's selector next to each shadow selector's, and their agreement."""
    own = sorted({str(r.disc.get("selector", "referee")) for r in run.rounds if r.disc})
    series = {f"{' / '.join(own)} (the run's split)": [r.disc.get("hard_ratio") for r in run.rounds]}
    for name in _shadows(run):
        sh = [(r.disc.get("shadows") or {}).get(name) or {} for r in run.rounds]
        series[f"{name} (shadow): hard share"] = [x.get("hard_ratio") for x in sh]
        series[f"{name} (shadow): agreement with the run's split"] = [x.get("agreement") for x in sh]
    return plots.line_chart("Hard share under each selector", _xs(run), series, ylabel="share", percent=True,
                            ylim=(-3, 103))


def _student_cut(run: RunData) -> bytes | None:
    """Student answers cut at student.infer.max_new_tokens per round, how many of them were labelled hard, and how
    many were excluded (discrimination.truncated_student: exclude)."""
    if not any(r.disc.get("student_truncated") for r in run.rounds):
        return None
    excluded = [(r.disc.get("student_truncated") or 0) if r.disc.get("truncated_student") == "exclude" else 0
                for r in run.rounds]
    series = {
        "cut at max_new_tokens": [r.disc.get("student_truncated") or 0 for r in run.rounds],
        "of them labelled hard": [r.disc.get("student_truncated_hard") or 0 for r in run.rounds],
        "of them excluded (truncated_student: exclude)": excluded,
    }
    return plots.bar_chart("Student answers cut at student.infer.max_new_tokens", _labels(run), series,
                           ylabel="answers")


def _referee_health(run: RunData) -> bytes | None:
    series = {
        "swap-flip rate": [r.disc.get("swap_flip_rate") for r in run.rounds],
        "parse-failure rate": [r.disc.get("parse_failure_rate") for r in run.rounds],
    }
    for name in _shadows(run):
        sh = [(r.disc.get("shadows") or {}).get(name) or {} for r in run.rounds]
        if any(x.get("n_verdicts") for x in sh):
            series[f"{name} (shadow): swap-flip rate"] = [x.get("swap_flip_rate") for x in sh]
            series[f"{name} (shadow): parse-failure rate"] = [x.get("parse_failure_rate") for x in sh]
    return plots.line_chart("Referee health per round", _xs(run), series, ylabel="rate", percent=True, ymin=0)


# ---------------------------------------------------------------- preference stage


def _preference(run: RunData) -> bytes | None:
    """Pairs trained per round, and the implicit reward margin and loss at the stage's first and last step."""
    t = [r.pref.get("train") or {} for r in run.rounds]
    series = {
        "reward margin, first step": [x.get("margin_first") for x in t],
        "reward margin, last step": [x.get("margin_last") for x in t],
        "loss, first step": [x.get("loss_first") for x in t],
        "loss, last step": [x.get("loss_last") for x in t],
    }
    pairs = ", ".join(f"r{r.no}: {r.pref.get('pairs', 0)}" for r in run.rounds if r.pref)
    return plots.line_chart(f"Preference stage ({pairs} pairs)", _xs(run), series, ylabel="nats")


# ---------------------------------------------------------------- generation


def _new_by_kind(run: RunData) -> bytes | None:
    series = {
        f"{kind} {what}": [_get(r.gen, what, kind) for r in run.rounds]
        for kind in ("hard", "easy")
        for what in ("accepted", "wanted")
    }
    return plots.bar_chart(
        "New instructions: accepted (and wanted) by kind", _labels(run), series, ylabel="instructions",
        colors=("#b2182b", "#f4a582", "#1b7837", "#a6dba0"),
    )  # fmt: skip


def _rejections(run: RunData) -> bytes | None:
    reasons: dict[str, list[float]] = {}
    for i, r in enumerate(run.rounds):
        counts = r.gen.get("rejected") or _count(x.get("reason", "?") for x in r.rejected)
        for reason, n in counts.items():
            reasons.setdefault(str(reason), [0.0] * len(run.rounds))[i] = float(n)
    return plots.bar_chart(
        "Rejected candidates by reason", _labels(run), dict(sorted(reasons.items())), stacked=True,
        ylabel="candidates",
    )  # fmt: skip


# ---------------------------------------------------------------- spend


def _spend_by(run: RunData, *fields: str) -> tuple[list[str], dict[str, list[float]]]:
    """(role / phase categories, {field: total per category}) from the usage ledger."""
    rows = _usage_rows(run)
    keys = sorted({(str(u.get("role")), str(u.get("phase"))) for u in rows})

    def total(f: str, key: tuple[str, str]) -> float:
        return sum(float(u.get(f) or 0) for u in rows if (str(u.get("role")), str(u.get("phase"))) == key)

    return [f"{role} / {phase}" for role, phase in keys], {f: [total(f, k) for k in keys] for f in fields}


def _tokens(run: RunData) -> bytes | None:
    cats, t = _spend_by(run, "tokens_in", "tokens_out")
    series = {"tokens in": t["tokens_in"], "tokens out": t["tokens_out"]}
    return plots.bar_chart("Tokens by role / phase", cats, series, stacked=True, horizontal=True, ylabel="tokens")


def _usd(run: RunData) -> bytes | None:
    cats, t = _spend_by(run, "usd")
    if not any(t["usd"]):
        return None
    return plots.bar_chart("Spend (USD) by role / phase", cats, {"USD": t["usd"]}, horizontal=True, ylabel="USD")


# ---------------------------------------------------------------- evaluation

BASE_LABEL = "base model (python -m lion.evaluate --base)"


def _relative_trend(run: RunData) -> bytes | None:
    trend = {
        "mean of both orders": [_eval_rel(r.eval) for r in run.rounds],
        "reference shown first": [_eval_rel(r.eval, "ref_first") for r in run.rounds],
        "candidate shown first": [_eval_rel(r.eval, "cand_first") for r in run.rounds],
    }
    base = run.other_evals.get("base")
    if base is not None and _eval_rel(base) is not None and any(v is not None for v in trend["mean of both orders"]):
        trend[BASE_LABEL] = [_eval_rel(base)] * len(run.rounds)
    return plots.line_chart(
        "Relative score vs the reference (%), per round", _xs(run), trend, ylabel="relative score",
        emphasise=(BASE_LABEL,),
    )  # fmt: skip


def _relative_by_category(run: RunData) -> bytes | None:
    cats = sorted({c for r in run.rounds for c in (_get(r.eval, "by_category") or {})})
    series = {c: [_get(r.eval, "by_category", c, "relative", "mean") for r in run.rounds] for c in cats}
    return plots.line_chart(
        "Relative score per category (mean of both orders)", _xs(run), series, ylabel="relative score"
    )


def _family_accuracy(run: RunData) -> bytes | None:
    fams = sorted({f for r in run.rounds for f in (_get(r.oracle, "accuracy") or {})})
    series = {f: [_get(r.oracle, "accuracy", f) for r in run.rounds] for f in fams}
    series["overall"] = [_get(r.oracle, "overall") for r in run.rounds]
    where = sorted({r.oracle_source for r in run.rounds if r.oracle})
    return plots.line_chart(
        f"Oracle-graded exact accuracy of the student ({' / '.join(where)} questions)", _xs(run), series,
        ylabel="accuracy", percent=True, emphasise=("overall",), ylim=(-3, 103),
    )  # fmt: skip


def _offline_world(run: RunData) -> bool:
    return any(_get(r.oracle, "accuracy") for r in run.rounds)


# ---------------------------------------------------------------- control student and benchmarks


def _control(r: RoundData) -> dict[str, Any]:
    return r.figures.get("control") or {}


def _has_control(run: RunData) -> bool:
    return any(_control(r) for r in run.rounds)


def _cmp(r: RoundData) -> dict[str, Any]:
    return _control(r).get("comparison") or {}


def _control_relative(run: RunData) -> bytes | None:
    rule = sorted({str((_control(r).get("selection") or {}).get("rule")) for r in run.rounds if _control(r)})
    # the loop's own score where no control was compared (round 1, rounds before it joined): its evaluation's
    series = {"loop's student": [_cmp(r).get("loop", _eval_rel(r.eval)) for r in run.rounds],
              f"control ({' / '.join(rule)})": [_cmp(r).get("control") for r in run.rounds]}
    return plots.line_chart("Relative score on the same questions: loop vs control", _xs(run), series,
                            ylabel="relative score")


def _control_difference(run: RunData) -> bytes | None:
    label = "loop - control (95% bootstrap CI over questions)"
    diffs = [_cmp(r).get("difference") for r in run.rounds]
    cis = [(c["ci_low"], c["ci_high"]) if c.get("ci_low") is not None else None for c in map(_cmp, run.rounds)]
    return plots.line_chart("Paired difference of the relative score", _xs(run), {label: diffs},
                            ylabel="points", intervals={label: cis}, hline=0.0, emphasise=(label,))


def _bench(r: RoundData, control: bool = False) -> dict[str, Any]:
    return ((_control(r).get("benchmarks") if control else r.figures.get("benchmarks")) or {})


def _has_benchmarks(run: RunData) -> bool:
    return any(_bench(r) or _bench(r, True) for r in run.rounds)


def _benchmarks(run: RunData) -> bytes | None:
    tasks = sorted({t for r in run.rounds for c in (False, True) for t in (_bench(r, c).get("tasks") or {})})
    series: dict[str, list[float | None]] = {}
    for t in tasks:
        for c, who in ((False, "loop"), (True, "control")):
            vals = [((_bench(r, c).get("tasks") or {}).get(t) or {}).get("value") for r in run.rounds]
            if any(v is not None for v in vals):
                series[f"{t} ({who})"] = vals
    return plots.line_chart("Benchmarks (lm-eval): headline metric per task", _xs(run), series, ylabel="score",
                            percent=True)


@dataclass(frozen=True)
class FigureSpec:
    section: str
    title: str
    draw: Callable[[RunData], bytes | None]  # None: no data yet
    shown: Callable[[RunData], bool] = lambda run: True  # noqa: E731 - some figures exist only offline


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("Discrimination", "Hard ratio per round", _hard_ratio),
    FigureSpec("Discrimination", "Teacher and student mean score", _mean_scores),
    FigureSpec("Discrimination", "Gap histogram", _gap_histogram),
    FigureSpec("Discrimination", "Hard share under each selector (shadow selectors)", _selectors_hard,
               lambda run: bool(_shadows(run))),
    FigureSpec("Discrimination", "Student answers cut at max_new_tokens", _student_cut),
    FigureSpec("Referee health", "Swap-flip and parse-failure rates", _referee_health),
    FigureSpec("Preference stage", "Reward margin and loss of the preference stage", _preference,
               lambda run: any(r.pref.get("train") for r in run.rounds)),
    FigureSpec("Generation", "New instructions by kind", _new_by_kind),
    FigureSpec("Generation", "Rejected candidates by reason", _rejections),
    FigureSpec("Spend", "Tokens by role and phase", _tokens),
    FigureSpec("Spend", "Spend by role and phase", _usd),
    FigureSpec("Evaluation", "Relative score trend", _relative_trend),
    FigureSpec("Evaluation", "Relative score per category", _relative_by_category),
    FigureSpec("Evaluation", "Exact accuracy per task family (offline world)", _family_accuracy, _offline_world),
    FigureSpec("Control student", "Loop vs control: relative score per round", _control_relative, _has_control),
    FigureSpec("Control student", "Loop - control with its 95% CI", _control_difference, _has_control),
    FigureSpec("Benchmarks", "Benchmarks per round", _benchmarks, _has_benchmarks),
)


def build_figures(run: RunData) -> list[tuple[str, str, bytes | None]]:
    """(section, title, png-or-None) in report order."""
    return [(f.section, f.title, f.draw(run)) for f in FIGURES if f.shown(run)]


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


# --------------------------------------------------------------------------------------------- lineages


@dataclass
class Lineage:
    round: int
    seed: dict[str, Any]  # split row of the hard seed
    seed_answer: str | None
    children: list[dict[str, Any]]  # generated rows + "next" (next round's split row) + "answer"


def find_lineages(run: RunData, k: int = 3, max_children: int = 5) -> list[Lineage]:
    """Hard seeds of round r with the instructions generated from them and their fate in round r+1."""
    by_no = {r.no: r for r in run.rounds}
    cands: list[tuple[int, float, Lineage]] = []
    for r in run.rounds:
        nxt = by_no.get(r.no + 1)
        next_split = {str(s.get("id")): s for s in (nxt.split if nxt else [])}
        children: dict[str, list[dict[str, Any]]] = {}
        for g in r.generated:
            if g.get("kind") == "hard" and g.get("parent"):
                children.setdefault(str(g["parent"]), []).append(g)
        for s in r.split:
            sid = str(s.get("id"))
            if s.get("label") != "hard" or sid not in children:
                continue
            kids = []
            for g in children[sid][:max_children]:
                gid = str(g.get("id"))
                kids.append({**g, "next": next_split.get(gid), "answer": nxt.student_answers.get(gid) if nxt else None})
            judged = sum(1 for c in kids if (c["next"] or {}).get("label") in ("hard", "easy"))
            lin = Lineage(r.no, s, r.student_answers.get(sid), kids)
            cands.append((judged, float(s.get("gap") or 0.0), lin))
    cands.sort(key=lambda t: (-t[0], -t[1], t[2].round))
    return [c[2] for c in cands[:k]]


# --------------------------------------------------------------------------------------------- text summary


def _f(v: Any, spec: str = ".2f", none: str = "-") -> str:
    if v is None:
        return none
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def round_rows(run: RunData) -> list[dict[str, str]]:
    """The per-round summary of lion.roundtable (the same table the loop prints), with the phases done."""
    head, rows = table_rows([r.figures for r in run.rounds])
    out = []
    for r, cells in zip(run.rounds, rows, strict=True):
        row = dict(zip(head, cells, strict=True))
        out.append({"round": row.pop("round"), "phases done": ",".join(p[:3] for p in r.phases_done()) or "-", **row})
    return out


def _table_text(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.rjust(widths[c]) for c in cols)]
    lines += ["  ".join(r[c].rjust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def usage_total(run: RunData) -> dict[str, float]:
    rows = _usage_rows(run)
    tot = {k: sum(float(u.get(k) or 0) for u in rows)
           for k in ("calls", "cached", "tokens_in", "tokens_out", "tokens_cache_read", "usd")}
    t = (run.usage or {}).get("total")
    if isinstance(t, dict):  # trust the ledger's own total when it has one
        tot.update({k: float(t[k]) for k in tot if isinstance(t.get(k), (int, float))})
    return tot


def _short(spec: Any) -> str:
    """The last two parts of a question-file path (vicuna80/question.jsonl); "oracle" as is."""
    parts = Path(str(spec)).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else str(spec)


def text_summary(run: RunData) -> str:
    done = _get(run.state, "rounds_completed")
    lines = [
        f"lion run {run.path}: {len(run.rounds)} round director{'y' if len(run.rounds) == 1 else 'ies'}"
        + (f", {done} round(s) completed" if done is not None else "")
    ]
    lines.append(_table_text(round_rows(run)))
    t = usage_total(run)
    lines.append(
        f"LLM usage: {t['calls']:.0f} calls ({t['cached']:.0f} replayed from cache), "
        f"{t['tokens_in']:.0f} tokens in ({t['tokens_cache_read'] / t['tokens_in'] if t['tokens_in'] else 0:.0%} "
        f"read from the provider's prompt cache), {t['tokens_out']:.0f} out, ${t['usd']:.4f}"
    )
    for r in run.rounds:
        for name, sh in (r.disc.get("shadows") or {}).items():
            lines.append(f"round {r.no} {shadow_text(name, sh)} (the run split with {r.disc.get('selector', '?')}: "
                         f"hard {_f(r.disc.get('hard_ratio'))})")
    evals = [(r.no, r.eval) for r in run.rounds if r.eval]
    if evals:
        no, e = evals[-1]
        o = e.get("overall", {})
        rel = o.get("relative", {})
        lines.append(
            f"evaluation (round {no}, {_short(e.get('questions', '?'))}): relative score {_f(rel.get('mean'))}% "
            f"(ref first {_f(rel.get('ref_first'))}, cand first {_f(rel.get('cand_first'))}), "
            f"W/T/L {o.get('win', 0)}/{o.get('tie', 0)}/{o.get('loss', 0)} over {o.get('n_scored', 0)} questions"
        )
    for name, e in run.other_evals.items():
        rel = _get(e, "overall", "relative") or {}
        lines.append(f"evaluation of {name}: relative score {_f(rel.get('mean'))}%")
    if run.snapshots:
        lines.append("served snapshots (the model each provider said answered, paid calls):")
        lines += format_roles(per_role(run.snapshots))
    for row in control_rows(run):
        lines.append(f"control ({row['rule']}) round {row['round']}: loop {row['loop %']}% vs control "
                     f"{row['control %']}%: {row['loop - control']} {row['95% CI']} over {row['questions']} questions")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right}figure{display:inline-block;margin:6px 10px 6px 0}
figcaption{font-size:12px;color:#555}pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:12px}
.wide{overflow-x:auto;max-width:100%}.muted{color:#888;font-size:12px}.hard{color:#b00}.easy{color:#070}.q{max-width:520px;white-space:pre-wrap}
"""


def _esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _clip(s: Any, n: int = 300) -> str:
    s = "" if s is None else str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


def _html_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p class=muted>no rows</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td class=num>{_esc(r[c])}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<div class=wide><table><tr>{head}</tr>{body}</table></div>"  # a wide table scrolls, not the page


def _lineages_html(lins: list[Lineage]) -> str:
    if not lins:
        return "<p class=muted>no hard seed with generated children yet</p>"
    parts = []
    for lin in lins:
        s = lin.seed
        parts.append(
            f"<h3>Round {lin.round} hard seed <code>{_esc(s.get('id'))}</code>: gap {_f(s.get('gap'))} "
            f"(teacher {_f(s.get('teacher_score'))}, student {_f(s.get('student_score'))})</h3>"
            f"<div class=q>{_esc(_clip(s.get('instruction'), 500))}</div>"
            + (
                f"<p class=muted>student answer (round {lin.round}): {_esc(_clip(lin.seed_answer, 200))}</p>"
                if lin.seed_answer is not None
                else ""
            )
        )
        rows = [
            "<tr><th>generated (hard)</th><th>next round: teacher</th><th>student</th><th>gap</th>"
            "<th>label</th><th>student answer next round</th></tr>"
        ]
        for c in lin.children:
            nx = c.get("next") or {}
            label = nx.get("label", "not judged")
            rows.append(
                f"<tr><td class=q>{_esc(_clip(c.get('instruction'), 300))}</td>"
                f"<td class=num>{_f(nx.get('teacher_score'))}</td><td class=num>{_f(nx.get('student_score'))}</td>"
                f"<td class=num>{_f(nx.get('gap'))}</td><td class={_esc(label)}>{_esc(label)}</td>"
                f"<td class=q>{_esc(_clip(c.get('answer'), 200)) if c.get('answer') is not None else '-'}</td></tr>"
            )
        parts.append("<table>" + "".join(rows) + "</table>")
    return "\n".join(parts)


def _eval_tables_html(run: RunData) -> str:
    parts = []
    evals = [(f"round {r.no}", r.eval) for r in run.rounds if r.eval] + list(run.other_evals.items())
    if not evals:
        return "<p class=muted>no evaluation yet (set eval.every_round, or run python -m lion.evaluate)</p>"
    rows = []
    for name, e in evals:
        o = e.get("overall", {})
        rel = o.get("relative", {})
        j = e.get("judge", {})
        rows.append(
            {
                "evaluated": name,
                "questions": _short(e.get("questions", "-")),
                "n": str(o.get("n_scored", "-")),
                "ref first %": _f(rel.get("ref_first")),
                "cand first %": _f(rel.get("cand_first")),
                "mean %": _f(rel.get("mean")),
                "cand mean": _f(o.get("candidate_mean")),
                "ref mean": _f(o.get("reference_mean")),
                "W/T/L": f"{o.get('win', 0)}/{o.get('tie', 0)}/{o.get('loss', 0)}",
                "judge parse fail": _f(j.get("parse_failures"), ".0f"),
                "swap-flip %": _f(j["swap_flip_rate"] * 100 if j.get("swap_flip_rate") is not None else None, ".1f"),
            }
        )
    parts.append(_html_table(rows))
    return "\n".join(parts)


def control_rows(run: RunData) -> list[dict[str, str]]:
    """Per round with a control student: its rule, new instructions, both relative scores, the difference, its CI."""
    rows = []
    for r in run.rounds:
        ctl = _control(r)
        if not ctl:
            continue
        sel, c = ctl.get("selection") or {}, ctl.get("comparison") or {}
        rows.append({"round": str(r.no), "rule": str(sel.get("rule", "-")),
                     "new (loop's)": f"{sel.get('new', '-')} ({sel.get('wanted', '-')})",
                     "branched from": str(sel.get("branched_from", "-")), "loop %": _f(c.get("loop")),
                     "control %": _f(c.get("control")), "loop - control": _f(c.get("difference"), "+.2f"),
                     "95% CI": ci_text(c), "questions": str(c.get("n", "-")),
                     "control bench %": _f(_pct_or_none((ctl.get("benchmarks") or {}).get("mean")))})
    return rows


def _pct_or_none(x: Any) -> float | None:
    return None if x is None else 100 * float(x)


def _control_table_html(run: RunData) -> str:
    return _html_table(control_rows(run))


def _benchmarks_table_html(run: RunData) -> str:
    rows = []
    for r in run.rounds:
        for who, b in (("loop", _bench(r)), ("control", _bench(r, True))):
            if not b:
                continue
            row = {"round": str(r.no), "student": who}
            for t, h in (b.get("tasks") or {}).items():
                row[t] = "-" if not h else f"{100 * h['value']:.2f} ({h['metric'].split(',')[0]})"
            for t in b.get("failed") or {}:
                row[t] = "FAILED"
            row["mean %"] = _f(_pct_or_none(b.get("mean")))
            rows.append(row)
    cols = list(dict.fromkeys(k for row in rows for k in row))
    return _html_table([{c: row.get(c, "-") for c in cols} for row in rows])


def render_html(run: RunData, figures: list[tuple[str, str, bytes | None]], lineages: list[Lineage]) -> str:
    cfg = run.config or {}
    facts = {
        "student": _get(cfg, "student", "model"),
        "mode": _get(cfg, "student", "mode"),
        "teacher": _get(cfg, "llm", "teacher", "model"),
        "referee": _get(cfg, "llm", "referee", "model"),
        "generator": _get(cfg, "llm", "generator", "model"),
        "tau": _get(cfg, "discrimination", "tau"),
        "offline world": _get(cfg, "sim", "enabled"),
    }
    fact_html = " · ".join(f"{_esc(k)}: <b>{_esc(v)}</b>" for k, v in facts.items() if v is not None)
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>lion run report: {_esc(run.path.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>lion run report: {_esc(run.path)}</h1>",
        f"<p>{fact_html}</p>" if fact_html else "",
        "<h2>Per round</h2>",
        _html_table(round_rows(run)),
        f"<pre>{_esc(text_summary(run))}</pre>",
    ]
    section = None
    for sec, title, png in figures:
        if sec != section:
            out.append(f"<h2>{_esc(sec)}</h2>")
            if sec == "Evaluation":
                out.append(_eval_tables_html(run))
            elif sec == "Control student":
                out.append(_control_table_html(run))
            elif sec == "Benchmarks":
                out.append(_benchmarks_table_html(run))
            section = sec
        if png is None:
            out.append(f"<p class=muted>{_esc(title)}: no data yet</p>")
            continue
        b64 = base64.b64encode(png).decode("ascii")
        out.append(
            f"<figure><img alt='{_esc(title)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{_esc(title)}</figcaption></figure>"
        )
    out.append("<h2>Example lineages: hard seeds, what was generated from them, and the next round</h2>")
    out.append(_lineages_html(lineages))
    out.append("</body></html>")
    return "\n".join(out)


def build_report(run_dir: str | Path, out: str | Path | None = None, *, n_lineages: int = 3) -> tuple[Path, str]:
    """Write the HTML report (and report.txt beside it); return (html path, text summary)."""
    run = load_run(run_dir)
    figures = build_figures(run)
    html_text = render_html(run, figures, find_lineages(run, n_lineages))
    out_path = Path(out) if out else run.layout.report_html
    atomic_write_text(out_path, html_text)
    summary = text_summary(run)
    atomic_write_text(out_path.with_suffix(".txt"), summary + "\n")
    return out_path, summary


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.report", description="Build the HTML report of a lion run.")
    p.add_argument("run_dir", help="the run directory (run_dir in the config)")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN_DIR/report.html)")
    p.add_argument("--lineages", type=int, default=3, help="how many example lineages to show")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    path, summary = build_report(args.run_dir, args.out, n_lineages=args.lineages)
    print(summary)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
