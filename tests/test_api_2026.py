"""Today's APIs: the real openai and anthropic SDKs against the sim server in strict mode, which refuses parameters
exactly as the 2026 services do. gpt-5-mini, o4-mini and claude-sonnet-4-5 roles get answers; a refused parameter
stops the run naming the config key to change; only the sampling keys that are set are sent; extra_body, options
and reasoning_effort reach the request.

    python -m pytest -q tests/test_api_2026.py
"""

from __future__ import annotations

from typing import Any

import pytest

from lion.errors import ProviderError
from lion.sim.scripted import EchoResponder
from lion.teachers.gateway import Gateway


class Recording:
    """Echoes the last user message and keeps every request body it answered (as responders see them)."""

    def __init__(self) -> None:
        self.echo = EchoResponder()
        self.bodies: list[dict[str, Any]] = []

    def respond(self, body: dict[str, Any]) -> str:
        self.bodies.append(body)
        return self.echo.respond(body)


def _msgs(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"question {i}"}]


@pytest.mark.parametrize("role", [
    {"model": "gpt-5-mini"},
    {"model": "o4-mini"},
    {"model": "claude-sonnet-4-5", "provider": "anthropic", "temperature": 0.2},
    {"model": "claude-sonnet-4-5", "top_p": 0.9},  # Anthropic's OpenAI-compatible endpoint: one of the two is fine
], ids=["gpt-5-mini", "o4-mini", "claude-sonnet-4-5 native", "claude-sonnet-4-5 openai-compatible"])
def test_2026_models_get_answers_in_strict_mode(sim_server, sim_llm, role):
    rec = Recording()
    server = sim_server(rec, strict=True)
    with Gateway(sim_llm(server.base_url, **role), None, progress=False) as gw:
        res = gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(4)])
    assert [r.text for r in res] == [f"question {i}" for i in range(4)] and all(r.ok for r in res)
    assert server.stats.by_kind == {"ok": 4}  # nothing refused
    body = rec.bodies[0]
    if role["model"].startswith(("gpt-5", "o4")):
        assert body["max_completion_tokens"] == 64 and "max_tokens" not in body
        assert "temperature" not in body and "top_p" not in body  # nobody set them: not sent
    else:
        assert body["max_tokens"] == 64
        assert body["messages"][0] == {"role": "system", "content": "Answer briefly."}


@pytest.mark.parametrize("role, key, message", [
    ({"model": "gpt-5-mini", "temperature": 0.7}, "llm.teacher.temperature: null",
     "Unsupported value: 'temperature' does not support 0.7 with this model. Only the default (1) value is supported."),
    ({"model": "o4-mini", "top_p": 0.5}, "llm.teacher.top_p: null",
     "Unsupported value: 'top_p' does not support 0.5 with this model."),
    ({"model": "gpt-5-mini", "token_param": "max_tokens"}, "llm.teacher.token_param: max_completion_tokens",
     "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."),
    ({"model": "claude-sonnet-4-5", "temperature": 0.7, "top_p": 0.9},
     "set only one of llm.teacher.temperature and llm.teacher.top_p",
     "`temperature` and `top_p` cannot both be specified for this model. Please use only one."),
    ({"model": "claude-opus-4-5-20251101", "provider": "anthropic", "temperature": 0.7, "top_p": 0.9},
     "set only one of llm.teacher.temperature and llm.teacher.top_p", "cannot both be specified"),
], ids=["gpt-5 temperature", "o4 top_p", "gpt-5 max_tokens", "claude via openai", "claude native"])
def test_a_refused_parameter_stops_the_run_naming_the_key(sim_server, sim_llm, role, key, message):
    server = sim_server(Recording(), strict=True)
    with Gateway(sim_llm(server.base_url, max_in_flight=2, **role), None, progress=False) as gw:
        with pytest.raises(ProviderError) as e:
            gw.chat_many("teacher", "imitation", [_msgs(i) for i in range(30)])
    assert key in str(e.value) and message in str(e.value)
    assert server.stats.by_kind.get("strict", 0) <= 2  # stopped at once, not one refusal per item


def test_strict_mode_is_off_by_default(sim_server, sim_llm):
    server = sim_server(Recording())
    with Gateway(sim_llm(server.base_url, model="gpt-5-mini", temperature=0.7, token_param="max_tokens"), None,
                 progress=False) as gw:
        assert all(r.ok for r in gw.chat_many("teacher", "imitation", [_msgs(0)]))


def test_only_set_keys_are_sent_and_extra_body_options_and_effort_reach_the_request(sim_server, sim_llm):
    rec = Recording()
    server = sim_server(rec, strict=True)
    roles = {"teacher": {"model": "gpt-5-mini", "reasoning_effort": "low", "extra_body": {"service_tier": "flex"},
                         "options": {"verbosity": "low"}},
             "referee": {"model": "gpt-4o-mini", "temperature": 0.0},
             "generator": {"model": "claude-haiku-4-5", "provider": "anthropic", "reasoning_effort": "high",
                           "top_p": 0.8, "extra_body": {"metadata": {"user_id": "lion"}}}}
    with Gateway(sim_llm(server.base_url, llm=roles), None, progress=False) as gw:
        for role in roles:
            assert gw.chat_many(role, "p", [_msgs(0)])[0].ok
    teacher, referee, generator = rec.bodies
    assert teacher["reasoning_effort"] == "low" and teacher["service_tier"] == "flex" and teacher["verbosity"] == "low"
    assert "temperature" not in teacher and "top_p" not in teacher and "max_completion_tokens" in teacher
    assert referee["temperature"] == 0.0 and "top_p" not in referee and referee["max_tokens"] == 64
    assert generator["output_config"] == {"effort": "high"} and generator["top_p"] == 0.8
    assert "temperature" not in generator and generator["metadata"] == {"user_id": "lion"}


def test_extra_body_and_reasoning_effort_are_part_of_the_cache_key(tmp_path, sim_server, sim_llm):
    server = sim_server(Recording())
    flex = {"extra_body": {"service_tier": "flex"}}
    for role, cached in (({}, False), ({}, True), ({"reasoning_effort": "low"}, False), (flex, False), (flex, True)):
        with Gateway(sim_llm(server.base_url, **role), tmp_path, progress=False) as gw:  # one cache on disk
            assert gw.chat_many("teacher", "p", [_msgs(0)])[0].cached is cached
    assert server.stats.completed == 3
