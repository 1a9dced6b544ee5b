"""The vLLM hand-off against the recording fake vllm (tests/fake_vllm): LoRA ranks vLLM accepts, max_model_len from
the training length, a fresh engine process once this process has used CUDA, and why `backend: auto` chose.

    python -m pytest -q tests/test_vllm_handoff.py
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
from test_student_vllm import PROMPTS, fake_vllm  # noqa: F401 - the fixture

from lion.config import InferConfig
from lion.errors import ConfigError
from lion.student import vllm_backend
from lion.student.vllm_backend import default_max_model_len, engine_kwargs, vllm_lora_rank


@pytest.mark.parametrize("r, served", [(1, 1), (4, 8), (8, 8), (12, 16), (16, 16), (24, 32), (48, 64), (100, 128),
                                       (300, 320), (512, 512)])
def test_lora_rank_is_rounded_up_to_one_vllm_accepts(r: int, served: int, tmp_path: Path) -> None:
    assert vllm_lora_rank(r) == served
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": r}))
    assert engine_kwargs("/m", InferConfig(), tokenizer=None, adapter=tmp_path)["max_lora_rank"] == served


def test_lora_rank_above_vllms_largest_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="student.lora.r: 600 is above the largest LoRA rank vLLM serves"):
        vllm_lora_rank(600)


def test_max_model_len_defaults_to_training_length_plus_answer(tiny_char_base) -> None:
    cfg = InferConfig(max_new_tokens=256)
    assert default_max_model_len(str(tiny_char_base), cfg, max_length=1024, longest_prompt=100) == 1280
    assert default_max_model_len(str(tiny_char_base), cfg, max_length=64, longest_prompt=300) == 556  # a long prompt
    # capped at the model's own context (the tiny base: max_position_embeddings 2048)
    assert default_max_model_len(str(tiny_char_base), cfg, max_length=4096, longest_prompt=10) == 2048
    assert default_max_model_len(str(tiny_char_base), InferConfig(max_model_len=777), max_length=1024,
                                 longest_prompt=10) == 777


def test_engine_gets_max_model_len_and_runs_in_a_fresh_process_after_cuda(fake_vllm, monkeypatch,  # noqa: F811
                                                                          tiny_char_base) -> None:
    from lion.student.infer import generate

    cfg = InferConfig(backend="vllm", max_new_tokens=20)
    generate(tiny_char_base, PROMPTS, cfg, progress=False, max_length=100)
    here = [c for c in fake_vllm() if c["event"] == "LLM"][-1]
    assert here["kwargs"]["max_model_len"] == 120 and here["pid"] == os.getpid()
    monkeypatch.setattr(vllm_backend, "cuda_in_use", lambda: True)  # as after an in-process training on the GPU
    out = generate(tiny_char_base, PROMPTS, cfg, progress=False, max_length=100)
    fresh = [c for c in fake_vllm() if c["event"] == "LLM"][-1]
    assert fresh["pid"] != os.getpid() and fresh["kwargs"]["max_model_len"] == 120
    assert len(out) == len(PROMPTS) and all(o.startswith("fake:") for o in out)


def test_auto_backend_says_what_it_chose_and_why(caplog, monkeypatch) -> None:
    import importlib.util

    from lion.student.infer import pick_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with caplog.at_level(logging.INFO, logger="lion.student"):
        assert pick_backend(InferConfig(backend="auto")) == "transformers"
    assert re.search(r"student.infer.backend auto: transformers \(vllm is not installed", caplog.text)



