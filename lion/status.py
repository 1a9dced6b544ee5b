"""Where a run stands: which phases of which rounds are done, what is in flight, and the spend so far.

    python -m lion.status RUN          # or: lion status RUN
    python -m lion.status RUN --json   # the same as one JSON object

Reads only (safe while the run is going): the phase markers, the round files written so far (a resumable file's
rows are counted against the pool it answers), the control student's steps and the benchmarks of each round, the
live usage ledger in RUN/calls.sqlite (opened read-only; every paid call is committed there as it completes; the
control's phases, control-*, also apart) with the snapshots the providers said served each role, the budget from
the run's config, and the last line of
RUN/lion.log with its age, which tells a run that is working from one that stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .errors import LionError
from .layout import CONTROL_STEPS, OPTIONAL_PHASES, PHASES, RoundPaths, RunLayout
from .records import query_read_only, read_json_or_empty, read_jsonl_tolerant


def _count_lines(path: Path) -> int:
    return len(read_jsonl_tolerant(path)) if path.exists() else 0


def _ids(path: Path) -> set[str]:
    return {str(r["id"]) for r in read_jsonl_tolerant(path)} if path.exists() else set()


def live_spend(layout: RunLayout) -> dict[str, Any] | None:
    """Totals of the usage ledger in calls.sqlite (read-only), or usage.json when the database is absent."""
    keys = ("calls", "cached", "failed", "tokens_in", "tokens_out", "usd")
    sums = "select sum(calls), sum(cached), sum(failed), sum(tokens_in), sum(tokens_out), sum(usd) from usage"
    found = query_read_only(layout.calls, (sums, ()), (sums + " where phase like ?", (CONTROL_PHASE + "%",)))
    if found is not None:
        (all_row,), (control_row,) = found
        out: dict[str, Any] = {k: (v or 0) for k, v in zip(keys, all_row)}
        out["control"] = {k: (v or 0) for k, v in zip(keys, control_row)}
        return out
    usage = read_json_or_empty(layout.usage)
    total = usage.get("total")
    if not total:
        return None
    out = dict(total)
    rows = [r for r in usage.get("by", []) if str(r.get("phase", "")).startswith(CONTROL_PHASE)]
    out["control"] = {k: sum(r.get(k, 0) for r in rows) for k in keys}
    return out


CONTROL_PHASE = "control-"  # the ledger phases of the control student (lion.control): control-imitation, ...


def control_status(rp: RoundPaths) -> dict[str, Any] | None:
    """The control student's steps of round rp.no (lion.control): done, and what is in flight; None: no control."""
    cp = rp.control
    if not cp.dir.exists():
        return None
    done = [step for step in CONTROL_STEPS if cp.done(step).exists()]
    if cp.eval_summary.exists():
        done.append("eval")
    if cp.comparison.exists():
        done.append("comparison")
    notes = []
    if "selection" in done and "imitation" not in done:
        train = _ids(cp.train_pool)
        notes.append(f"control imitation: teacher answers {_teacher_done(layout_of(rp), train)}/{len(train)}")
        if cp.student_ckpt.exists() or cp.student.with_name(cp.student.name + ".tmp").exists():
            notes.append("control imitation: student training started (interrupted if no process runs)")
    elif "imitation" in done and "eval" not in done and cp.eval.dir.exists():
        n_q = _count_lines(cp.eval.questions)
        notes.append(f"control evaluation: candidate answers {_count_lines(cp.eval.candidate_answers)}/{n_q or '?'}")
    bench = read_json_or_empty(cp.eval.benchmarks)
    return {"done": done, "in_flight": notes, "new": read_json_or_empty(cp.phase_metrics("selection")).get("new"),
            "benchmarks_failed": sorted(bench.get("failed", {}))}


def layout_of(rp: RoundPaths) -> RunLayout:
    return RunLayout(rp.root)


def _teacher_done(layout: RunLayout, ids: set[str]) -> int:
    """How many of `ids` have an answer in the answer store (any teacher identity)."""
    return len(ids & _ids(layout.teacher_answers)) if ids else 0


def round_status(layout: RunLayout, rp: RoundPaths, *, final: bool = False) -> dict[str, Any]:
    """Round rp.no: each phase done (with its time) or, for the first unfinished one, what it has produced so far.
    `final`: the final imitation's round (after the last round: imitation, and evaluation, only)."""
    out: dict[str, Any] = {"round": rp.no, "done": {}, "in_flight": [], "final_imitation": final}
    for phase in (*PHASES, *OPTIONAL_PHASES):
        if rp.done(phase).exists():
            out["done"][phase] = read_json_or_empty(rp.done(phase)).get("finished_at", "")
    train, cache = _ids(rp.train_pool), _ids(rp.cache_pool)
    out["train_pool"], out["cache_pool"] = len(train), len(cache)
    notes = out["in_flight"]
    if "imitation" not in out["done"] and train:
        notes.append(f"imitation: teacher answers {_teacher_done(layout, train)}/{len(train)}")
        tmp = rp.student.with_name(rp.student.name + ".tmp")
        if tmp.exists():
            notes.append(f"imitation: student training started ({tmp} exists; interrupted if no process runs)")
    elif "imitation" in out["done"] and "discrimination" not in out["done"]:
        if rp.eval.dir.exists() and not rp.eval_summary.exists():
            n_q = _count_lines(rp.eval.questions)
            notes.append(f"evaluation: candidate answers {_count_lines(rp.eval.candidate_answers)}/{n_q or '?'}")
        if cache and not final:
            notes.append(f"discrimination: teacher answers {_teacher_done(layout, cache)}/{len(cache)}, "
                         f"student answers {len(_ids(rp.student_answers) & cache)}/{len(cache)}, "
                         "referee verdicts written when the phase ends")
    elif "discrimination" in out["done"] and "generation" not in out["done"]:
        notes.append("generation: new instructions written when the phase ends")
    bench = read_json_or_empty(rp.eval.benchmarks)
    if bench:
        out["benchmarks"] = {"finished": bench.get("n_finished", 0), "tasks": bench.get("n_tasks", 0),
                             "failed": sorted(bench.get("failed", {}))}
    out["control"] = control_status(rp)
    return out


def last_log_line(layout: RunLayout) -> tuple[str, float] | None:
    """The last line of RUN/lion.log and its age in seconds."""
    if not layout.log.exists():
        return None
    with layout.log.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 4096))
        lines = [x for x in f.read().decode("utf-8", "replace").splitlines() if x.strip()]
    if not lines:
        return None
    return lines[-1], time.time() - layout.log.stat().st_mtime


def run_status(run_dir: str | Path) -> dict[str, Any]:
    layout = RunLayout(run_dir)
    if not layout.root.is_dir():
        raise LionError(f"{layout.root}: run directory not found")
    if not layout.state.exists():
        raise LionError(f"{layout.state}: missing; {layout.root} is not a lion run directory (or has not started)")
    state = read_json_or_empty(layout.state)
    cfg: dict[str, Any] = {}
    if layout.config.exists():
        cfg = yaml.safe_load(layout.config.read_text(encoding="utf-8")) or {}
    llm = cfg.get("llm", {})
    out: dict[str, Any] = {
        "run_dir": str(layout.root),
        "rounds_completed": state.get("rounds_completed", 0),
        "rounds": cfg.get("rounds"),
        "final_imitation": cfg.get("final_imitation"),
        "student": cfg.get("student", {}).get("model"),
        "teacher": llm.get("teacher", {}).get("model"),
        "round_status": [round_status(layout, rp, final=_is_final(rp.no, cfg)) for rp in layout.rounds()],
        "spend": live_spend(layout),
        "budget_usd": llm.get("budget_usd"),
        "budget_tokens": llm.get("budget_tokens"),
    }
    from .snapshots import per_role, read_snapshots

    out["snapshots"] = per_role(read_snapshots(layout.calls_file(llm.get("cache_path"))))
    out["finished"] = finished(out)
    last = last_log_line(layout)
    out["last_log"] = {"line": last[0], "age_s": round(last[1], 1)} if last else None
    return out


def _is_final(r: int, cfg: dict[str, Any]) -> bool:
    rounds = cfg.get("rounds")
    return bool(cfg.get("final_imitation")) and isinstance(rounds, int) and r == rounds + 1


def finished(s: dict[str, Any]) -> bool:
    """All configured rounds done, and the final imitation too when the config asks for it."""
    if s["rounds"] is None or s["rounds_completed"] < s["rounds"]:
        return False
    if not s.get("final_imitation"):
        return True
    return any(rs["final_imitation"] and "imitation" in rs["done"] for rs in s["round_status"])


def _track_lines(rs: dict[str, Any]) -> list[str]:
    """A round's benchmarks and control student, as status lines."""
    lines = []
    b = rs.get("benchmarks")
    if b:
        lines.append(f"      benchmarks: {b['finished']}/{b['tasks']} tasks done"
                     + (f", failed: {', '.join(b['failed'])}" if b["failed"] else ""))
    c = rs.get("control")
    if c:
        steps = [f"{p} done" if p in c["done"] else f"{p} -" for p in ("selection", "imitation", "eval", "comparison")]
        lines.append(f"      control: {', '.join(steps)}" + (f"   ({c['new']} new instructions)" if c["new"] else "")
                     + (f"; benchmarks failed: {', '.join(c['benchmarks_failed'])}" if c["benchmarks_failed"] else ""))
        lines += [f"      in flight: {note}" for note in c["in_flight"]]
    return lines


def _ago(seconds: float) -> str:
    from .logs import fmt_duration

    return fmt_duration(seconds) + " ago"


def format_status(s: dict[str, Any]) -> str:
    lines = [f"{s['run_dir']}: {s['rounds_completed']} of {s['rounds'] if s['rounds'] is not None else '?'} rounds "
             f"completed" + (" (+ final imitation)" if s.get("final_imitation") else "")
             + f"; student {s['student']}, teacher {s['teacher']}"]
    if finished(s):
        lines[0] += "; finished"
    for rs in s["round_status"]:
        if rs["final_imitation"]:
            lines.append(f"  round {rs['round']:>2}: final imitation {'done' if 'imitation' in rs['done'] else '-'}"
                         f"   (train pool {rs['train_pool']})")
            lines += [f"      in flight: {note}" for note in rs["in_flight"]]
            lines += _track_lines(rs)
            continue
        phases = [f"{p} done" if p in rs["done"] else f"{p} -" for p in PHASES]
        phases += [f"{p} done" for p in OPTIONAL_PHASES if p in rs["done"]]
        lines.append(f"  round {rs['round']:>2}: " + ", ".join(phases)
                     + f"   (train pool {rs['train_pool']}, cache pool {rs['cache_pool']})")
        for note in rs["in_flight"]:
            lines.append(f"      in flight: {note}")
        lines += _track_lines(rs)
    if not s["round_status"]:
        lines.append("  no round started yet")
    sp = s["spend"]
    if sp:
        budget = f" of a ${s['budget_usd']:g} budget ({100 * sp['usd'] / s['budget_usd']:.1f}%)" \
            if s.get("budget_usd") else ""
        lines.append(f"  spend: ${sp['usd']:.4f}{budget}; {sp['calls']} paid calls, {sp['cached']} replayed from "
                     f"cache, {sp['failed']} failed; {sp['tokens_in']} tokens in, {sp['tokens_out']} out")
        ctl = sp.get("control") or {}
        if ctl.get("calls") or ctl.get("cached"):
            lines.append(f"    of which the control student (phases control-*): ${ctl['usd']:.4f}; {ctl['calls']} paid "
                         f"calls, {ctl['cached']} replayed; {ctl['tokens_in']} tokens in, {ctl['tokens_out']} out")
    else:
        lines.append("  spend: no LLM call yet")
    if s.get("snapshots"):
        from .snapshots import format_roles

        lines.append("  served snapshots (paid calls):")
        lines += format_roles(s["snapshots"], indent="    ")
    if s["last_log"]:
        lines.append(f"  last log line ({_ago(s['last_log']['age_s'])}): {s['last_log']['line']}")
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.status", description="Show where a run stands.")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    s = run_status(args.run_dir)
    print(json.dumps(s, indent=1) if args.json else format_status(s))
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
