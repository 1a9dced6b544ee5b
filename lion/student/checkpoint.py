"""Where a student's weights are: the base model, and the round checkpoints (full model or LoRA adapter).

    from lion.student.checkpoint import resolve_base_model, checkpoint_info

A round checkpoint directory written by `lion.student.train` holds ``lion_student.json``::

    {"kind": "full" | "adapter", "base": "<base model dir or hub id, for adapters>", "mode": ..., "metrics": {...}}

- ``full``: a complete Hugging Face model + tokenizer (full fine-tuning, or LoRA merged into the weights).
- ``adapter``: a PEFT LoRA adapter + tokenizer; ``base`` names the model the adapter applies to
  (``student.lora.between_rounds: continue``). Both inference backends load it: transformers attaches the
  adapter with PEFT, vLLM passes it as a ``LoRARequest`` without merging.
A plain PEFT adapter directory (``adapter_config.json``, no ``lion_student.json``) is recognised too.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

META = "lion_student.json"


@dataclass
class TrainResult:
    """What a training produced: the saved checkpoint, its figures, and (keep_model=True) the model in memory."""

    path: Path
    metrics: dict[str, Any]
    model: Any = field(default=None, repr=False)


@dataclass
class CheckpointInfo:
    base: str  # model dir / hub id holding the full weights
    adapter: Path | None  # LoRA adapter dir applied on top of `base`, or None
    meta: dict[str, Any]


def checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Describe `path`: a full model (dir or hub id) or an adapter directory on top of a base model."""
    p = Path(path)
    meta: dict[str, Any] = {}
    if (p / META).is_file():
        meta = json.loads((p / META).read_text())
    if meta.get("kind") == "adapter" or (p / "adapter_config.json").is_file() and not (p / "config.json").is_file():
        base = meta.get("base")
        if not base and (p / "adapter_config.json").is_file():
            base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ConfigError(f"{p}: a LoRA adapter directory that does not name its base model")
        return CheckpointInfo(base=str(base), adapter=p, meta=meta)
    return CheckpointInfo(base=str(path), adapter=None, meta=meta)


def resolve_base_model(cfg: Any, tiny_dir: str | Path) -> Path | str:
    """The base model of `cfg` (a StudentConfig) as `from_pretrained` takes it: `model`; a GGUF file converted
    once into the cache (lion.student.gguf); for "tiny" a tiny model built once into `tiny_dir` (the run's
    `RunLayout.base_model`). With `init.keep_layers`, the model pruned to those layers, saved once into `tiny_dir`
    (lion.student.prune)."""
    init = getattr(cfg, "init", None)
    keep = getattr(init, "keep_layers", None)
    if cfg.model != "tiny":
        from .gguf import resolve_model

        source = resolve_model(cfg.model, getattr(init, "cache_dir", None))
        if keep is None:
            return source
        from .prune import prune_layers, pruned_is_current

        out = Path(tiny_dir)
        if not pruned_is_current(out, source, keep):
            prune_layers(source, out, keep)
        return out
    from .tiny import TINY_OPTIONS, build_tiny

    if keep is not None:
        raise ConfigError("student.init.keep_layers: not for student.model: tiny (set student.tiny.layers)")
    for key in cfg.tiny:
        if key not in TINY_OPTIONS:
            raise ConfigError(f"student.tiny.{key}: unknown option (options: {', '.join(TINY_OPTIONS)})")
    out = Path(tiny_dir)
    meta = out / "lion_tiny.json"
    if meta.is_file():
        return out
    if out.exists():  # a leftover without the completion marker: rebuild
        shutil.rmtree(out)
    try:
        return build_tiny(out, **cfg.tiny)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"student.tiny: {e}") from None
