"""The sim server's seams for a real model: a responder's own token counts (`Completion`) and its `concurrency`.

    python -m pytest -q tests/test_sim_completion.py
"""

from __future__ import annotations

import threading
import time
from typing import Any

import openai

from lion.sim.server import Completion


class Counted:
    """Answers only once `concurrency` requests are inside respond() together (a batching responder's view)."""

    concurrency = 4

    def __init__(self) -> None:
        self.barrier = threading.Barrier(self.concurrency, timeout=20)

    def respond(self, body: dict[str, Any]) -> Completion:
        self.barrier.wait()  # would time out on the server's former single worker thread
        text = "x" * 400  # 100 tokens by the server's 4-characters estimate: the exact counts below must win
        return Completion(text, "length", prompt_tokens=7, completion_tokens=3)


def test_a_responder_reports_its_own_usage_and_takes_requests_together(sim_server) -> None:
    server = sim_server(Counted())
    client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    out: list[Any] = []

    def ask(i: int) -> None:
        out.append(client.chat.completions.create(model="m", max_tokens=5,
                                                  messages=[{"role": "user", "content": f"q{i}"}]))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(out) == 4
    for resp in out:
        assert resp.choices[0].finish_reason == "length" and resp.choices[0].message.content == "x" * 400
        assert resp.usage.prompt_tokens == 7 and resp.usage.completion_tokens == 3  # not cut at max_tokens * 4 chars
    deadline = time.monotonic() + 5  # the server counts a call after its reply is written: the client can be first
    while server.stats.completed < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.stats.completed == 4
