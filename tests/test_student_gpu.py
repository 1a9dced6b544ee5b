"""GPU checks of the student engine (skipped, with the reason, without torch or CUDA): bf16 LoRA training and CUDA
inference (the first test also checks that training and inference really ran on CUDA).

    python -m pytest -q -m gpu tests/test_student_gpu.py
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the GPU tests need torch (pip install -e '.[train]')")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False"),
]


def _examples(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 5))) for _ in range(n)]
    return [{"instruction": f"Copy: {w}", "input": "", "output": w} for w in words]


def test_lora_bf16_training_and_cuda_inference(tmp_path: Path) -> None:
    """bf16 LoRA training on the GPU lowers the loss; inference loads it onto CUDA; batched == one-at-a-time."""
    from lion.config import InferConfig, LoraConfig, StudentConfig
    from lion.student.checkpoint import checkpoint_info
    from lion.student.data import format_prompt
    from lion.student.infer import generate, load_model
    from lion.student.tiny import build_tiny
    from lion.student.train import train_student

    base = build_tiny(tmp_path / "base", hidden=64, layers=2, heads=4)
    cfg = StudentConfig(model=str(base), mode="lora", bf16=True, lr=3e-3, per_device_batch_size=32, grad_accum=1,
                        max_steps=30, max_length=64, packing=True, logging_steps=5,
                        lora=LoraConfig(r=8, alpha=16, between_rounds="continue"))
    res = train_student(cfg, _examples(400), base, tmp_path / "r1", progress=False, keep_model=True)
    # trained on the GPU (not silently on the CPU), the frozen base in bf16
    assert {p.device.type for p in res.model.parameters()} == {"cuda"}
    assert any(p.dtype == torch.bfloat16 for p in res.model.parameters())
    assert res.metrics["train_loss_last"] < res.metrics["train_loss_first"]
    assert (res.path / "adapter_config.json").is_file()
    prompts = [format_prompt(f"Copy: {w}") for w in ["abc", "hij", "ddeef", "a", "bbbbbbbbbbbb"]]
    infer = InferConfig(backend="transformers", max_new_tokens=8, dtype="float32")  # batch_size: a transformers knob
    batched = generate(res.path, prompts, dataclasses.replace(infer, batch_size=8), progress=False)
    single = generate(res.path, prompts, dataclasses.replace(infer, batch_size=1), progress=False)
    assert batched == single
    # the model generate() answers with (the adapter on its base, as the transformers backend loads it) is on CUDA
    info = checkpoint_info(res.path)
    assert {p.device.type for p in load_model(info.base, infer, adapter=info.adapter).parameters()} == {"cuda"}


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
