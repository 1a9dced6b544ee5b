"""GPU checks of the student engine (skipped without CUDA): bf16 LoRA training and CUDA inference.

    python -m pytest -q -m gpu tests/test_student_gpu.py
"""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def _examples(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 5))) for _ in range(n)]
    return [{"instruction": f"Copy: {w}", "input": "", "output": w} for w in words]


def test_lora_bf16_training_and_cuda_inference(tmp_path: Path) -> None:
    import torch

    from lion.config import InferConfig, LoraConfig, StudentConfig
    from lion.student.data import format_prompt
    from lion.student.infer import generate
    from lion.student.tiny import build_tiny
    from lion.student.train import train_student

    base = build_tiny(tmp_path / "base", hidden=64, layers=2, heads=4)
    cfg = StudentConfig(model=str(base), mode="lora", bf16=True, lr=3e-3, per_device_batch_size=32, grad_accum=1,
                        max_steps=30, max_length=64, packing=True, logging_steps=5,
                        lora=LoraConfig(r=8, alpha=16, between_rounds="continue"))
    res = train_student(cfg, _examples(400), base, tmp_path / "r1", progress=False)
    assert res.metrics["train_loss_last"] < res.metrics["train_loss_first"]
    assert (res.path / "adapter_config.json").is_file()
    prompts = [format_prompt(f"Copy: {w}") for w in ["abc", "hij", "ddeef", "a", "bbbbbbbbbbbb"]]
    batched = generate(res.path, prompts, InferConfig(batch_size=8, max_new_tokens=8, dtype="float32"), progress=False)
    single = generate(res.path, prompts, InferConfig(batch_size=1, max_new_tokens=8, dtype="float32"), progress=False)
    assert batched == single
    assert torch.cuda.is_available()


def test_bf16_lora_merge_with_checkpointing_then_full_fine_tuning(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from lion.config import InferConfig, LoraConfig, StudentConfig
    from lion.student.data import format_prompt
    from lion.student.infer import generate
    from lion.student.tiny import build_tiny
    from lion.student.train import train_student

    base = build_tiny(tmp_path / "base", hidden=64, layers=2, heads=4)
    cfg = StudentConfig(model=str(base), mode="lora", bf16=True, lr=3e-3, per_device_batch_size=16, grad_accum=2,
                        max_steps=6, max_length=64, gradient_checkpointing=True, logging_steps=1,
                        lora=LoraConfig(r=8, alpha=16, between_rounds="merge"))
    res = train_student(cfg, _examples(200), base, tmp_path / "merged", progress=False)
    assert (res.path / "config.json").is_file() and not (res.path / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(res.path)
    full = StudentConfig(model=str(base), mode="full", bf16=True, lr=1e-3, per_device_batch_size=16, grad_accum=1,
                         max_steps=6, max_length=64, logging_steps=1)
    res2 = train_student(full, _examples(200), res.path, tmp_path / "full", progress=False)
    assert res2.metrics["steps"] == 6 and math.isfinite(res2.metrics["train_loss_last"])  # no NaN, no inf
    out = generate(res2.path, [format_prompt("Copy: abc")], InferConfig(max_new_tokens=4), progress=False)
    assert len(out) == 1


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_real_vllm_matches_transformers_greedy(tmp_path: Path) -> None:
    from lion.config import InferConfig
    from lion.student.data import format_prompt
    from lion.student.infer import generate
    from lion.student.tiny import build_tiny

    base = build_tiny(tmp_path / "base", hidden=64, layers=2, heads=4)
    prompts = [format_prompt(f"Copy: {w}") for w in ["abc", "hij"]]
    hf = generate(base, prompts, InferConfig(backend="transformers", max_new_tokens=8, dtype="float32"))
    vl = generate(base, prompts, InferConfig(backend="vllm", max_new_tokens=8, dtype="float32",
                                             gpu_memory_utilization=0.3))
    assert hf == vl
