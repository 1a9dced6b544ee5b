"""Batch mode vs online on one round of the smoke config's teacher, referee and generator calls, and a SIGKILL
while batches are pending.

    python bench/batch_cost.py                 # ~1-2 min on 2 cores
    python bench/batch_cost.py --json          # the JSON line only

The calls are the real ones of round 1 of configs/smoke.yaml, rendered with lion's own templates and functions:
the teacher answers the Train Pool (the 1000 seeds), the referee judges every Cache Pool instruction in both orders
(the teacher's answer against a stand-in student answer: the teacher's answer minus its last character), and the
generator is asked for n_hard + n_easy new instructions (one wave). They go through the real gateway to the sim
server running the smoke config's oracle, once with every role online (`--latency-ms` per answer, the config's
max_in_flight) and once with every role in batch mode (the sim's batches end `--batch-delay-s` after creation),
each into its own run directory, priced with the smoke config's (made-up) prices.

Figures, measured side by side in this one run:
- usd_ratio = batch USD / online USD (target <= 0.52: the providers' batch price is 50%), and the calls, tokens and
  USD of each mode; wall_online_s, wall_batch_s (batch time is dominated by the providers' turnaround, here the
  sim's delay; real batches take minutes to 24 h);
- kill test: a child process runs the batch-mode round in a third run directory (batches of `--kill-batch-items`)
  and is SIGKILLed as soon as its first batches are recorded there, while they are pending; the same round is then
  resumed: batches_created (on the server) vs batches_recorded (in the run directory), resubmitted (target 0:
  batches created for calls already in a recorded batch) and duplicate_paid_calls (target 0: calls answered more
  than once by the server), plus answered (all calls of the round) after the resume.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lion.answers import teacher_messages  # noqa: E402
from lion.config import LionConfig, load_config  # noqa: E402
from lion.context import sim_responder  # noqa: E402
from lion.layout import RunLayout  # noqa: E402
from lion.prompts import Template, load_template  # noqa: E402
from lion.records import load_instructions  # noqa: E402
from lion.referee import referee_messages  # noqa: E402
from lion.sim.server import SimServer  # noqa: E402
from lion.teachers.base import ChatRequest  # noqa: E402
from lion.teachers.gateway import Gateway  # noqa: E402

ROLES = ("teacher", "referee", "generator")


class _Templates:
    def __init__(self, cfg: LionConfig) -> None:
        self.cfg, self._t = cfg, {}

    def template(self, name: str) -> Template:
        if name not in self._t:
            self._t[name] = load_template(name, self.cfg.prompts_dir)
        return self._t[name]


def smoke_config(config: str, url: str, mode: str, run_dir: Path, poll_s: float, max_items: int = 0) -> LionConfig:
    cfg = load_config(config, [f"run_dir={run_dir}"])
    for role in ("default", *ROLES):
        rc = getattr(cfg.llm, role)
        rc.base_url, rc.cache_namespace = url, "sim"
        if role in ROLES:
            rc.mode, rc.batch_poll_s, rc.batch_max_items = mode, poll_s, max_items
    return cfg


def one_round(cfg: LionConfig, gw: Gateway) -> dict[str, int]:
    """Round 1's teacher, referee and generator calls, phase after phase, as the loop makes them."""
    tpl = _Templates(cfg)
    pool, _ = load_instructions(cfg.pools.train_seed, cfg.pools.limit)
    res = gw.chat_many("teacher", "imitation", [ChatRequest(teacher_messages(tpl, i)) for i in pool])  # type: ignore[arg-type]
    answers = [r.text or "?" for r in res]
    ref = tpl.template("referee")
    pairs = [(i.instruction, a, a[:-1] or "?") for i, a in zip(pool, answers, strict=True)]
    judged = gw.chat_many("referee", "discrimination",
                          [ChatRequest(referee_messages(ref, q, x, y)) for q, a, b in pairs for x, y in ((a, b), (b, a))])
    gc = cfg.generation
    kinds = ["hard"] * gc.n_hard + ["easy"] * gc.n_easy
    gen = gw.chat_many("generator", "generation", [
        ChatRequest([{"role": "user", "content": tpl.template(f"generate_{k}").render(instruction=pool[n % len(pool)]
                                                                                     .instruction)}])
        for n, k in enumerate(kinds)])
    return {"teacher": len(res), "referee": len(judged), "generator": len(gen),
            "failed": sum(1 for r in [*res, *judged, *gen] if not r.ok)}


def server_for(cfg: LionConfig, latency_ms: float, delay_s: float) -> SimServer:
    return SimServer(sim_responder(cfg), latency_ms=latency_ms, batch_delay_s=delay_s)


def run_mode(config: str, mode: str, run_dir: Path, latency_ms: float, delay_s: float, poll_s: float) -> dict[str, Any]:
    probe = load_config(config)
    server = server_for(probe, latency_ms, delay_s)
    url = server.start()
    try:
        cfg = smoke_config(config, url, mode, run_dir, poll_s)
        t0 = time.monotonic()
        with Gateway(cfg.llm, run_dir, progress=False) as gw:
            counts = one_round(cfg, gw)
            total = gw.usage_summary()["total"]
        wall = time.monotonic() - t0
    finally:
        server.stop()
    return {"mode": mode, "wall_s": round(wall, 2), "calls": total["calls"], "tokens_in": total["tokens_in"],
            "tokens_out": total["tokens_out"], "usd": total["usd"], "failed": counts["failed"],
            "batches": len(server.batches.created)}


def kill_test(config: str, run_dir: Path, delay_s: float, poll_s: float, batch_items: int) -> dict[str, Any]:
    probe = load_config(config)
    server = server_for(probe, 0.0, delay_s)
    url = server.start()
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, __file__, "--child", url, str(run_dir), "--config", config,
                                  "--poll-s", str(poll_s), "--kill-batch-items", str(batch_items)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 300
        recorded: list[str] = []
        while not recorded:
            if child.poll() is not None:
                raise SystemExit(f"the child ended before submitting a batch: {child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                child.kill()
                raise SystemExit("the child submitted no batch in 300 s")
            if RunLayout(run_dir).calls.exists():
                try:
                    with sqlite3.connect(RunLayout(run_dir).calls) as db:
                        recorded = [r[0] for r in db.execute("select id from batches")]
                except sqlite3.OperationalError:
                    pass
            time.sleep(0.02)
        time.sleep(0.2)  # let the child submit the rest of the phase's batches, all still pending
        child.kill()
        child.communicate(timeout=60)
        with sqlite3.connect(RunLayout(run_dir).calls) as db:
            recorded = [r[0] for r in db.execute("select id from batches")]
        created_before = list(server.batches.created)
        answered_before = sum(server.completed_by_hash().values())
        cfg = smoke_config(config, url, "batch", run_dir, poll_s, batch_items)
        with Gateway(cfg.llm, run_dir, progress=False) as gw:
            counts = one_round(cfg, gw)
            ledger = gw.usage_summary()["total"]
            batches = gw.store.batches()
    finally:
        server.stop()
    created = server.batches.created
    answered = server.completed_by_hash()
    resubmitted = _resubmitted(server, created)
    return {"killed_with_batches_recorded": len(recorded), "created_before_kill": len(created_before),
            "answered_before_kill": answered_before, "batches_created": len(created),
            "batches_recorded": len(batches), "resubmitted": resubmitted,
            "duplicate_paid_calls": sum(n - 1 for n in answered.values() if n > 1),
            "answered": sum(counts[r] for r in ROLES) - counts["failed"], "calls": sum(counts[r] for r in ROLES),
            "ledger_calls": ledger["calls"]}


def _resubmitted(server: SimServer, created: Sequence[str]) -> int:
    """Batches whose every call already went out in an earlier batch (no batch fails or expires items in this
    bench, so each such batch is a needless resubmission)."""
    seen: set[str] = set()
    n = 0
    for bid in created:
        ids = {cid for cid, _ in server.batches.batches[bid].items}
        if ids and ids <= seen:
            n += 1
        seen |= ids
    return n


def child_main(args: argparse.Namespace) -> int:
    url, run_dir = args.child
    cfg = smoke_config(args.config, url, "batch", Path(run_dir), args.poll_s, args.kill_batch_items)
    with Gateway(cfg.llm, Path(run_dir), progress=False) as gw:
        one_round(cfg, gw)
    print("finished", flush=True)
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Batch mode vs online on one smoke round; SIGKILL while batches pend.")
    p.add_argument("--config", default=str(ROOT / "configs" / "smoke.yaml"))
    p.add_argument("--out", type=Path, default=Path("/tmp/lion_bench_batch_cost"), help="run directories go here")
    p.add_argument("--latency-ms", type=float, default=200.0, help="online: each answer takes this long")
    p.add_argument("--batch-delay-s", type=float, default=2.0, help="a batch ends this long after its creation")
    p.add_argument("--poll-s", type=float, default=0.5, help="batch_poll_s of the roles")
    p.add_argument("--kill-batch-items", type=int, default=250, help="batch_max_items in the kill test")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--child", nargs=2, metavar=("URL", "RUN_DIR"), help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.child:
        return child_main(args)
    import shutil

    shutil.rmtree(args.out, ignore_errors=True)
    online = run_mode(args.config, "online", args.out / "online", args.latency_ms, args.batch_delay_s, args.poll_s)
    batch = run_mode(args.config, "batch", args.out / "batch", args.latency_ms, args.batch_delay_s, args.poll_s)
    kill = kill_test(args.config, args.out / "kill", max(args.batch_delay_s, 4.0), args.poll_s, args.kill_batch_items)
    out = {"bench": "batch_cost", "calls": online["calls"], "usd_online": online["usd"], "usd_batch": batch["usd"],
           "usd_ratio": round(batch["usd"] / online["usd"], 4) if online["usd"] else None,
           "wall_online_s": online["wall_s"], "wall_batch_s": batch["wall_s"], "batches": batch["batches"],
           "same_tokens": (online["tokens_in"], online["tokens_out"]) == (batch["tokens_in"], batch["tokens_out"]),
           "failed": online["failed"] + batch["failed"], "kill": kill,
           "settings": {"latency_ms": args.latency_ms, "batch_delay_s": args.batch_delay_s, "poll_s": args.poll_s}}
    if not args.json:
        for m in (online, batch):
            print(f"{m['mode']:>6}: {m['calls']} calls, {m['tokens_in']} tokens in, {m['tokens_out']} out, "
                  f"${m['usd']:.4f}, {m['wall_s']:.1f} s, {m['batches']} batches, {m['failed']} failed")
        print(f"batch / online USD: {out['usd_ratio']} (target <= 0.52)")
        print(f"kill test: killed with {kill['killed_with_batches_recorded']} batches recorded (pending); after the "
              f"resume {kill['batches_created']} batches created on the server, {kill['batches_recorded']} recorded, "
              f"{kill['resubmitted']} resubmitted (target 0), {kill['duplicate_paid_calls']} duplicate paid calls "
              f"(target 0), {kill['answered']}/{kill['calls']} answered")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
