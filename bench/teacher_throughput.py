"""Teacher-gateway throughput against the local server's rate limits, next to a naive one-at-a-time client.

    python bench/teacher_throughput.py                      # 2000 requests, 600 RPM: ~4 min
    python bench/teacher_throughput.py --requests 400 --rpm 3000 --json   # quick: ~20 s

Setup: lion.sim.server on 127.0.0.1 with `--latency-ms` (200) per answer and server-side limits: `--rpm`
(600) and `--tpm` (default rpm x 200). The workload alternates blocks of `--block` (100) requests: three
blocks of short prompts (~17 prompt tokens + max_tokens 64: the RPM limit binds), then one block of long
prompts (~310 + 64 tokens: the TPM limit binds). The gateway is configured with the same limits.

Figures, all measured from the server's own request log in this one run:
- rpm_ratio, tpm_ratio: achieved requests/min and tokens/min over the whole run, divided by the limits;
- rpm_ratio_rpm_bound_blocks / tpm_ratio_tpm_bound_blocks: the same inside the blocks where that limit binds
  (window of a block = its first arrival to the next block's first arrival; the first block, which starts on
  full buckets, is left out); binding_utilisation: the larger of the two ratios per block, time-weighted over
  all blocks: 1.0 = the binding limit was saturated all the way (slightly above 1 is possible: a block
  starts with whatever burst the buckets saved up during the previous block);
- ideal_over_actual: the shortest possible time for the whole sequence under the server's buckets (exact
  schedule with their 2 s bursts, zero client overhead, + one latency) divided by the measured time; the
  gateway's own buckets hold 1 s, so on short runs this is visibly below 1 (about 1 s lost per limit);
- 429s (and their rate), retries, lost requests (no answer at the end).
The naive client (the original Lion scripts' pattern: the openai client, one request at a time, a fixed 5 s
sleep on an error) runs on `--naive-requests` (60) requests with the same short/long mix and its time is
extrapolated linearly to `--requests` (it is sequential, so its time per request does not depend on N).
The last line printed is one JSON object (`--json`: the only output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402

from lion.config import config_from_dict  # noqa: E402
from lion.sim.scripted import ScriptedResponder  # noqa: E402
from lion.sim.server import SimServer, messages_hash  # noqa: E402
from lion.teachers.gateway import Gateway  # noqa: E402

MAX_TOKENS = 64
BURST_S = 2.0  # server buckets (the gateway's hold 1 s)
FILLER = ("The quick brown fox jumps over the lazy dog while the committee reviews the annual budget. ")


def workload(n: int, block: int, long_every: int) -> list[tuple[list[dict[str, str]], bool]]:
    out = []
    for i in range(n):
        long = (i // block) % long_every == long_every - 1
        text = f"Request {i}: " + (FILLER * 13 if long else "summarise this in one short line.")
        out.append(([{"role": "user", "content": text}], long))
    return out


def ideal_seconds(needs: Sequence[int], rpm: float, tpm: float, burst_s: float, latency_s: float) -> float:
    """Fastest in-order schedule the server's buckets allow (RPM needs 1 token; TPM a positive balance)."""
    rr, tr = rpm / 60.0, tpm / 60.0
    rcap, tcap = max(1.0, rr * burst_s), max(1.0, tr * burst_s)
    r, tk, t = rcap, tcap, 0.0
    for need in needs:
        wait = max(0.0, (1.0 - r) / rr, (1e-9 - tk) / tr)
        t += wait
        r, tk = min(rcap, r + wait * rr), min(tcap, tk + wait * tr)
        r, tk = r - 1.0, tk - need
    return t + latency_s


def block_utilisation(entries: list[dict[str, Any]], longs: dict[str, bool], blocks: dict[str, int],
                      rpm: float, tpm: float) -> dict[str, float]:
    """Per block (after the first, which starts on full buckets): the window from its first arrival to the next
    block's first arrival; achieved RPM/limit and TPM/limit in it; the binding one is the larger. Returns the
    time-weighted means: RPM ratio over short-prompt blocks, TPM ratio over long-prompt blocks, binding overall."""
    first: dict[int, float] = {}
    per: dict[int, list[dict[str, Any]]] = {}
    for e in entries:
        b = blocks[e["hash"]]
        per.setdefault(b, []).append(e)
        first[b] = min(first.get(b, e["t"]), e["t"])
    acc = {"short": [0.0, 0.0], "long": [0.0, 0.0], "binding": [0.0, 0.0]}
    for b in sorted(per)[1:]:
        es = per[b]
        if b + 1 in first:
            span, n, tok = first[b + 1] - first[b], len(es), sum(e["tpm_tokens"] for e in es)
        else:  # last block: between its first and last arrival
            es.sort(key=lambda e: e["t"])
            span, n, tok = es[-1]["t"] - es[0]["t"], len(es) - 1, sum(e["tpm_tokens"] for e in es[:-1])
        if span <= 0:
            continue
        r, t = n / span * 60 / rpm, tok / span * 60 / tpm
        kind = "long" if longs[es[0]["hash"]] else "short"
        acc[kind][0] += (t if kind == "long" else r) * span
        acc[kind][1] += span
        acc["binding"][0] += max(r, t) * span
        acc["binding"][1] += span
    return {k: (v[0] / v[1] if v[1] else float("nan")) for k, v in acc.items()}


def run_gateway(server: SimServer, items: list[tuple[list[dict[str, str]], bool]], args: argparse.Namespace,
                progress: bool) -> dict[str, Any]:
    role = {"base_url": server.base_url, "model": "sim", "rpm": args.rpm, "tpm": args.tpm, "max_tokens": MAX_TOKENS,
            "max_in_flight": 64, "timeout_s": 10.0, "max_attempts": 8, "backoff_initial_s": 0.2}
    llm = config_from_dict({"llm": {"default": role}, "student": {"model": "tiny"}, "pools": {"train_seed": "x"}}).llm
    gw = Gateway(llm, None, progress=progress)
    server.reset_stats()
    t0 = time.monotonic()
    res = gw.chat_many("teacher", "bench", [m for m, _ in items], desc="gateway")
    wall = time.monotonic() - t0
    gw.close()
    log = server.log
    ok = [e for e in log if e["kind"] == "ok"]
    span = max(e["t_done"] for e in ok) - min(e["t"] for e in ok)
    tokens = sum(e["tpm_tokens"] for e in ok)
    hashes = [messages_hash(m) for m, _ in items]
    longs = {h: long for h, (_, long) in zip(hashes, items, strict=True)}
    blocks = {h: i // args.block for i, h in enumerate(hashes)}
    order = {h: i for i, h in enumerate(hashes)}
    ideal = ideal_seconds([e["tpm_tokens"] for e in sorted(ok, key=lambda e: order[e["hash"]])],
                          args.rpm, args.tpm, BURST_S, args.latency_ms / 1000)
    util = block_utilisation(ok, longs, blocks, args.rpm, args.tpm)
    n429 = sum(1 for e in log if e["kind"] == "rate_limited")
    return {
        "requests": len(items), "seconds": round(span, 2), "wall_seconds": round(wall, 2),
        "rpm": round(len(ok) / span * 60, 1), "rpm_ratio": round(len(ok) / span * 60 / args.rpm, 4),
        "tpm": round(tokens / span * 60, 1), "tpm_ratio": round(tokens / span * 60 / args.tpm, 4),
        "rpm_ratio_rpm_bound_blocks": round(util["short"], 4), "tpm_ratio_tpm_bound_blocks": round(util["long"], 4),
        "binding_utilisation": round(util["binding"], 4),
        "ideal_seconds": round(ideal, 2), "ideal_over_actual": round(ideal / span, 4),
        "http_requests": len(log), "429s": n429, "429_rate": round(n429 / len(items), 4),
        "retries": int(gw.stats["retries"]), "faults": sum(1 for e in log if e["kind"].startswith("fault:")),
        "lost": sum(1 for r in res if not r.ok),
    }


def run_naive(server: SimServer, items: list[tuple[list[dict[str, str]], bool]], args: argparse.Namespace,
              n_total: int) -> dict[str, Any]:
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-no-key", max_retries=0, timeout=10.0)
    server.reset_stats()
    lost = retries = 0
    t0 = time.monotonic()
    for messages, _ in items:
        for attempt in range(3):
            try:
                client.chat.completions.create(model="sim", messages=messages, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
                break
            except openai.OpenAIError:
                retries += 1
                if attempt == 2:
                    lost += 1
                else:
                    time.sleep(5.0)
    seconds = time.monotonic() - t0
    client.close()
    log = server.log
    ok = [e for e in log if e["kind"] == "ok"]
    tokens = sum(e["tpm_tokens"] for e in ok)
    per_request = seconds / len(items)
    ideal = ideal_seconds([e["tpm_tokens"] for e in ok], args.rpm, args.tpm, BURST_S, args.latency_ms / 1000)
    n429 = sum(1 for e in log if e["kind"] == "rate_limited")
    return {
        "requests": len(items), "seconds": round(seconds, 2), "seconds_per_request": round(per_request, 4),
        "extrapolated_seconds": round(per_request * n_total, 1),
        "rpm": round(len(ok) / seconds * 60, 1), "rpm_ratio": round(len(ok) / seconds * 60 / args.rpm, 4),
        "tpm": round(tokens / seconds * 60, 1), "tpm_ratio": round(tokens / seconds * 60 / args.tpm, 4),
        "ideal_over_actual": round(ideal / seconds, 4),
        "429s": n429, "429_rate": round(n429 / len(items), 4), "retries": retries, "lost": lost,
    }


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/teacher_throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rpm", type=float, default=600.0)
    p.add_argument("--tpm", type=float, default=None, help="default: rpm x 200 (binds in the long-prompt blocks)")
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--block", type=int, default=100, help="requests per block of one prompt length")
    p.add_argument("--long-every", type=int, default=4, help="every Nth block has long prompts")
    p.add_argument("--naive-requests", type=int, default=60)
    p.add_argument("--fault-rate", type=float, default=0.0, help="inject server faults (robustness run)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    args.tpm = args.tpm or args.rpm * 200
    items = workload(args.requests, args.block, args.long_every)
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    server = SimServer(ScriptedResponder(default="ok"), latency_ms=args.latency_ms, rpm=args.rpm, tpm=args.tpm,
                       burst_s=BURST_S, fault_rate=args.fault_rate, seed=1)
    server.start()
    try:
        say(f"gateway: {args.requests} requests, limits {args.rpm:g} RPM / {args.tpm:g} TPM, "
            f"latency {args.latency_ms:g} ms")
        gw = run_gateway(server, items, args, progress=not args.json)
        say(json.dumps(gw))
        time.sleep(BURST_S)  # let the server's buckets refill
        step = max(1, args.requests // args.naive_requests)
        naive_items = items[::step][: args.naive_requests]
        say(f"naive: {len(naive_items)} requests (every {step}th, same short/long mix), one at a time")
        naive = run_naive(server, naive_items, args, args.requests)
        say(json.dumps(naive))
    finally:
        server.stop()
    result = {
        "bench": "teacher_throughput", "requests": args.requests, "rpm_limit": args.rpm, "tpm_limit": args.tpm,
        "latency_ms": args.latency_ms, "gateway": gw, "naive": naive,
        "speedup_vs_naive": round(naive["extrapolated_seconds"] / gw["seconds"], 2),
        "targets_met": gw["ideal_over_actual"] >= 0.95 and gw["lost"] == 0 and gw["429_rate"] <= 0.01,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
