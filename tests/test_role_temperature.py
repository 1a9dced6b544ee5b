"""The referee's and the judge's built-in temperatures (0 and 0.2) are real: the resolved config holds them, the
requests the server receives carry them, `llm.default` / the role override them, and a gpt-5 or o-series referee
or judge (which refuse any temperature but the default) gets none, said when the run starts and in the plan.

    python -m pytest -q tests/test_role_temperature.py
"""

from __future__ import annotations

from typing import Any

import pytest

from lion.config import config_from_dict
from lion.context import RunContext
from lion.sim.scripted import EchoResponder
from lion.teachers.gateway import Gateway

BASE = {"student": {"model": "tiny"}, "pools": {"train_seed": "x"}}


def _cfg(llm: dict[str, Any], **extra: Any) -> Any:
    return config_from_dict({**BASE, "llm": llm, **extra})


class Recording:
    """Echoes the last user message and keeps every request body it answered."""

    def __init__(self) -> None:
        self.echo = EchoResponder()
        self.bodies: list[dict[str, Any]] = []

    def respond(self, body: dict[str, Any]) -> str:
        self.bodies.append(body)
        return self.echo.respond(body)


def test_the_referee_and_the_judge_have_their_built_in_temperatures():
    llm = _cfg({"default": {"model": "gpt-4.1-mini"}}).llm
    assert (llm.referee.temperature, llm.judge.temperature) == (0.0, 0.2)
    assert llm.teacher.temperature is None and llm.generator.temperature is None  # not sent: the model's default
    assert llm.notes() == []


@pytest.mark.parametrize("llm, referee, judge", [
    ({"default": {"temperature": 0.7}}, 0.7, 0.7),  # llm.default sets it for every role
    ({"referee": {"temperature": 0.3}, "judge": {"temperature": None}}, 0.3, None),  # the role's own, null: not sent
])
def test_llm_default_and_the_role_override_the_built_in_temperature(llm, referee, judge):
    cfg = _cfg(llm).llm
    assert (cfg.referee.temperature, cfg.judge.temperature) == (referee, judge)


def test_the_requests_carry_the_referee_and_judge_temperatures(sim_server, sim_llm):
    rec = Recording()
    server = sim_server(rec, strict=True)
    with Gateway(sim_llm(server.base_url, model="gpt-4.1-mini"), None, progress=False) as gw:
        for role in ("teacher", "referee", "judge"):
            assert gw.chat_many(role, "p", [[{"role": "user", "content": f"ask the {role}"}]])[0].ok
    teacher, referee, judge = rec.bodies
    assert "temperature" not in teacher
    assert referee["temperature"] == 0.0 and judge["temperature"] == 0.2


@pytest.mark.parametrize("model", ["gpt-5-mini", "o4-mini", "openai/gpt-5"])
def test_a_gpt5_or_o_series_referee_gets_no_temperature_and_the_run_says_so(tmp_path, sim_server, model):
    llm = {"default": {"model": model}}
    cfg = _cfg(llm, run_dir=str(tmp_path / "run"), log={"level": "info"})
    assert cfg.llm.referee.temperature is None and cfg.llm.judge.temperature is None
    notes = cfg.llm.notes()
    assert len(notes) == 2 and notes[0].startswith(f"llm.referee: {model} takes only its default temperature")
    assert "built-in temperature 0 is not sent" in notes[0] and "built-in temperature 0.2" in notes[1]
    with RunContext(cfg, progress=False):
        pass
    assert notes[0] in (tmp_path / "run" / "lion.log").read_text()  # said when the run starts
    # the strict server (2026 API rules) answers: no temperature goes out
    rec = Recording()
    server = sim_server(rec, strict=True)
    cfg.llm.referee.base_url = server.base_url
    with Gateway(cfg.llm, None, progress=False) as gw:
        assert gw.chat_many("referee", "discrimination", [[{"role": "user", "content": "judge"}]])[0].ok
    assert "temperature" not in rec.bodies[0] and server.stats.by_kind == {"ok": 1}


def test_a_temperature_set_on_purpose_for_a_gpt5_referee_is_sent_and_its_refusal_names_the_key(sim_server):
    cfg = _cfg({"default": {"model": "gpt-5-mini"}, "referee": {"temperature": 0.0}})
    assert cfg.llm.referee.temperature == 0.0 and cfg.llm.notes() == [n for n in cfg.llm.notes()
                                                                      if n.startswith("llm.judge")]
    server = sim_server(EchoResponder(), strict=True)
    cfg.llm.referee.base_url = server.base_url
    from lion.errors import ProviderError

    with Gateway(cfg.llm, None, progress=False) as gw, pytest.raises(ProviderError,
                                                                      match=r"set llm\.referee\.temperature: null"):
        gw.chat_many("referee", "discrimination", [[{"role": "user", "content": "judge"}]])
