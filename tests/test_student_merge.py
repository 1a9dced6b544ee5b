"""LoRA merge on save keeps the adapter a training started from (init_from = an adapter checkpoint).

    python -m pytest -q tests/test_student_merge.py            # add -m slow for the 2-process torchrun case

Sharded or quantized LoRA trainings (several processes, FSDP, DeepSpeed, QLoRA) with `between_rounds: merge` save
their adapter and merge it into a freshly loaded base on rank 0. When the training started from an adapter
checkpoint (a previous round's `between_rounds: continue` student), that adapter was folded into the weights the
training started from, so the merge must fold it in too: the saved student is base + A + B, not base + B.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import student_fact_examples

from lion.config import LoraConfig, StudentConfig
from lion.student.checkpoint import checkpoint_info
from lion.student.train import merged_for_save, train_student


def _adapter_a(tmp_path: Path, base: Path) -> Path:
    """An adapter checkpoint as lion writes it (lora, between_rounds: continue; lion_student.json names its base)."""
    cfg = StudentConfig(model=str(base), mode="lora", lr=1e-2, per_device_batch_size=8, grad_accum=1, max_steps=3,
                        warmup_ratio=0.0, max_length=64, lr_scheduler="constant", save_minutes=0,
                        lora=LoraConfig(r=2, alpha=4, dropout=0.0, between_rounds="continue"))
    res = train_student(cfg, student_fact_examples(2), base, tmp_path / "a", progress=False)
    meta = json.loads((res.path / "lion_student.json").read_text())
    assert meta["kind"] == "adapter" and meta["base"] == str(base)
    return res.path


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _lora_delta(w_from, w_to, r: int) -> bool:
    """True when every 2-D weight changed from `w_from` to `w_to` by a matrix of rank <= r (one LoRA update)."""
    import torch

    changed = 0
    for k, a in w_from.items():
        d = (w_to[k] - a).double()
        if d.dim() != 2 or d.abs().max() < 1e-7:
            continue
        changed += 1
        s = torch.linalg.svdvals(d)
        if len(s) > r and s[r] > 1e-5 * s[0]:
            return False
    return changed > 0


def test_merge_on_save_folds_in_the_adapter_the_training_started_from(tmp_path, tiny_char_base) -> None:
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    a_dir = _adapter_a(tmp_path, tiny_char_base)
    info = checkpoint_info(a_dir)
    assert info.adapter == a_dir
    base = AutoModelForCausalLM.from_pretrained(tiny_char_base)
    w_base = _weights(base)
    w_start = _weights(PeftModel.from_pretrained(base, str(a_dir)).merge_and_unload())  # base + A
    assert not _lora_delta(w_base, w_base, 2) and any(not torch.equal(w_base[k], w_start[k]) for k in w_base)
    # adapter B: what this round trained, on top of base + A (random, non-zero B matrices)
    start = AutoModelForCausalLM.from_pretrained(tiny_char_base)
    start.load_state_dict(w_start)
    torch.manual_seed(0)
    peft = get_peft_model(start, PeftLoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft.save_pretrained(tmp_path / "b")
    w_expected = _weights(peft.merge_and_unload())  # base + A + B

    merged = _weights(merged_for_save(info, tmp_path / "b", torch.float32))
    assert merged.keys() == w_expected.keys()
    for k in merged:
        assert torch.allclose(merged[k], w_expected[k], atol=1e-6), k
    assert _lora_delta(w_start, merged, 2)  # what the merge added on top of base + A is B alone


@pytest.mark.slow
def test_two_process_lora_merge_keeps_the_starting_adapter(tmp_path, tiny_char_base) -> None:
    """The whole path: a 2-process torchrun (gloo, CPU) LoRA training from an adapter checkpoint, merge policy, saves
    base + A + B: every weight differs from base + A by one rank-r update (B), not by B - A."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    a_dir = _adapter_a(tmp_path, tiny_char_base)
    cfg = StudentConfig(model=str(tiny_char_base), mode="lora", num_gpus=2, lr=1e-2, per_device_batch_size=4,
                        grad_accum=1, max_steps=3, warmup_ratio=0.0, max_length=64, lr_scheduler="constant",
                        save_minutes=0, lora=LoraConfig(r=2, alpha=4, dropout=0.0, between_rounds="merge"))
    res = train_student(cfg, student_fact_examples(2), a_dir, tmp_path / "b", progress=False)
    assert res.metrics["world_size"] == 2
    assert json.loads((res.path / "lion_student.json").read_text())["kind"] == "full"
    base = AutoModelForCausalLM.from_pretrained(tiny_char_base)
    w_base = _weights(base)
    w_start = _weights(PeftModel.from_pretrained(base, str(a_dir)).merge_and_unload())
    saved = _weights(AutoModelForCausalLM.from_pretrained(res.path))
    assert _lora_delta(w_start, saved, 2)
    assert not _lora_delta(w_base, saved, 2)  # the earlier round's adapter is in the saved student
