"""Student training on tiny models: full fine-tuning, LoRA (merge / continue), checkpoints, continuation.

    python -m pytest -q tests/test_student_train.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import student_fact_examples

from lion.config import LoraConfig, StudentConfig
from lion.errors import DataError
from lion.student.checkpoint import checkpoint_info
from lion.student.train import train_student


def _cfg(base: Path, **kw) -> StudentConfig:
    opts = dict(model=str(base), lr=3e-3, per_device_batch_size=8, grad_accum=1, max_steps=25, warmup_ratio=0.0,
                max_length=64, logging_steps=5, lr_scheduler="constant")
    opts.update(kw)
    return StudentConfig(**opts)


def _logits(model, tok):
    import torch

    ids = torch.tensor([[tok.bos_token_id] + tok("### Instruction:\nName a fruit.", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_full_fine_tuning_loss_falls_and_reload_gives_identical_logits(tmp_path, tiny_char_base) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = train_student(_cfg(tiny_char_base), student_fact_examples(), tiny_char_base, tmp_path / "r1",
                        progress=False, keep_model=True)
    m = res.metrics
    assert m["train_loss_last"] < m["train_loss_first"] - 0.5
    assert m["n_examples"] == 400 and m["n_dropped"] == 0 and m["steps"] == 25 and m["tokens"] > 0
    assert res.path == tmp_path / "r1" and not (tmp_path / "r1.tmp").exists()
    meta = json.loads((res.path / "lion_student.json").read_text())
    assert meta["kind"] == "full" and meta["metrics"]["steps"] == 25
    tok = AutoTokenizer.from_pretrained(res.path)
    reloaded = AutoModelForCausalLM.from_pretrained(res.path).eval()
    trained = res.model.eval()
    assert torch.equal(_logits(trained, tok), _logits(reloaded, tok))
    base = AutoModelForCausalLM.from_pretrained(tiny_char_base).eval()
    assert not torch.allclose(_logits(base, tok), _logits(reloaded, tok))
    # continuing from this checkpoint starts where round 1 ended, not from scratch
    res2 = train_student(_cfg(tiny_char_base, max_steps=5, logging_steps=1), student_fact_examples(), res.path,
                         tmp_path / "r2", progress=False)
    assert res2.metrics["train_loss_first"] < m["train_loss_first"] - 0.5
    assert json.loads((tmp_path / "r2" / "lion_student.json").read_text())["init_from"] == str(res.path)


def test_lora_trains_only_adapter_weights_and_continue_keeps_the_adapter(tmp_path, tiny_char_base) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    lora = LoraConfig(r=8, alpha=16, dropout=0.0, between_rounds="continue")
    cfg = _cfg(tiny_char_base, mode="lora", lora=lora, lr=1e-2)
    res = train_student(cfg, student_fact_examples(), tiny_char_base, tmp_path / "a1", progress=False, keep_model=True)
    assert res.metrics["train_loss_last"] < res.metrics["train_loss_first"] - 0.15
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_char_base).named_parameters())
    changed_lora, frozen = 0, 0
    for name, p in res.model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
            changed_lora += int("lora_B" in name and p.abs().sum().item() > 0)  # B starts at zero
        else:
            assert not p.requires_grad
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p.detach(), base[key].detach()), name
            frozen += 1
    assert changed_lora > 0 and frozen == len(base) - 0  # every base weight is untouched (tied head counted once)
    info = checkpoint_info(res.path)
    assert info.adapter == res.path and info.base == str(tiny_char_base)
    assert (res.path / "adapter_config.json").is_file() and not (res.path / "config.json").is_file()
    # round 2 continues the same adapter: its first loss is the end of round 1, and the base is still the base
    res2 = train_student(_cfg(tiny_char_base, mode="lora", lora=lora, lr=1e-2, max_steps=3, logging_steps=1),
                         student_fact_examples(), res.path, tmp_path / "a2", progress=False)
    assert res2.metrics["train_loss_first"] < res.metrics["train_loss_first"] - 0.15
    assert checkpoint_info(tmp_path / "a2").base == str(tiny_char_base)


def test_lora_merge_saves_a_full_model_loadable_without_peft(tmp_path, tiny_char_base) -> None:
    from transformers import AutoModelForCausalLM

    cfg = _cfg(tiny_char_base, mode="lora", max_steps=5, lora=LoraConfig(r=4, alpha=8, between_rounds="merge"))
    res = train_student(cfg, student_fact_examples(5), tiny_char_base, tmp_path / "m1", progress=False)
    assert json.loads((res.path / "lion_student.json").read_text())["kind"] == "full"
    assert not (res.path / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(res.path)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert checkpoint_info(res.path).adapter is None


def test_nothing_fits_is_a_data_error_and_leaves_no_checkpoint(tmp_path, tiny_char_base) -> None:
    rows = [{"instruction": "q" * 100, "output": "a"}]
    with pytest.raises(DataError, match="student.max_length"):
        train_student(_cfg(tiny_char_base), rows, tiny_char_base, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_trains_from_a_jsonl_file(tmp_path, tiny_char_base, capsys) -> None:
    from lion.records import write_jsonl
    from lion.student.train import main

    write_jsonl(tmp_path / "train.jsonl", student_fact_examples(2))
    (tmp_path / "cfg.yaml").write_text(
        f"student:\n  model: {tiny_char_base}\n  max_steps: 2\n  per_device_batch_size: 4\n  grad_accum: 1\n"
        "  max_length: 64\n  packing: true\npools:\n  train_seed: x\n"
    )
    assert main(["--config", str(tmp_path / "cfg.yaml"), "--data", str(tmp_path / "train.jsonl"),
                 "--init-from", str(tiny_char_base), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["packing"] is True and Path(summary["path"]).is_dir()


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_gradient_checkpointing_trains(tmp_path, tiny_char_base, mode) -> None:
    """Gradient checkpointing is switched on in the model (full and LoRA) and training still logs finite losses."""
    cfg = _cfg(tiny_char_base, mode=mode, max_steps=3, logging_steps=1, gradient_checkpointing=True,
               lora=LoraConfig(r=4, alpha=8, between_rounds="continue"))
    res = train_student(cfg, student_fact_examples(3), tiny_char_base, tmp_path / mode, progress=False,
                        keep_model=True)
    inner = res.model.get_base_model() if mode == "lora" else res.model
    assert any(getattr(mod, "gradient_checkpointing", False) for mod in inner.modules())
    losses = res.metrics["losses"]
    assert res.metrics["steps"] == 3 and losses and all(math.isfinite(loss) for loss in losses)  # no NaN, no inf
