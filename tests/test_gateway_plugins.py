"""Provider plugins (`module:Class` and the `lion.teachers` entry-point group) and config errors.

    python -m pytest -q tests/test_gateway_plugins.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lion.config import RoleConfig, config_from_dict
from lion.errors import ConfigError
from lion.sim.scripted import ScriptedResponder
from lion.teachers.gateway import Gateway, load_provider

PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture
def plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


def test_module_class_plugin_gets_cache_and_ledger(plugin_path, tmp_path, sim_server, sim_llm):
    server = sim_server(ScriptedResponder(default="plugin says {user}"))
    llm = sim_llm(server.base_url, provider="lion_example_plugin:UrllibProvider")
    reqs = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    with Gateway(llm, tmp_path, progress=False) as gw:
        provider = gw.provider("teacher")
        assert type(provider).__name__ == "UrllibProvider"
        assert provider.identity == f"urllib-example:{server.base_url}"
        res = gw.chat_many("teacher", "imitation", reqs)
        assert [r.text for r in res] == [f"plugin says q{i}" for i in range(5)]
        assert provider.calls == 5
    with Gateway(llm, tmp_path, progress=False) as gw:
        assert all(r.cached for r in gw.chat_many("teacher", "imitation", reqs))
    assert server.stats.requests == 5


def test_entry_point_plugin(plugin_path, tmp_path, monkeypatch, sim_server, sim_llm):
    dist = tmp_path / "site" / "lion_example_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lion-example-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lion.teachers]\nurllib-example = lion_example_plugin:UrllibProvider\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    server = sim_server(ScriptedResponder(default="ep {user}"))
    provider = load_provider(RoleConfig(provider="urllib-example", base_url=server.base_url))
    assert type(provider).__name__ == "UrllibProvider"
    gw = Gateway(sim_llm(server.base_url, provider="urllib-example"), None, progress=False)
    assert gw.chat_many("judge", "eval", [[{"role": "user", "content": "x"}]])[0].text == "ep x"
    gw.close()
    with pytest.raises(ConfigError, match=r"llm.teacher.provider: unknown provider 'nope'.*urllib-example"):
        Gateway(sim_llm(server.base_url, provider="nope"), None).provider("teacher")


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:Cls", r"llm.teacher.provider: cannot import module 'no_such_module_xyz'"),
    ("lion_example_plugin:Missing", r"llm.teacher.provider: module 'lion_example_plugin' has no attribute 'Missing'"),
    ("lion_example_plugin:NotAProvider", r"llm.teacher.provider: .* does not implement the chat protocol"),
    ("lion_example_plugin:", r"llm.teacher.provider: expected 'package.module:ClassName'"),
])
def test_bad_provider_specs_name_the_key(plugin_path, spec, message):
    with pytest.raises(ConfigError, match=message):
        load_provider(RoleConfig(provider=spec, base_url="http://127.0.0.1:9/v1"), key="llm.teacher.provider")


def test_config_errors(sim_llm):
    with pytest.raises(ConfigError, match=r"llm.teacher.rpm: must be > 0, got -5"):
        config_from_dict({"llm": {"teacher": {"rpm": -5}}, "student": {"model": "tiny"}, "pools": {"train_seed": "x"}})
    llm = sim_llm("http://127.0.0.1:9/v1", llm={"budget_usd": 1.0})
    gw = Gateway(llm, None, progress=False)
    with pytest.raises(ConfigError, match=r"llm.prices: no price for model 'sim' \(llm.teacher.model\)"):
        gw.chat_many("teacher", "imitation", [[{"role": "user", "content": "x"}]])
    with pytest.raises(ConfigError, match=r"unknown role 'critic'"):
        gw.chat_many("critic", "imitation", [[{"role": "user", "content": "x"}]])
    with pytest.raises(ValueError, match=r"request 1: message 0: role must be one of"):
        Gateway(sim_llm("http://127.0.0.1:9/v1"), None).chat_many(
            "teacher", "p", [[{"role": "user", "content": "x"}], [{"role": "bot", "content": "y"}]])
