"""SIGKILL a process mid-batch, resume: completed calls are never paid again.

    python -m pytest -q tests/test_gateway_crash.py
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from lion.sim.scripted import ScriptedResponder
from lion.sim.server import messages_hash
from lion.teachers.gateway import Gateway

N = 40
IN_FLIGHT = 4

CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from lion.config import config_from_dict
    from lion.teachers.gateway import Gateway
    url, run_dir, n, in_flight = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    role = {"base_url": url, "model": "sim", "rpm": 60000.0, "tpm": 1e9, "max_in_flight": in_flight, "max_tokens": 64}
    llm = config_from_dict({"llm": {"default": role}, "student": {"model": "tiny"}, "pools": {"train_seed": "x"}}).llm
    gw = Gateway(llm, run_dir, progress=False)
    gw.chat_many("teacher", "imitation", [[{"role": "user", "content": f"item {i}"}] for i in range(n)])
    print("finished", flush=True)
""")


def _msgs(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"item {i}"}]


def test_sigkill_mid_batch_then_resume_pays_no_completed_call_twice(tmp_path, sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="ANSWER: {user}"), latency_ms=60)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, server.base_url, str(tmp_path), str(N), str(IN_FLIGHT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while server.stats.completed < N // 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "child made no progress"
        time.sleep(0.005)
    proc.kill()  # SIGKILL: no cleanup, no atexit, in-flight calls lost
    out, _ = proc.communicate(timeout=30)
    assert b"finished" not in out
    time.sleep(0.2)  # let the server finish answering the calls that were in flight

    with sqlite3.connect(tmp_path / "calls.sqlite") as db:  # WAL: readable after the kill
        saved = {messages_hash(json.loads(m)) for (m,) in db.execute("select messages from calls")}
    answered_before = server.completed_by_hash()
    assert 0 < len(saved) < N
    assert saved <= set(answered_before)
    assert len(answered_before) - len(saved) <= IN_FLIGHT  # only in-flight calls can be lost

    with Gateway(sim_llm(server.base_url, max_in_flight=IN_FLIGHT), tmp_path, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(N)])
    assert [r.text for r in res] == [f"ANSWER: item {i}" for i in range(N)]
    assert sum(r.cached for r in res) == len(saved)
    answered = server.completed_by_hash()
    assert set(answered) == {messages_hash(_msgs(i)) for i in range(N)}
    assert all(answered[h] == 1 for h in saved), "a call completed before the kill was paid again"
    assert sum(answered.values()) - N <= IN_FLIGHT
