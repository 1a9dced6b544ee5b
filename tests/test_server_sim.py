"""The sim server through the real openai client: endpoints, usage, limits, faults, log, CLI.

    python -m pytest -q tests/test_server_sim.py
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from lion.config import RoleConfig
from lion.errors import ConfigError
from lion.sim.scripted import ScriptedResponder
from lion.sim.server import make_responder, messages_hash
from lion.teachers.base import ChatRequest, ResolvedParams, TransientError
from lion.teachers.openai_compat import OpenAICompatProvider

ROOT = Path(__file__).resolve().parents[1]


def _client(url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="sk-no-key", max_retries=0, **kw)


def test_chat_completion_models_usage_and_log(tmp_path, sim_server):
    responder = ScriptedResponder([(r"^Score", "Score: 8/10"), (lambda t: "long" in t, "word " * 100)],
                                  default="ANSWER: {user} ({model})")
    server = sim_server(responder, log_path=tmp_path / "log.jsonl", model_name="sim-model")
    client = _client(server.base_url)
    assert [m.id for m in client.models.list().data] == ["sim-model"]
    r = client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "Hello there"}],
                                       max_tokens=50)
    assert r.choices[0].message.content == "ANSWER: Hello there (m1)" and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 3 + 4 + 3 and r.usage.completion_tokens == 6 and r.model == "m1"
    assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Score it"}]
                                          ).choices[0].message.content == "Score: 8/10"
    long = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "long one"}], max_tokens=10)
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 10
    s = server.stats
    assert (s.requests, s.completed, s.by_status) == (4, 3, {200: 4})
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in logged] == ["models", "ok", "ok", "ok"]
    assert logged[1]["hash"] == messages_hash([{"role": "user", "content": "Hello there"}])
    assert server.completed_by_hash()[logged[1]["hash"]] == 1
    with pytest.raises(openai.BadRequestError, match="streaming is not supported"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)


def test_rate_limit_answers_429_with_retry_after(sim_server):
    server = sim_server(make_responder("echo", {}), rpm=60, burst_s=1.0)  # one request, then 1 per second
    body = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "hi"}]}).encode()

    def post() -> urllib.request.Request:
        return urllib.request.Request(server.base_url + "/chat/completions", data=body, method="POST",
                                      headers={"Content-Type": "application/json"})

    with urllib.request.urlopen(post()) as ok:
        assert json.loads(ok.read())["choices"][0]["message"]["content"] == "hi"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(post())
    assert e.value.code == 429
    assert e.value.headers["Retry-After"] == "1" and 900 <= int(e.value.headers["retry-after-ms"]) <= 1000
    assert server.stats.rate_limited == 1


@pytest.mark.parametrize("fault, expected", [
    ("500", "500"), ("503", "503"), ("timeout", "timed out"), ("drop", "connection failed"),
    ("malformed", "malformed response"),
])
def test_each_fault_is_a_transient_error_never_an_answer(sim_server, fault, expected):
    server = sim_server(make_responder("echo", {}), fault_rate=1.0, faults=(fault,), hang_s=5, seed=1)
    provider = OpenAICompatProvider(RoleConfig(base_url=server.base_url, model="sim", timeout_s=0.3))
    params = ResolvedParams(model="sim", temperature=0.0, top_p=1.0, max_tokens=16, timeout_s=0.3)

    async def three() -> list[BaseException]:  # three tries: the malformed variants differ
        errors = []
        for i in range(3):
            try:
                await provider.chat(ChatRequest([{"role": "user", "content": f"x{i}"}]), params)
            except TransientError as e:
                errors.append(e)
        await provider.aclose()
        return errors

    errors = asyncio.run(three())
    assert len(errors) == 3 and all(expected in str(e) for e in errors), [str(e) for e in errors]
    assert server.stats.faults == 3 and server.stats.completed == 0


def test_make_responder_errors():
    with pytest.raises(ConfigError, match="sim.responder: cannot load 'no_such_mod_q:Cls'"):
        make_responder("no_such_mod_q:Cls", {})
    with pytest.raises(ConfigError, match="sim.options: lion.sim.scripted:EchoResponder does not accept"):
        make_responder("lion.sim.scripted:EchoResponder", {"bogus": 1})
    with pytest.raises(ValueError, match=r"rules\[0\]: expected"):
        make_responder("scripted", {"rules": [{"match": "x"}]})


def test_cli_serves_until_sigterm_and_reports_bad_flags():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "lion.sim.server", "--port", "0", "--responder", "scripted",
                             "--options", '{"default": "cli says {user}"}', "--latency-ms", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[1]
        r = _client(url).chat.completions.create(model="sim", messages=[{"role": "user", "content": "yo"}])
        assert r.choices[0].message.content == "cli says yo"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["completed"] == 1
    bad = subprocess.run([sys.executable, "-m", "lion.sim.server", "--fault-rate", "2"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --fault-rate: must be between 0 and 1, got 2.0"
