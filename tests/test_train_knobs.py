"""Training knobs reach the Trainer: student.training_args (checked against TrainingArguments), attn_implementation,
the FSDP wrap class from the model's _no_split_modules, FSDP's own activation checkpointing, cpu_ram_efficient_loading,
and round students saved in bf16 when trained with bf16.

    python -m pytest -q tests/test_train_knobs.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import student_fact_examples

from lion.config import StudentConfig, config_from_dict
from lion.errors import ConfigError
from lion.student.train import _load_model, _training_args, cast_checkpoint, fsdp_config, train_student, wrap_classes


def _cfg(**student):
    return config_from_dict({"student": {"model": "tiny", **student}, "pools": {"train_seed": "x"}}).student


def test_training_args_are_checked_against_the_trainer_fields() -> None:
    ok = _cfg(training_args={"max_grad_norm": 0.5, "optim": "adamw_torch", "adam_beta2": 0.98})
    assert ok.training_args["max_grad_norm"] == 0.5
    with pytest.raises(ConfigError, match=r"student.training_args.max_grad_nrom: not a transformers.TrainingArguments "
                                          r"field \(similar: max_grad_norm"):
        _cfg(training_args={"max_grad_nrom": 1.0})
    with pytest.raises(ConfigError, match=r"student.training_args.learning_rate: lion sets this itself; use student.lr"):
        _cfg(training_args={"learning_rate": 1e-4})


def test_training_args_and_fsdp_settings_reach_the_training_arguments(tiny_char_base, tmp_path: Path) -> None:
    cfg = StudentConfig(model=str(tiny_char_base), training_args={"max_grad_norm": 0.25, "adam_beta2": 0.97})
    args = _training_args(cfg, tmp_path, 0, False, str(tiny_char_base))
    assert (args.max_grad_norm, args.adam_beta2) == (0.25, 0.97)
    fsdp = StudentConfig(model=str(tiny_char_base), fsdp="full_shard auto_wrap", gradient_checkpointing=True)
    fc = fsdp_config(fsdp, str(tiny_char_base))
    assert fc == {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "activation_checkpointing": True,
                  "cpu_ram_efficient_loading": True}
    args = _training_args(fsdp, tmp_path, 0, False, str(tiny_char_base))
    assert args.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert args.fsdp_config["activation_checkpointing"] is True
    assert not args.activation_checkpointing  # FSDP's own checkpointing, not the Trainer's (no redundant AllGather)
    own = StudentConfig(model="m", fsdp="full_shard auto_wrap", cpu_ram_efficient_loading=False,
                        fsdp_config={"transformer_layer_cls_to_wrap": ["MyLayer"]})
    assert fsdp_config(own, "m") == {"transformer_layer_cls_to_wrap": ["MyLayer"]}  # the user's choice wins
    assert fsdp_config(StudentConfig(model="m"), "m") is None


def test_wrap_class_comes_from_the_model_class(tmp_path: Path) -> None:
    from transformers import Qwen2Config

    Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                intermediate_size=64, vocab_size=100).save_pretrained(tmp_path / "qwen")
    assert wrap_classes(str(tmp_path / "qwen")) == ["Qwen2DecoderLayer"]  # not the LlamaDecoderLayer of old configs
    with pytest.raises(ConfigError, match="transformer_layer_cls_to_wrap: cannot tell the layer class"):
        wrap_classes(str(tmp_path / "nothing"))


def test_attn_implementation_reaches_from_pretrained(tiny_char_base) -> None:
    model = _load_model(StudentConfig(model=str(tiny_char_base), attn_implementation="eager"), str(tiny_char_base),
                        quantize=False)
    assert model.config._attn_implementation == "eager"
    sdpa = _load_model(StudentConfig(model=str(tiny_char_base), attn_implementation="sdpa"), str(tiny_char_base),
                       quantize=False)
    assert sdpa.config._attn_implementation == "sdpa"
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="flash_attention_2 needs a CUDA GPU"):
            _load_model(StudentConfig(model="m", attn_implementation="flash_attention_2"), "m", quantize=False)


def _float_dtypes(path: Path) -> set[str]:
    from safetensors import safe_open

    out = set()
    for shard in path.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            out |= {str(f.get_tensor(k).dtype) for k in f.keys() if f.get_tensor(k).is_floating_point()}
    return out


def test_full_fine_tuning_with_bf16_saves_a_bf16_student(tiny_char_base, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    kw = dict(model=str(tiny_char_base), lr=1e-3, per_device_batch_size=4, grad_accum=1, max_steps=2, max_length=64)
    fp32 = train_student(StudentConfig(**kw), student_fact_examples(2), tiny_char_base, tmp_path / "fp32",
                         progress=False).path
    bf16 = train_student(StudentConfig(**kw, bf16=True), student_fact_examples(2), tiny_char_base, tmp_path / "bf16",
                         progress=False).path
    assert _float_dtypes(fp32) == {"torch.float32"} and _float_dtypes(bf16) == {"torch.bfloat16"}
    size = lambda p: sum(f.stat().st_size for f in p.glob("*.safetensors"))  # noqa: E731
    assert size(bf16) < 0.6 * size(fp32)
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((bf16 / "lion_student.json").read_text())["saved_dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(bf16)
    assert next(model.parameters()).dtype.is_floating_point
    # the next round continues from it (full fine-tuning loads it back as fp32 master weights)
    again = train_student(StudentConfig(**kw, bf16=True), student_fact_examples(2), bf16, tmp_path / "next",
                          progress=False)
    assert again.metrics["steps"] == 2


def test_cast_checkpoint_of_a_sharded_model_keeps_the_index_right(tiny_char_base, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_char_base, dtype=torch.float32)
    model.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    saved = cast_checkpoint(tmp_path / "m", "bfloat16")
    new_index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert saved > 0 and new_index["metadata"]["total_size"] == index["metadata"]["total_size"] - saved
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        a, b = model(ids).logits, back(ids).logits
    assert torch.allclose(a, b, atol=0.05) and _float_dtypes(tmp_path / "m") == {"torch.bfloat16"}
    assert cast_checkpoint(tmp_path / "m", "bfloat16") == 0  # already bf16: nothing rewritten
