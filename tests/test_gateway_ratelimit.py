"""429 handling (Retry-After honoured, one shared cool-down) and client-side pacing.

    python -m pytest -q tests/test_gateway_ratelimit.py
"""

from __future__ import annotations

import time

from lion.sim.scripted import ScriptedResponder
from lion.teachers.gateway import Gateway


def _msgs(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"item {i}"}]


def test_429_retry_after_one_shared_cooldown(sim_server, sim_llm):
    # server: 240 RPM, bucket of 0.5 s = 2 requests; the client believes it may send 60000 RPM
    server = sim_server(ScriptedResponder(default="A {user}"), rpm=240, burst_s=0.5)
    gw = Gateway(sim_llm(server.base_url, max_in_flight=4, max_attempts=20), None, progress=False)
    res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(8)])
    assert [r.text for r in res] == [f"A item {i}" for i in range(8)]
    log = server.log
    limited = [e for e in log if e["kind"] == "rate_limited"]
    assert limited and gw.stats["rate_limited"] == len(limited)
    assert all(0 < e["retry_after"] <= 0.5 for e in limited)
    # after any 429 (answered at t_done, Retry-After ra) nobody of this role may call before t_done + ra:
    # requests already on the wire may land a little later (80 ms of slack for a loaded machine), nothing more
    assert max(e["retry_after"] for e in limited) > 0.2
    for e in limited:
        early = [x for x in log if e["t_done"] + 0.08 < x["t"] < e["t_done"] + e["retry_after"] - 0.03]
        assert not early, f"{len(early)} requests sent during the cool-down after a 429"
    # one cool-down per wave of 429s, not one per task: a few waves of up to 4 in-flight rejections
    assert len(limited) <= 4 * 8
    gw.close()


def test_client_buckets_pace_requests_below_the_server_limit(sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="ok"), rpm=1200, burst_s=2.0)
    gw = Gateway(sim_llm(server.base_url, rpm=1200, max_in_flight=16), None, progress=False)
    t = time.monotonic()
    res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(30)])
    elapsed = time.monotonic() - t
    assert all(r.ok for r in res)
    assert server.stats.rate_limited == 0
    assert elapsed >= 0.45  # 20 req/s with a 1 s (20 request) burst: the last 10 wait >= 0.5 s
    gw.close()


def test_tpm_bucket_paces_by_prompt_plus_max_tokens(sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="ok"), tpm=60_000, burst_s=2.0)
    # each request counts 3 + 4 + 2 prompt + 91 max_tokens = 100 tokens; 60k TPM = 1000/s, 1 s burst
    gw = Gateway(sim_llm(server.base_url, tpm=60_000, max_tokens=91), None, progress=False)
    t = time.monotonic()
    res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(15)])
    elapsed = time.monotonic() - t
    assert all(r.ok for r in res) and server.stats.rate_limited == 0
    assert all(e["tpm_tokens"] == 100 for e in server.log)
    assert elapsed >= 0.45  # 10 fit in the burst, 5 more need 0.5 s
    gw.close()
