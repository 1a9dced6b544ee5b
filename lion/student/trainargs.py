"""`student.training_args`: the TrainingArguments keys a user may pass through, checked against transformers' fields.

    from lion.student.trainargs import check_training_args     # config check (lion.config) and lion.student.train

A key lion sets itself from one of its own student keys is refused, naming the key to set instead; a key that is no
TrainingArguments field is refused, naming close ones. Imports transformers only when called.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

# TrainingArguments keys that lion sets from its own student keys: set those instead
OWN_ARGS = {
    "output_dir": "run_dir (each round's student folder)", "per_device_train_batch_size": "student.per_device_batch_size",
    "gradient_accumulation_steps": "student.grad_accum", "learning_rate": "student.lr",
    "num_train_epochs": "student.epochs", "max_steps": "student.max_steps", "lr_scheduler_type": "student.lr_scheduler",
    "weight_decay": "student.weight_decay", "bf16": "student.bf16", "torch_compile": "student.torch_compile",
    "fsdp": "student.fsdp", "fsdp_config": "student.fsdp_config", "deepspeed": "student.deepspeed",
    "report_to": "student.report_to", "logging_steps": "student.logging_steps", "seed": "student.seed",
    "data_seed": "student.seed", "warmup_ratio": "student.warmup_ratio", "warmup_steps": "student.warmup_ratio",
    "gradient_checkpointing": "student.gradient_checkpointing",
    "activation_checkpointing": "student.gradient_checkpointing", "save_strategy": "(lion saves each round itself)",
    "use_cpu": "(lion uses the GPU when there is one)", "disable_tqdm": "--no-progress",
}


def check_training_args(args: dict[str, Any], key: str = "student.training_args") -> None:
    """Every key of `student.training_args` must be a TrainingArguments field that lion does not set itself."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    for name in args:
        if name in OWN_ARGS:
            raise ConfigError(f"{key}.{name}: lion sets this itself; use {OWN_ARGS[name]}")
        if name not in fields or not fields[name].init:
            close = sorted(f for f in fields if f.startswith(name[:4]))[:6]
            hint = f" (similar: {', '.join(close)})" if close else ""
            raise ConfigError(f"{key}.{name}: not a transformers.TrainingArguments field{hint}")
