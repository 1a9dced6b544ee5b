"""`student.infer.backend: server`: the round's student answered by an OpenAI-compatible inference server through
the gateway, with the sim server emulating vLLM's /v1/completions and dynamic LoRA loading, and answering with the
real checkpoint (lion.sim.model.StudentModelResponder).

    python -m pytest -q tests/test_student_serve.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import STUDENT_FACTS, student_fact_examples

from lion.answers import student_answers
from lion.config import StudentConfig, config_from_dict
from lion.context import RunContext
from lion.errors import ConfigError, LionError
from lion.records import Instruction
from lion.sim.model import StudentModelResponder

ITEMS = [Instruction(q) for q, _ in STUDENT_FACTS] + [Instruction("Translate.", input="bonjour"),
                                                      Instruction("Name a colour that is not blue.")]


@pytest.fixture(scope="module")
def adapter_student(tmp_path_factory, facts_student) -> Path:
    """A LoRA adapter checkpoint (between_rounds: continue) on the facts student, trained a little: it answers the
    facts (distinct answers), so equal answers from two backends mean something."""
    from lion.student.train import train_student

    cfg = StudentConfig(model=str(facts_student), mode="lora", lr=1e-3, per_device_batch_size=8, grad_accum=1,
                        max_steps=5, warmup_ratio=0.0, max_length=64, packing=True, pack_length=128,
                        logging_steps=5)
    cfg.lora.between_rounds = "continue"
    cfg.lora.r = 4
    out = tmp_path_factory.mktemp("serve") / "round_01" / "student"
    return train_student(cfg, student_fact_examples(4), facts_student, out, progress=False).path


def _cfg(run_dir: Path, base: Path, **infer) -> object:
    url = infer.pop("_url", None)
    return config_from_dict({
        "run_dir": str(run_dir),
        "student": {"model": str(base), "prompt_format": "alpaca",
                    "infer": {"max_new_tokens": 12, "batch_size": 4, **infer}},
        "pools": {"train_seed": "unused.jsonl"},
        "llm": {"student": {"base_url": url, "max_in_flight": 4, "max_attempts": 2,
                            "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 30}},
    })


def _answers(cfg, model: Path, path: Path) -> dict[str, str]:
    with RunContext(cfg, progress=False) as ctx:
        return student_answers(ctx, model, ITEMS, path, phase="discrimination")


def test_lora_adapter_loaded_into_the_server_answers_as_the_local_backend(tmp_path, sim_server, adapter_student,
                                                                        facts_student) -> None:
    meta = json.loads((adapter_student / "lion_student.json").read_text())
    assert meta["kind"] == "adapter"
    local = _answers(_cfg(tmp_path / "local", facts_student, backend="transformers"), adapter_student,
                     tmp_path / "local.jsonl")

    responder = StudentModelResponder()
    server = sim_server(responder, model_name=str(facts_student))
    cfg = _cfg(tmp_path / "run", facts_student, backend="server", server_lora=True, _url=server.base_url)
    served = _answers(cfg, adapter_student, tmp_path / "served.jsonl")
    assert served == local and len(set(local.values())) > 1, local
    kinds = [e["kind"] for e in server.log]
    assert kinds.count("load_lora") == 1 and kinds.count("unload_lora") == 1 and kinds.count("ok") == len(ITEMS)
    completions = [e for e in server.log if e["path"] == "/v1/completions"]
    assert len(completions) == len(ITEMS) and {e["model"] for e in completions} == {completions[0]["model"]}
    assert completions[0]["model"].startswith("lion-round_01-") and not server.adapters  # unloaded afterwards
    rows = [json.loads(x) for x in (tmp_path / "served.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == {i.id for i in ITEMS}

    # through the gateway: a second pass (a resumed phase with its answers file lost) is replayed from the cache
    n = responder.generated
    assert _answers(cfg, adapter_student, tmp_path / "again.jsonl") == local
    assert responder.generated == n
    with RunContext(cfg, progress=False) as ctx:
        usage = {(u["role"], u["phase"]): u for u in ctx.gateway.usage_summary()["by"]}
    assert usage[("student", "discrimination")]["calls"] == len(ITEMS)
    assert usage[("student", "discrimination")]["cached"] == len(ITEMS)


def test_server_backend_errors_name_the_key(tmp_path, sim_server, facts_student, adapter_student,
                                            tiny_char_base) -> None:
    server = sim_server(StudentModelResponder())
    cfg = _cfg(tmp_path / "a", tiny_char_base, backend="server", server_lora=True, _url=server.base_url)
    with pytest.raises(ConfigError, match=r"server_lora: .* is a full model.*between_rounds: continue"):
        _answers(cfg, facts_student, tmp_path / "a.jsonl")
    with pytest.raises(ConfigError, match=r"student\.infer\.backend: 'server' needs"):
        _cfg(tmp_path / "b", tiny_char_base, backend="server")
    dead = _cfg(tmp_path / "c", tiny_char_base, backend="server", server_lora=True, _url="http://127.0.0.1:9/v1")
    with pytest.raises(LionError, match=r"llm\.student\.base_url: cannot reach"):
        _answers(dead, adapter_student, tmp_path / "c.jsonl")
    chat = config_from_dict({"run_dir": str(tmp_path / "d"), "pools": {"train_seed": "x"},
                             "student": {"model": "m", "prompt_format": "chat_template",
                                         "infer": {"backend": "server", "server_lora": True}},
                             "llm": {"student": {"base_url": server.base_url}}})
    with pytest.raises(ConfigError, match=r"llm\.student\.provider: .*'chat_template' needs 'openai'"):
        _answers(chat, adapter_student, tmp_path / "d.jsonl")


@pytest.mark.slow
def test_server_command_serves_each_rounds_checkpoint_and_is_stopped(tmp_path, facts_student) -> None:
    """A server process started per use for a full checkpoint (as `vllm serve {model} --served-model-name {name}`
    would be), asked through the gateway, stopped afterwards."""
    import socket

    local = _answers(_cfg(tmp_path / "local", facts_student, backend="transformers"), facts_student,
                     tmp_path / "local.jsonl")
    command = ("{python} -m lion.sim.server --responder lion.sim.model:StudentModelResponder "
               "--options '{\"model\": \"{model}\"}' --model-name {name} --port {port}")
    cfg = _cfg(tmp_path / "run", facts_student, backend="server", server_command=command, server_startup_s=120)
    served = _answers(cfg, facts_student, tmp_path / "served.jsonl")
    assert served == local
    assert served[ITEMS[0].id] == STUDENT_FACTS[0][1]  # the facts student really answers: "blue"
    log = (tmp_path / "run" / "student_server.log").read_text()
    assert "serving" in log and "lion-" in log
    port = int(log.split("127.0.0.1:")[1].split("/")[0])
    with socket.socket() as s:  # the server was stopped
        assert s.connect_ex(("127.0.0.1", port)) != 0
