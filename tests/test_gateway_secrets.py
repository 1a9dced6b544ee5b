"""The API key: read from the configured environment variable, sent to the server, and never written to the
run directory, logs, error messages or captured output, not even when the server echoes it back.

    python -m pytest -q tests/test_gateway_secrets.py
"""

from __future__ import annotations

import logging
import secrets

import pytest

from lion.config import config_from_dict, save_resolved
from lion.errors import ConfigError, ProviderError
from lion.sim.scripted import ScriptedResponder
from lion.teachers.gateway import Gateway


def _all_bytes(root) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_api_key_never_leaks(tmp_path, monkeypatch, caplog, capfd, sim_server, sim_llm):
    good = "sk-lion-" + secrets.token_hex(20)
    bad = "sk-wrong-" + secrets.token_hex(20)
    monkeypatch.setenv("LION_TEST_KEY", good)
    monkeypatch.setenv("LION_BAD_KEY", bad)
    caplog.set_level(logging.DEBUG)  # everything any library logs, the openai SDK and httpx included
    run = tmp_path / "run"
    server = sim_server(ScriptedResponder(default="fine"), api_key=good, log_path=run / "server.jsonl",
                        known_models=["sim"], fault_rate=0.3, faults=("500", "malformed"))
    llm = sim_llm(server.base_url, api_key_env="LION_TEST_KEY", max_attempts=6,
                  llm={"referee": {"api_key_env": "LION_BAD_KEY"}, "judge": {"model": "gpt-nope"}})
    with Gateway(llm, run, progress=True) as gw:
        res = gw.chat_many("teacher", "imitation", [[{"role": "user", "content": f"q{i}"}] for i in range(10)])
        assert all(r.ok and r.text == "fine" for r in res)
        with pytest.raises(ProviderError) as wrong_key:  # the server answers 401 and echoes the key it got
            gw.chat_many("referee", "discrimination", [[{"role": "user", "content": "judge this"}]])
        with pytest.raises(ProviderError) as wrong_model:
            gw.chat_many("judge", "eval", [[{"role": "user", "content": "q"}]])
    cfg = config_from_dict({"llm": {"default": {"api_key_env": "LION_TEST_KEY"}}, "student": {"model": "tiny"},
                            "pools": {"train_seed": "x"}})
    save_resolved(cfg, run / "config.yaml")

    assert server.stats.by_status.get(401) == 1
    assert "Incorrect API key provided: ***" in str(wrong_key.value)  # the echoed key was redacted
    assert "HTTP Request: POST" in caplog.text or "Request options" in caplog.text  # logs were captured
    msg = str(wrong_key.value)
    assert "llm.referee" in msg and "401" in msg and "$LION_BAD_KEY" in msg
    assert "llm.judge.model" in str(wrong_model.value) and "404" in str(wrong_model.value)
    out, err = capfd.readouterr()
    for key in (good, bad):
        for where, text in (("error", msg), ("logs", caplog.text), ("stdout", out), ("stderr", err)):
            assert key not in text, f"API key leaked into {where}"
            assert key[:12] not in text, f"a prefix of the API key leaked into {where}"
        assert key.encode() not in _all_bytes(run), "API key leaked into the run directory"
    assert (run / "calls.sqlite").is_file() and (run / "usage.json").is_file()


def test_missing_key_is_a_config_error_naming_the_variable(monkeypatch, sim_llm):
    monkeypatch.delenv("LION_UNSET_KEY_VAR", raising=False)
    llm = sim_llm("https://api.example.invalid/v1", api_key_env="LION_UNSET_KEY_VAR")
    gw = Gateway(llm, None, progress=False)
    with pytest.raises(ConfigError, match=r"llm.teacher.api_key_env: environment variable 'LION_UNSET_KEY_VAR' is not set"):
        gw.chat_many("teacher", "imitation", [[{"role": "user", "content": "x"}]])
    gw.close()


def test_local_server_needs_no_key(monkeypatch, sim_server, sim_llm):
    monkeypatch.delenv("LION_UNSET_KEY_VAR", raising=False)
    server = sim_server(ScriptedResponder(default="hi"))
    gw = Gateway(sim_llm(server.base_url, api_key_env="LION_UNSET_KEY_VAR"), None, progress=False)
    assert gw.chat_many("teacher", "imitation", [[{"role": "user", "content": "x"}]])[0].text == "hi"
    gw.close()
