"""Config loading: strict keys, types, values; role inheritance; overrides; no secrets saved."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lion.config import config_from_dict, load_config, parse_overrides, save_resolved
from lion.errors import ConfigError

BASE = {"student": {"model": "tiny"}, "pools": {"train_seed": "seeds.jsonl"}}


def cfg_with(**extra):
    data = {**BASE, **extra}
    return config_from_dict(data)


def test_roles_inherit_default_and_keep_their_own_overrides():
    cfg = cfg_with(llm={"default": {"model": "m-default", "rpm": 100}, "referee": {"model": "judge-x"}})
    assert cfg.llm.teacher.model == "m-default" and cfg.llm.teacher.rpm == 100
    assert cfg.llm.referee.model == "judge-x" and cfg.llm.referee.rpm == 100
    assert cfg.llm.referee.max_tokens == 512  # role-specific built-in default survives
    assert cfg.llm.generator.max_tokens == 256
    assert cfg.llm.teacher.top_p is None and cfg.llm.referee.top_p is None  # sampling keys nobody set are not sent
    assert cfg.llm.referee.temperature == 0.0 and cfg.llm.judge.temperature == 0.2  # the built-in ones are
    assert cfg.llm.teacher.temperature is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"llm": {"teacher": {"rpm": -5}}}, "llm.teacher.rpm: must be > 0, got -5"),
        ({"llm": {"teacher": {"rmp": 5}}}, "llm.teacher.rmp: unknown key"),
        ({"student": {"model": "tiny", "lr": "fast"}}, "student.lr: expected a number"),
        ({"student": {"model": "tiny", "mode": "half"}}, "student.mode: must be one of"),
        ({"discrimination": {"referee_attempts": 0}}, "discrimination.referee_attempts: must be > 0"),
        ({"generation": {"min_words": 10, "max_words": 5}}, "generation.max_words: must be >= generation.min_words"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"student": {"model": "tiny", "packing": "yes"}}, "student.packing: expected true or false"),
        ({"llm": {"prices": {"gpt": {"input": -1}}}}, "llm.prices.gpt.input: must be >= 0"),
    ],
)
def test_bad_values_name_the_key(data, message):
    merged = {**BASE, **data}
    if "student" in data:
        merged["student"] = data["student"]
    with pytest.raises(ConfigError) as e:
        config_from_dict(merged)
    assert message in str(e.value)


def test_overrides_parse_as_yaml_and_apply():
    cfg = config_from_dict(BASE, parse_overrides(["student.lr=1e-4", "llm.teacher.model=gpt-4o", "rounds=5"]))
    assert cfg.student.lr == 1e-4 and cfg.llm.teacher.model == "gpt-4o" and cfg.rounds == 5
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["student.lr"])


def test_yaml_errors_name_file_and_line(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("student:\n  model: tiny\n  lr: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_holds_env_var_name_not_key(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    cfg = cfg_with(llm={"default": {"api_key_env": "MY_KEY"}})
    save_resolved(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "MY_KEY" in text and "sk-secret-123" not in text
    assert yaml.safe_load(text)["llm"]["teacher"]["api_key_env"] == "MY_KEY"


def test_cli_reports_error_without_traceback(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, "llm": {"teacher": {"rpm": -5}}}))
    out = subprocess.run([sys.executable, "-m", "lion.config", "--config", str(p)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "llm.teacher.rpm: must be > 0, got -5" in out.stderr
    assert "Traceback" not in out.stderr


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files, "no configs shipped"
    for f in files:
        load_config(f)


@pytest.mark.parametrize(
    "override, message",
    [
        ("rounds=-1", "rounds: must be >= 0, got -1"),
        ("llm.budget_usd=-1", "llm.budget_usd: must be >= 0, got -1.0"),
        ("llm.default.temperature=2.5", "llm.default.temperature: must be between 0.0 and 2.0, got 2.5"),
        ("student.infer.gpu_memory_utilization=0.01",
         "student.infer.gpu_memory_utilization: must be between 0.05 and 1.0, got 0.01"),
        ("student.lora.r=0", "student.lora.r: must be > 0, got 0"),
        ("pools.limit=0", "pools.limit: must be > 0, got 0"),
        ("student.pack_length=10", "student.pack_length: must be 0 or >= student.max_length (1024), got 10"),
        ("student.deepspeed=ds.json", "student.deepspeed: cannot be combined with student.fsdp; choose one"),
    ],
)
def test_declared_bounds_and_cross_checks_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(BASE, parse_overrides([override, "student.fsdp=full_shard"]))
    assert str(e.value) == message


def test_optional_keys_unset_pass_their_bounds():
    cfg = cfg_with()
    assert cfg.llm.budget_usd is None and cfg.pools.limit is None and cfg.eval.max_questions is None


def test_removed_n_samples_is_an_unknown_key():
    with pytest.raises(ConfigError, match="llm.teacher.n_samples: unknown key"):
        config_from_dict(BASE, parse_overrides(["llm.teacher.n_samples=2"]))


def test_reference_gives_every_key_a_meaning_and_real_defaults():
    from lion.config import GenerationConfig, config_reference

    ref = config_reference()
    rows = [line for line in ref.splitlines() if line.startswith("| `")]
    assert len(rows) > 90
    for row in rows:
        m = re.fullmatch(r"\| `([^`]+)` \| `[^`]+` \| `[^`]+` \| (.*) \|", row)
        assert m, row
        assert m.group(2).strip(), f"{m.group(1)} has no meaning in the reference"
    meta = next(r for r in rows if r.startswith("| `generation.meta_words`"))
    assert '["' + '", "'.join(GenerationConfig().meta_words) + '"]' in meta
    assert "| `llm.prices.<model>.input` | `float` | `0.0` |" in ref
    assert "n_samples" not in ref
    # every section opens with its class docstring, not the signature dataclasses writes when there is none
    for head in re.finditer(r"^## .*\n\n(.*)$", ref, re.MULTILINE):
        assert not re.match(r"\w+Config\(", head.group(1)), head.group(0)
