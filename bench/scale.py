"""Benchmark: the loop's non-model work at Cache Pool sizes 10K, 100K and 1M instructions: time and peak memory.

    python bench/scale.py [--sizes 10000,100000,1000000] [--steps pools,store,...] [--work DIR] [--keep]

Per size, in one working directory, each step runs in a fresh Python process of its own (so no step inherits
another's high-water mark), and reports its wall time and its peak RSS (`ru_maxrss`) next to the RSS it started
with after imports (`base`):

- seeds           (setup, not a loop step) N distinct instructions of the offline world (lion.sim.tasks) as JSONL
- pools           round 1's Train Pool and Cache Pool from the seed file (lion.pools.prepare_round, streamed)
- store           the teacher-answer store alone: N puts, reopen, N lookups in random order (lion.answers)
- teacher_cold    a phase's calls through the gateway against the sim server (a separate process, echo
                  responder: the fastest possible server), empty call cache: N HTTP calls, answers stored
                  (above --http-max: an in-process teacher instead, reported as teacher_cold_inproc)
- teacher_warm    the same N calls with the answer store removed and the call cache warm: N cache replays
- discrimination  the real phase 2 on the Cache Pool: teacher answers from the store, the student answering
                  through an in-process stand-in (the model's work is not measured), 2N referee calls
                  through the gateway to an in-process provider (gateway, cache writes and verdict parsing are
                  measured; HTTP is measured by teacher_cold), judgements and split appended chunk by chunk
- dedup           the generation filter's ROUGE-L index over the whole Cache Pool, then 1,000 novel queries;
                  the index's memory per instruction is (peak - base) / N
- generation      the real phase 3: 1,000 hard + 1,000 easy wanted, the generator an in-process provider, every
                  candidate checked against the whole pool

Growth exponents are log(t2/t1) / log(n2/n1) between consecutive sizes (1 = linear), for time and for the
memory the step adds (peak - base). The targets (issue 15): time no faster than linear except where a step
must be superlinear; peak RSS at 1M <= 3 GB; cache replay of 1M calls <= 5 minutes. The last line printed is one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STEPS = ("pools", "store", "teacher_cold", "teacher_warm", "discrimination", "dedup", "generation")
GEN_WANTED = 1000
DEDUP_QUERIES = 1000
WORDS = ("amber basil cedar delta ember fjord grove harbor island jasper kettle lantern meadow nectar orchid "
         "pebble quartz raven saffron timber umber velvet willow xenial yarrow zephyr anchor beacon canyon dune "
         "estuary falcon glacier heron inlet juniper kelp lagoon marsh nimbus oasis prairie quiver reef summit "
         "tundra upland valley wharf yonder zenith").split()
VERBS = ("Describe Explain Compare Summarize Outline Predict Evaluate Sketch Imagine List Contrast Argue Define "
         "Classify Estimate").split()


def _novel(rng: random.Random) -> str:
    """An instruction no pool of the offline world holds (word salad in a task shape)."""
    n = rng.randint(5, 12)
    return f"{rng.choice(VERBS)} the " + " ".join(rng.choice(WORDS) for _ in range(n)) + f" in {rng.randint(2, 9)} steps."


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16)


# --------------------------------------------------------------------------------------------- in-process models


class FastTeacher:
    """A teacher provider answering at once (the echo responder's reply, without HTTP): fills the call cache at
    sizes where N HTTP calls to the sim server would take hours on this machine (`--http-max`)."""

    def __init__(self, cfg: Any) -> None:
        self.identity = "bench:fast-teacher"

    async def chat(self, request: Any, params: Any) -> Any:
        from lion.teachers.base import ChatResponse

        text = "Echo: " + request.messages[-1][1][:200]
        return ChatResponse(text=text, finish_reason="stop", prompt_tokens=60, completion_tokens=40)


class FastReferee:
    """A referee provider answering at once (a verdict from a hash of the prompt: both hard and easy occur)."""

    def __init__(self, cfg: Any) -> None:
        self.identity = "bench:fast-referee"

    async def chat(self, request: Any, params: Any) -> Any:
        from lion.teachers.base import ChatResponse

        k = _h(request.messages[-1][1])
        text = f"Compared on accuracy and helpfulness.\n\nSCORES: A={1 + k % 10}, B={1 + (k // 10) % 10}"
        return ChatResponse(text=text, finish_reason="stop", prompt_tokens=300, completion_tokens=20)


class FastGenerator:
    """A generator provider answering at once: half tasks of the offline world (often near-duplicates of the
    pool), half novel instructions."""

    def __init__(self, cfg: Any) -> None:
        self.identity = "bench:fast-generator"

    async def chat(self, request: Any, params: Any) -> Any:
        from lion.sim.tasks import sample_task
        from lion.teachers.base import ChatResponse

        rng = random.Random(_h(str(request.messages)) + params.sample)
        task = sample_task(rng).instruction if rng.random() < 0.5 else _novel(rng)
        return ChatResponse(text=f"TASK: {task}", finish_reason="stop", prompt_tokens=200, completion_tokens=15)


class FastStudent:
    """The student's stand-in (lion.answers.StudentBackend): the right answer for two thirds of the items."""

    settings = {"backend": "bench/scale.py FastStudent"}

    def __init__(self, *args: Any) -> None:
        pass

    def generate(self, items: Any, on_answer: Any, on_skip: Any = None) -> None:
        from lion.sim.tasks import parse_task
        from lion.student.infer import Completion

        for k, it in enumerate(items):
            task = parse_task(it.instruction)
            on_answer(k, Completion(task.answer if task is not None and _h(it.id) % 3 else "I do not know."))

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------- child side


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _config(work: Path, url: str, n: int) -> Any:
    from lion.config import config_from_dict

    teacher = {"provider": "scale:FastTeacher"} if os.environ.get("LION_SCALE_INPROC_TEACHER") else {}
    return config_from_dict({
        "run_dir": str(work / "run"), "seed": 0, "rounds": 1,
        "llm": {"default": {"base_url": url, "model": "sim", "api_key_env": "LION_BENCH_KEY", "rpm": 1e9,
                            "tpm": 1e13, "max_in_flight": 64, "max_attempts": 3, "timeout_s": 120,
                            "max_tokens": 256, "cache_namespace": "bench"},
                "teacher": teacher, "referee": {"provider": "scale:FastReferee"},
                "generator": {"provider": "scale:FastGenerator"}},
        "student": {"model": "tiny"},
        "pools": {"train_seed": str(work / "seeds.jsonl")},
        "generation": {"n_hard": GEN_WANTED, "n_easy": GEN_WANTED, "batch_size": 512},
    })


def child(step: str, n: int, work: Path, url: str) -> dict[str, Any]:
    from lion.answers import AnswerStore, buy_teacher_answers
    from lion.context import RunContext
    from lion.layout import RunLayout
    from lion.records import count_rows, iter_pool

    base = _rss_mb()
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if step == "seeds":
        from lion.records import atomic_writer
        from lion.sim.tasks import sample_task

        rng, seen = random.Random(f"scale:{n}"), set()
        with atomic_writer(work / "seeds.jsonl") as f:
            while len(seen) < n:
                t = sample_task(rng)
                if len(seen) % 2:  # the world has ~1M distinct tasks; half the rows get a novel tail
                    t_text = f"{t.instruction} (case {rng.randrange(10**9)})"
                else:
                    t_text = t.instruction
                if t_text not in seen:
                    seen.add(t_text)
                    f.write(json.dumps({"instruction": t_text, "meta": t.meta}) + "\n")
    elif step == "pools":
        from lion.pools import prepare_round

        with RunContext(_config(work, url, n), progress=False) as ctx:
            prepare_round(ctx, 1)
            out["cache_pool"] = count_rows(ctx.run.round(1).cache_pool)
    elif step == "store":
        d = RunLayout(work / "store")
        shutil.rmtree(d.root, ignore_errors=True)
        store = AnswerStore(d.teacher_answers, d.answer_index())
        answer = "The answer, with the explanation a teacher would give, runs to a couple of sentences. " * 3
        for i in range(n):
            store.put(f"{i:016x}", "teacher|model|t=0.7", answer, "stop")
        store.close()
        t_put = time.perf_counter() - t0
        t1 = time.perf_counter()
        store = AnswerStore(d.teacher_answers, d.answer_index())
        t_open = time.perf_counter() - t1
        order = list(range(n))
        random.Random(1).shuffle(order)
        t2 = time.perf_counter()
        assert all(store.get(f"{i:016x}", "teacher|model|t=0.7") is not None for i in order)
        t_get = time.perf_counter() - t2
        store.close()
        out.update(put_s=round(t_put, 2), reopen_s=round(t_open, 3), get_s=round(t_get, 2),
                   index_bytes_per_answer=round(d.answer_index().stat().st_size / n, 1),
                   log_bytes_per_answer=round(d.teacher_answers.stat().st_size / n, 1))
    elif step in ("teacher_cold", "teacher_warm"):
        cfg = _config(work, url, n)
        run = RunLayout(cfg.run_dir)
        if step == "teacher_warm":  # the answers are gone, the call cache holds every call: a replay
            for p in (run.teacher_answers, run.answer_index(cfg.llm.cache_path)):
                p.unlink(missing_ok=True)
        with RunContext(cfg, progress=False) as ctx:
            pool = ctx.run.round(1).cache_pool
            counts = buy_teacher_answers(ctx, iter_pool(pool), "discrimination", total=count_rows(pool))
            usage = ctx.gateway.usage_summary()["total"]
        out.update(counts, calls=usage["calls"], cached=usage["cached"])
    elif step == "discrimination":
        import lion.answers
        from lion.discrimination import discrimination

        lion.answers.open_student = FastStudent  # the model's work is not what this measures
        cfg = _config(work, url, n)
        RunLayout(cfg.run_dir).round(1).student.mkdir(parents=True, exist_ok=True)
        with RunContext(cfg, progress=False) as ctx:
            out["metrics"] = {k: v for k, v in discrimination(ctx, 1).items() if k in ("n", "hard", "easy", "excluded")}
    elif step == "dedup":
        from lion.filters import CandidateFilter
        from lion.generation import KINDS, scan_pool

        cfg = _config(work, url, n)
        rp = RunLayout(cfg.run_dir).round(1)
        import array

        offsets = {k: array.array("q") for k in KINDS}
        filt = CandidateFilter(cfg.generation, scan_pool(rp.cache_pool, rp.split, offsets))
        t_build = time.perf_counter() - t0
        index_mb = _rss_mb() - base
        rng = random.Random(7)
        queries = [_novel(rng) for _ in range(DEDUP_QUERIES)]
        t1 = time.perf_counter()
        dups = sum(not filt.check(q).ok for q in queries)
        t_query = time.perf_counter() - t1
        out.update(build_s=round(t_build, 2), query_ms=round(1000 * t_query / DEDUP_QUERIES, 3), duplicates=dups,
                   index_bytes_per_instruction=round(index_mb * 2**20 / n, 1))
    elif step == "generation":
        from lion.generation import generation

        with RunContext(_config(work, url, n), progress=False) as ctx:
            m = generation(ctx, 1)
        out.update(accepted=m["accepted"], requests=m["requests"], rejected=m["rejected"])
    else:
        raise SystemExit(f"unknown step {step}")
    out.update(step=step, n=n, seconds=round(time.perf_counter() - t0, 3), base_mb=round(base, 1),
               peak_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return out


# --------------------------------------------------------------------------------------------- parent side


def _run_child(step: str, n: int, work: Path, url: str, inproc_teacher: bool = False) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), LION_BENCH_KEY="sk-bench")
    if inproc_teacher:
        env["LION_SCALE_INPROC_TEACHER"] = "1"
    p = subprocess.run([sys.executable, __file__, "--child", step, "--n", str(n), "--work", str(work), "--url", url],
                       env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"step {step} at {n} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _start_server(work: Path) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "lion.sim.server", "--responder", "echo", "--port", "0"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if "serving" not in line:
        raise SystemExit(f"the sim server did not start: {line}")
    return p, line.split()[1]


def _exponent(a: float, b: float, na: int, nb: int) -> float | None:
    return round(math.log(b / a) / math.log(nb / na), 2) if a > 0 and b > 0 else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/scale.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/lion-bench-scale"))
    ap.add_argument("--keep", action="store_true", help="keep the working directories")
    ap.add_argument("--http-max", type=int, default=100_000,
                    help="above this size teacher_cold fills the call cache through an in-process teacher (the "
                         "gateway, cache and store measured, not HTTP: 1M HTTP calls to the sim server take ~2 h "
                         "on 2 cores); its time is then reported as teacher_cold_inproc")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.n, args.work, args.url)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    steps = [s for s in args.steps.split(",") if s]
    results: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in ["seeds", *steps]}
    for n in sizes:
        work = args.work / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        server, url = _start_server(work)
        try:
            for step in ["seeds", *steps]:
                inproc = n > args.http_max
                r = _run_child(step, n, work, url, inproc)
                if inproc and step == "teacher_cold":
                    r["step"] = step = "teacher_cold_inproc"
                results.setdefault(step, {})[n] = r
                extra = {k: v for k, v in r.items() if k not in ("step", "n", "seconds", "base_mb", "peak_mb")}
                print(f"n={n:>8} {step:15s} {r['seconds']:9.2f} s  peak {r['peak_mb']:7.1f} MB  "
                      f"(base {r['base_mb']:.0f} MB)  {json.dumps(extra)}", flush=True)
        finally:
            server.terminate()
            server.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    exponents: dict[str, dict[str, list[float | None]]] = {}
    for step, by_n in results.items():
        ns = [n for n in sizes if n in by_n]
        pairs = list(zip(ns, ns[1:]))
        exponents[step] = {
            "time": [_exponent(by_n[a]["seconds"], by_n[b]["seconds"], a, b) for a, b in pairs],
            "memory": [_exponent(by_n[a]["peak_mb"] - by_n[a]["base_mb"], by_n[b]["peak_mb"] - by_n[b]["base_mb"], a, b)
                       for a, b in pairs],
        }
        if pairs:
            print(f"{step:15s} growth exponents {' / '.join(f'{a}->{b}' for a, b in pairs)}: "
                  f"time {exponents[step]['time']}, memory {exponents[step]['memory']}")
    top = max(sizes)
    peak_top = max((r[top]["peak_mb"] for r in results.values() if top in r), default=None)
    warm = results.get("teacher_warm", {}).get(top)
    summary = {
        "sizes": sizes,
        "steps": {s: {str(n): r for n, r in by_n.items()} for s, by_n in results.items()},
        "exponents": exponents,
        "peak_rss_mb_at_largest": peak_top,
        "cache_replay_s_at_largest": warm["seconds"] if warm else None,
        "targets": {
            "peak_rss_le_3gb": None if peak_top is None else peak_top <= 3072,
            "replay_1m_le_300s": None if not warm or top < 1_000_000 else warm["seconds"] * 1_000_000 / top <= 300,
        },
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
