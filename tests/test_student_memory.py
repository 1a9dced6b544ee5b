"""One-GPU training, then inference in the same process: the training leaves nothing behind that holds memory.

    python -m pytest -q tests/test_student_memory.py

vLLM (>= 0.9) refuses to start when the GPU's free memory is below gpu_memory_utilization x total. After an
in-process training, the trainer, the accelerator and the model (kept alive by reference cycles until a garbage
collection) and the CUDA caching allocator would still hold the training's memory. `train_student` drops its
references, collects the cycles and empties the CUDA cache before it returns (`release_training_memory`).
There is no GPU here: the CUDA part is checked with torch.cuda's functions replaced by recorders.
"""

from __future__ import annotations

import gc
import weakref

import pytest
from conftest import student_fact_examples

import lion.student.train as train_mod
from lion.config import LoraConfig, StudentConfig


def _cfg(base, **kw) -> StudentConfig:
    opts = dict(model=str(base), lr=3e-3, per_device_batch_size=4, grad_accum=1, max_steps=2, warmup_ratio=0.0,
                max_length=64, save_minutes=0)
    opts.update(kw)
    return StudentConfig(**opts)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_no_live_reference_to_the_trained_model_after_train_student(tmp_path, tiny_char_base, monkeypatch,
                                                                    mode) -> None:
    refs: list[weakref.ref] = []
    real = train_mod._prepare_model

    def watched(*a, **kw):
        model, info = real(*a, **kw)
        refs.append(weakref.ref(model))
        return model, info

    monkeypatch.setattr(train_mod, "_prepare_model", watched)
    gc.disable()  # only what train_student itself does may free the model (no collection by chance)
    try:
        res = train_mod.train_student(_cfg(tiny_char_base, mode=mode, bf16=True, lora=LoraConfig(r=2, alpha=4)),
                                      student_fact_examples(2), tiny_char_base, tmp_path / "s", progress=False)
        assert res.model is None
        assert refs and refs[0]() is None, "the trained model is still alive after train_student returned"
    finally:
        gc.enable()


def test_keep_model_returns_the_model(tmp_path, tiny_char_base) -> None:
    res = train_mod.train_student(_cfg(tiny_char_base), student_fact_examples(2), tiny_char_base, tmp_path / "k",
                                  progress=False, keep_model=True)
    assert res.model is not None and sum(p.numel() for p in res.model.parameters()) > 0


def test_release_empties_the_cuda_cache_when_cuda_is_there(monkeypatch) -> None:
    """No GPU here: torch.cuda.is_available / is_initialized / synchronize / empty_cache are replaced by recorders."""
    import torch

    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("gc") or 0)
    train_mod.release_training_memory()
    assert calls == ["gc", "synchronize", "empty_cache"]  # the cycles first, so their tensors reach the cache
    calls.clear()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # CUDA never used: nothing to empty
    train_mod.release_training_memory()
    assert calls == ["gc"]


def test_train_student_releases_the_memory_before_returning(tmp_path, tiny_char_base, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(train_mod, "release_training_memory", lambda **kw: calls.append("release"))
    train_mod.train_student(_cfg(tiny_char_base), student_fact_examples(2), tiny_char_base, tmp_path / "r",
                            progress=False)
    assert calls == ["release"]
