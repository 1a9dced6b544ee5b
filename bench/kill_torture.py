"""Kill torture: a short offline run SIGKILLed at N moments (inside every phase) and resumed each time, compared
with the same run uninterrupted.

    python bench/kill_torture.py [--kills 20] [--workdir runs/bench_kill_torture] [--seeds 40] [--max-steps 80]
    python bench/kill_torture.py --mode batch      # every role through the sim's batch API (llm.<role>.mode)
    python bench/kill_torture.py --control plain   # with a control student (eval.control): kills in its steps too

Two rounds (+ the final imitation, + an evaluation per round) with a tiny student, against the oracle world served
by `python -m lion.sim.server` processes started apart (one per run), so each server outlives the kills and counts
every completed call in its log. First the reference run, uninterrupted (its activity windows are timed:
teacher answers, training, the student's answers, judging, generation, evaluation answers and judging); meanwhile
a second `lion.run` on the same directory is started and must leave at once naming the holder (one writer). Then
the same run with the same seed, started again and again: each start is SIGKILLed at a random moment inside a
planned activity window (a random fraction of the window's reference length after it is seen starting), until
the run finishes on its own.

With `--control plain|self_instruct` the run has a control student (eval.control) from round 2, and its steps are
activity windows of their own (control-selection: its new instructions, control-teacher, control-training,
control-eval-inference, control-eval-judging); its files are compared like the round's own.

Figures (the last line is one JSON object):
- `differing_artifacts`: artifacts that differ from the uninterrupted run: pools, teacher answers, student
  answers, judgements, splits, generated and rejected instructions, phase metrics (timings left out),
  evaluation files, the students' weights (bitwise) and the call cache's keys; target 0;
- `duplicate_completed_calls`: calls the killed run's server completed more often than the reference's did
  (per request hash); `lost_in_flight`: calls completed by the server but not yet in the dead client's cache at
  a kill (measured after each kill); only those can be paid twice (a call in flight when the process dies is
  paid and lost, with any provider): `duplicates_beyond_in_flight` = max(0, duplicates - lost), target 0;
- `--mode batch`: every role's calls go out as batches (lion.teachers.batch), each batch id committed to the run
  directory before anyone waits on it; a killed run polls the same batches again on resume, so nothing that was
  answered is lost and `duplicate_completed_calls` itself is the figure to hold at 0 (`lost_in_flight` then
  counts items answered by the server but not yet collected at a kill: they are collected after the resume);
- `kills` (and per activity), `wall_s` of both runs and the `overhead` ratio of the kills;
- `second_writer_exit_s` / `second_writer_status`: the one-writer check.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lion.layout import RoundPaths, RunLayout  # noqa: E402

ORACLE = {"seed": 0, "referee_noise": 0.5, "position_bias": 0.5}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "LION_SIM_KEY": "unused", "PYTHONUNBUFFERED": "1"}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/kill_torture.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to deliver (at least)")
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench_kill_torture")
    p.add_argument("--seeds", type=int, default=40, help="seed instructions (data/smoke_seed.jsonl)")
    p.add_argument("--max-steps", type=int, default=80, help="training steps per imitation")
    p.add_argument("--latency-ms", type=float, default=40.0, help="the servers' latency per call")
    p.add_argument("--mode", choices=("online", "batch"), default="online",
                   help="llm.<role>.mode for every role: online calls, or the sim's batch API (see above)")
    p.add_argument("--batch-delay-s", type=float, default=0.3, help="--mode batch: seconds until a batch ends")
    p.add_argument("--control", choices=("none", "plain", "self_instruct"), default="none",
                   help="eval.control: a control student beside the loop's from round 2 (its training, evaluation "
                        "and, for self_instruct, generation are killed too, and its files compared)")
    p.add_argument("--rng", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--quiet", action="store_true")
    return p


def say(args: argparse.Namespace, *msg: Any) -> None:
    if not args.quiet:
        print(*msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- the run


def bench_config(run_dir: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "rounds": 2,
        "final_imitation": True,
        "llm": {
            "default": {"provider": "openai", "model": "oracle", "api_key_env": "LION_SIM_KEY", "temperature": 0.0,
                        "max_tokens": 64, "rpm": 100000, "tpm": 100000000, "max_in_flight": 4, "max_attempts": 3,
                        "backoff_initial_s": 0.05, "backoff_max_s": 0.5, "timeout_s": 30,
                        "mode": args.mode, "batch_poll_s": 0.1},
            "prices": {"oracle": {"input": 0.5, "output": 1.5}},
        },
        "sim": {"enabled": True, "responder": "oracle", "options": ORACLE, "url": url},
        "student": {
            "model": "tiny", "tiny": {"vocab": "char", "hidden": 32, "layers": 2, "heads": 2,
                                      "max_position_embeddings": 256},
            "mode": "full", "prompt_format": "plain", "max_length": 160, "max_steps": args.max_steps, "lr": 1e-3,
            "warmup_ratio": 0.05, "per_device_batch_size": 16, "grad_accum": 1, "logging_steps": 10,
            "save_steps": 10, "cpu_threads": 1,
            "infer": {"backend": "transformers", "batch_size": 4, "max_new_tokens": 12, "cpu_threads": 1},
        },
        "pools": {"train_seed": str(ROOT / "data" / "smoke_seed.jsonl"), "limit": args.seeds,
                  "train_pool": "accumulate"},
        "generation": {"n_hard": 12, "n_easy": 8, "batch_size": 8, "rouge_threshold": 0.9},
        "eval": {"every_round": True, "questions": "oracle", "oracle_per_family": 2, "control": args.control},
    }


class Server:
    """`python -m lion.sim.server` in a process of its own, logging every request."""

    def __init__(self, log: Path, latency_ms: float, batch_delay_s: float = 0.0) -> None:
        self.log = log
        log.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lion.sim.server", "--responder", "oracle", "--options", json.dumps(ORACLE),
             "--port", "0", "--latency-ms", str(latency_ms), "--log", str(log),
             "--batch-delay-s", str(batch_delay_s)],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            raise RuntimeError(f"sim server did not start: {line}{self.proc.stderr.read() if self.proc.stderr else ''}")
        self.url = line.split()[1]

    def completed(self) -> collections.Counter[str]:
        """Completed calls per request hash (the server's own log)."""
        out: collections.Counter[str] = collections.Counter()
        if self.log.exists():
            for line in self.log.read_text().splitlines():
                if line.strip():
                    e = json.loads(line)
                    if e.get("kind") == "ok":
                        out[e["hash"]] += 1
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_run(cfg_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lion.run", "--config", str(cfg_path), "--no-progress"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


# --------------------------------------------------------------------------------------------- where is it


def _rows(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def _fresh(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def probe(run: RunLayout, since: float, server_log: Path) -> tuple[int, str] | None:
    """What the run is doing now, from evidence written after `since` (None: nothing seen yet)."""
    rounds = run.rounds()
    if not rounds:
        return None
    rp: RoundPaths = rounds[-1]
    r = rp.no
    if not rp.done("imitation").exists():
        if _fresh(rp.dir / "student.tmp", since) or _fresh(rp.student_ckpt, since):
            return r, "training"
        if _fresh(run.teacher_answers, since):
            return r, "teacher"
        return None
    if not rp.eval_summary.exists():
        ev = rp.eval
        if not ev.questions.exists() or _rows(ev.candidate_answers) < _rows(ev.questions):
            if _fresh(ev.questions, since) or _fresh(ev.candidate_answers, since):
                return r, "eval-inference"
            return None
        if _fresh(server_log, since):
            return r, "eval-judging"
        return None
    cp = rp.control
    if cp.dir.exists() and not rp.done("discrimination").exists() and not cp.comparison.exists():
        if not cp.done("selection").exists():
            return (r, "control-selection") if _fresh(server_log, since) else None
        if not cp.done("imitation").exists():
            if _fresh(cp.dir / "student.tmp", since) or _fresh(cp.student_ckpt, since):
                return r, "control-training"
            return (r, "control-teacher") if _fresh(run.teacher_answers, since) else None
        ev = cp.eval
        if not ev.questions.exists() or _rows(ev.candidate_answers) < _rows(ev.questions):
            if _fresh(ev.questions, since) or _fresh(ev.candidate_answers, since):
                return r, "control-eval-inference"
            return None
        return (r, "control-eval-judging") if _fresh(server_log, since) else None
    if not rp.done("discrimination").exists():
        if _fresh(rp.student_answers, since) and _rows(rp.student_answers) < _rows(rp.cache_pool):
            return r, "inference"
        if rp.student_answers.exists() and _fresh(server_log, since):
            return r, "judging"
        if _fresh(server_log, since):
            return r, "teacher"
        return None
    if not rp.done("generation").exists() and _fresh(server_log, since):
        return r, "generation"
    return None


# --------------------------------------------------------------------------------------------- the runs


def reference_run(cfg_path: Path, run: RunLayout, server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """The uninterrupted run: its wall time, its activity windows and their lengths, and the one-writer check."""
    t0 = time.time()
    p = start_run(cfg_path)
    windows: list[tuple[int, str]] = []
    spans: dict[tuple[int, str], list[float]] = {}
    second: dict[str, Any] = {}
    while p.poll() is None:
        now = time.time()
        w = probe(run, t0, server.log)
        if w is not None:
            if not windows or windows[-1] != w:
                windows.append(w)
                spans.setdefault(w, [now, now])
            spans[w][1] = now
        if not second and w is not None and w[1] == "training":  # a second writer on the same directory
            t = time.monotonic()
            q = subprocess.run([sys.executable, "-m", "lion.run", "--config", str(cfg_path), "--no-progress"],
                               env=ENV, capture_output=True, text=True, cwd=ROOT, timeout=120)
            second = {"exit_s": round(time.monotonic() - t, 3), "status": q.returncode,
                      "message": q.stderr.strip().splitlines()[-1] if q.stderr.strip() else ""}
        time.sleep(0.01)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"the reference run failed ({p.returncode}): {p.stderr.read() if p.stderr else ''}")
    order = list(dict.fromkeys(windows))
    return {"wall_s": wall, "windows": order, "length": {w: spans[w][1] - spans[w][0] for w in order},
            "second_writer": second}


def kill_plan(ref: dict[str, Any], n: int, rng: random.Random) -> list[tuple[int, float]]:
    """n kills over the reference's windows, in run order: every window at least once while they last, the rest
    to the longest windows; each at a random fraction of its window."""
    windows = ref["windows"]
    share = collections.Counter({i: 1 for i in range(min(n, len(windows)))})
    by_length = sorted(range(len(windows)), key=lambda i: -ref["length"][windows[i]])
    for k in range(n - sum(share.values())):
        share[by_length[k % len(by_length)]] += 1
    return [(i, rng.uniform(0.05, 0.95)) for i in sorted(share) for _ in range(share[i])]


def settle(server: Server, quiet_s: float = 1.0, at_most_s: float = 20.0) -> None:
    """Wait until the server has completed no call for `quiet_s` (the dead client's calls are all answered)."""
    deadline = time.monotonic() + at_most_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = sum(server.completed().values())
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.05)


def cached_calls(run: RunLayout) -> int:
    if not run.calls.exists():
        return 0
    with sqlite3.connect(run.calls) as db:
        return int(db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])


def killed_run(cfg_path: Path, run: RunLayout, server: Server, ref: dict[str, Any],
               args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.rng)
    plan = kill_plan(ref, args.kills, rng)
    windows: list[tuple[int, str]] = ref["windows"]
    index = {w: i for i, w in enumerate(windows)}
    kills: list[dict[str, Any]] = []
    skipped = 0
    starts = 0
    wall = 0.0
    refused = 0
    while True:
        t0 = time.time()
        p = start_run(cfg_path)
        starts += 1
        target = plan[0] if plan else None
        armed_at: float | None = None
        delay = rng.uniform(0.5, 4.0)  # a random moment, once the plan is spent
        where = None
        while p.poll() is None:
            w = probe(run, t0, server.log)
            where = w or where
            now = time.time()
            if target is not None:
                at = index.get(w) if w is not None else None
                if at is not None and at > target[0]:  # that window went by unseen: move the kill to a later one
                    plan.pop(0)
                    skipped += 1
                    later = range(at, len(windows))  # the same activity in a later round, else the longest
                    same = [j for j in later if windows[j][1] == windows[target[0]][1]]
                    if later:
                        j = same[0] if same else max(later, key=lambda i: ref["length"][windows[i]])
                        plan.append((j, target[1]))
                        plan.sort()
                    target = plan[0] if plan else None
                    armed_at = None
                    continue
                if at == target[0] and armed_at is None:
                    armed_at = now
                if armed_at is not None and now - armed_at >= target[1] * ref["length"][windows[target[0]]]:
                    break
            elif len(kills) < args.kills and now - t0 >= delay:
                break
            time.sleep(0.005)
        if p.poll() is None:  # kill it
            p.send_signal(signal.SIGKILL)
            p.wait()
            wall += time.time() - t0
            settle(server)  # the server finishes answering the calls of the dead client
            lost_so_far = sum(server.completed().values()) - cached_calls(run)  # answered, never cached
            lost = lost_so_far - sum(k["lost_in_flight"] for k in kills)
            kills.append({"at": f"round {where[0]} {where[1]}" if where else "starting", "after_s": round(now - t0, 2),
                          "lost_in_flight": lost})
            if target is not None:
                plan.pop(0)
            what = "calls in flight lost" if args.mode == "online" else "answered, collected after the resume"
            say(args, f"kill {len(kills)}: {kills[-1]['at']} after {kills[-1]['after_s']} s ({lost:+d} {what})")
            continue
        wall += time.time() - t0
        err = p.stderr.read() if p.stderr else ""
        if p.returncode == 2 and "in use by" in err and refused < 20:  # the previous process's lock, still held
            refused += 1
            time.sleep(0.5)
            continue
        if p.returncode != 0:
            raise RuntimeError(f"a resumed run failed ({p.returncode}): {err[-3000:]}")
        break
    return {"kills": kills, "starts": starts, "wall_s": wall, "skipped_windows": skipped, "lock_refusals": refused}


# --------------------------------------------------------------------------------------------- comparing


TIMING = {"seconds", "train_seconds", "tokens_per_s", "steady_tokens_per_s", "resumed_at", "finished_at"}


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING and k != "usage"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _jsonl(path: Path, by_id: bool = False) -> Any:
    if not path.exists():
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if by_id:  # appended as produced: the order depends on where the kills fell
        return sorted(json.dumps(r, sort_keys=True) for r in rows)
    return rows


def _json(path: Path, root: Path) -> Any:
    """A phase's figures without timings and usage; paths inside the run directory written relative to it."""
    if not path.exists():
        return None
    return _strip(json.loads(path.read_text().replace(json.dumps(str(root))[1:-1], "RUN")))


def _weights(student: Path) -> str | None:
    files = sorted(student.glob("*.safetensors"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def artifacts(run: RunLayout) -> dict[str, Any]:
    out: dict[str, Any] = {"teacher_answers": _jsonl(run.teacher_answers, by_id=True)}
    with sqlite3.connect(run.calls) as db:
        out["call_cache"] = sorted(k for (k,) in db.execute("SELECT key FROM calls"))
    for rp in run.rounds():
        n = rp.dir.name
        for name, path in [("train_pool", rp.train_pool), ("cache_pool", rp.cache_pool), ("judgements", rp.judgements),
                           ("split", rp.split), ("generated", rp.generated), ("rejected", rp.rejected),
                           ("eval_answers", rp.eval.answers), ("eval_judgements", rp.eval.judgements),
                           ("eval_table", rp.eval.table)]:
            out[f"{n}/{name}"] = _jsonl(path)
        out[f"{n}/student_answers"] = _jsonl(rp.student_answers, by_id=True)
        out[f"{n}/eval_candidate_answers"] = _jsonl(rp.eval.candidate_answers, by_id=True)
        for phase in ("imitation", "discrimination", "generation"):
            out[f"{n}/{phase}.json"] = _json(rp.phase_metrics(phase), run.root)
        out[f"{n}/eval.json"] = _json(rp.eval_summary, run.root)
        out[f"{n}/metrics.json"] = _json(rp.metrics, run.root)
        out[f"{n}/student_weights"] = _weights(rp.student)
        cp = rp.control  # eval.control (--control): the control student's files, like the round's own
        if cp.dir.exists():
            for name, path in [("new", cp.new), ("rejected", cp.rejected), ("train_pool", cp.train_pool),
                               ("cache_pool", cp.cache_pool), ("eval_answers", cp.eval.answers),
                               ("eval_judgements", cp.eval.judgements), ("eval_table", cp.eval.table)]:
                out[f"{n}/control/{name}"] = _jsonl(path)
            out[f"{n}/control/eval_candidate_answers"] = _jsonl(cp.eval.candidate_answers, by_id=True)
            for name, path in [("selection.json", cp.phase_metrics("selection")),
                               ("imitation.json", cp.phase_metrics("imitation")), ("eval.json", cp.eval_summary),
                               ("comparison.json", cp.comparison)]:
                out[f"{n}/control/{name}"] = _json(path, run.root)
            out[f"{n}/control/student_weights"] = _weights(cp.student)
    return out


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name in ("reference", "killed"):
        d = work / name
        if d.exists():
            import shutil

            shutil.rmtree(d)
        runs[name] = RunLayout(d)
    servers = {name: Server(work / f"{name}_server.jsonl", args.latency_ms, args.batch_delay_s) for name in runs}
    try:
        cfgs = {}
        for name, run in runs.items():
            cfgs[name] = work / f"{name}.yaml"
            cfgs[name].write_text(yaml.safe_dump(bench_config(run.root, servers[name].url, args)))
        say(args, "reference run (uninterrupted)...")
        ref = reference_run(cfgs["reference"], runs["reference"], servers["reference"], args)
        say(args, f"  {ref['wall_s']:.1f} s, windows: {', '.join(f'r{r} {a}' for r, a in ref['windows'])}")
        say(args, f"  second writer: status {ref['second_writer'].get('status')} after "
                  f"{ref['second_writer'].get('exit_s')} s: {ref['second_writer'].get('message')}")
        say(args, f"killed run ({args.kills} kills)...")
        killed = killed_run(cfgs["killed"], runs["killed"], servers["killed"], ref, args)
        a, b = artifacts(runs["reference"]), artifacts(runs["killed"])
        differing = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        ref_calls, killed_calls = servers["reference"].completed(), servers["killed"].completed()
    finally:
        for s in servers.values():
            s.stop()
    dup = sum(max(0, n - ref_calls.get(h, 0)) for h, n in killed_calls.items())
    lost = sum(k["lost_in_flight"] for k in killed["kills"])
    at = collections.Counter(k["at"].split(" ", 2)[-1] if k["at"] != "starting" else "starting"
                             for k in killed["kills"])
    out = {
        "bench": "kill_torture",
        "mode": args.mode,
        "kills": len(killed["kills"]),
        "kills_by_activity": dict(sorted(at.items())),
        "starts": killed["starts"],
        "skipped_windows": killed["skipped_windows"],
        "artifacts_compared": len(a),
        "differing_artifacts": len(differing),
        "differing": differing,
        "completed_calls_reference": sum(ref_calls.values()),
        "completed_calls_killed": sum(killed_calls.values()),
        "duplicate_completed_calls": dup,
        "lost_in_flight": lost,
        "duplicates_beyond_in_flight": max(0, dup - lost),
        "wall_s_reference": round(ref["wall_s"], 1),
        "wall_s_killed": round(killed["wall_s"], 1),
        "overhead": round(killed["wall_s"] / ref["wall_s"], 2),
        "second_writer_exit_s": ref["second_writer"].get("exit_s"),
        "second_writer_status": ref["second_writer"].get("status"),
        "lock_refusals": killed["lock_refusals"],
    }
    for k in killed["kills"]:
        say(args, f"  {k}")
    if differing:
        say(args, f"DIFFERING: {differing}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
