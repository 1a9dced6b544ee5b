"""A smaller student from a pretrained model: keep a subset of its decoder layers (depth pruning).

    python -m lion.student.prune SRC DST --keep 8            # or --keep 0,4,8,12,16,20,24,29

Python: ``keep_indices(keep, n_layers) -> list[int]``, ``prune_layers(src, dst, keep) -> dict``.

Minitron and DistilBERT-style initialisation start a student from some of the teacher's own layers: the
embeddings, the final norm, the LM head and the kept decoder layers are copied unchanged, the others dropped.
``student.init.keep_layers`` is either a count ``k`` (k layers evenly spread over the depth, the first and the
last always among them: 8 of SmolLM2's 30 are 0, 4, 8, 12, 17, 21, 25, 29) or an explicit list of layer indices
(kept in the model's order). The pruned model is saved as an ordinary folder (with the tokenizer and
``lion_init.json`` saying what was kept from what); each kept attention layer is renumbered (``layer_idx``) so the
KV cache of generation addresses the new positions, and per-layer config lists (``layer_types``) are cut alike.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

MARKER = "lion_init.json"
KEY = "student.init.keep_layers"


def keep_indices(keep: int | Sequence[int], n_layers: int, key: str = KEY) -> list[int]:
    """The decoder-layer indices to keep, in order; ConfigError naming `key` when they do not fit the model."""
    if isinstance(keep, bool):
        raise ConfigError(f"{key}: expected a count or a list of layer indices, got {keep!r}")
    if isinstance(keep, int):
        if not 1 <= keep <= n_layers:
            raise ConfigError(f"{key}: must be between 1 and the model's {n_layers} layers, got {keep}")
        if keep == 1:
            return [0]
        return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})
    idx = list(keep)
    if not idx:
        raise ConfigError(f"{key}: an empty list keeps no layer")
    bad = [i for i in idx if not 0 <= i < n_layers]
    if bad:
        raise ConfigError(f"{key}: layer indices must be between 0 and {n_layers - 1} (the model has {n_layers}), "
                          f"got {bad}")
    if len(set(idx)) != len(idx):
        raise ConfigError(f"{key}: repeats a layer index: {idx}")
    return sorted(idx)


def _decoder_layers(model: Any) -> tuple[Any, str]:
    """(the ModuleList of decoder layers, its attribute path) of a causal LM (LLaMA, Qwen, Mistral, GPT-2 ...)."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        node = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if node is not None:
            return node, path
    raise ConfigError(f"{KEY}: cannot find the decoder layers of {type(model).__name__} (supported: model.layers, "
                      "model.decoder.layers, transformer.h, gpt_neox.layers)")


def prune_model(model: Any, idx: Sequence[int]) -> Any:
    """Keep only the decoder layers `idx` of `model` (in place); returns the model."""
    import torch

    layers, path = _decoder_layers(model)
    kept = torch.nn.ModuleList([layers[i] for i in idx])
    for new, layer in enumerate(kept):
        for module in layer.modules():  # attention modules index the KV cache by their layer number
            if hasattr(module, "layer_idx") and isinstance(module.layer_idx, int):
                module.layer_idx = new
    parent = model
    *head, last = path.split(".")
    for part in head:
        parent = getattr(parent, part)
    setattr(parent, last, kept)
    cfg = model.config
    n_old = len(layers)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(getattr(cfg, name, None), int):
            setattr(cfg, name, len(idx))
    for name in ("layer_types",):  # per-layer lists (sliding vs full attention) follow the kept layers
        value = getattr(cfg, name, None)
        if isinstance(value, list) and len(value) == n_old:
            setattr(cfg, name, [value[i] for i in idx])
    return model


def prune_layers(src: str | Path, dst: str | Path, keep: int | Sequence[int]) -> dict[str, Any]:
    """Save into `dst` the model at `src` with only the decoder layers `keep` names (atomically); returns what
    `lion_init.json` records."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(dst)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(src))
    except OSError as e:
        raise ConfigError(f"student.model: cannot load a model from {str(src)!r}: {e}") from None
    layers, _ = _decoder_layers(model)
    n_old = len(layers)
    idx = keep_indices(keep, n_old)
    before = sum(p.numel() for p in model.parameters())
    prune_model(model, idx)
    info = {"source": str(src), "keep_layers": keep if isinstance(keep, int) else list(keep), "kept": idx,
            "layers_before": n_old, "layers": len(idx), "parameters_before": before,
            "parameters": sum(p.numel() for p in model.parameters())}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def pruned_is_current(dst: Path, src: str, keep: int | Sequence[int]) -> bool:
    """True when `dst` holds a complete pruning of `src` with the same `keep`."""
    marker = dst / MARKER
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text())
    return info.get("source") == str(src) and info.get("keep_layers") == (keep if isinstance(keep, int) else list(keep))


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.student.prune", description="Keep some decoder layers of a model.")
    p.add_argument("src", help="model folder (a GGUF spec is converted first: lion.student.gguf)")
    p.add_argument("dst", type=Path, help="folder to write")
    p.add_argument("--keep", required=True, help="a count (evenly spread) or comma-separated layer indices")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .gguf import resolve_model

    args = make_parser().parse_args(argv)
    try:
        keep: int | list[int] = [int(x) for x in args.keep.split(",")] if "," in args.keep else int(args.keep)
    except ValueError:
        raise ConfigError(f"--keep: expected a count or comma-separated indices, got {args.keep!r}") from None
    info = prune_layers(resolve_model(args.src, key="src"), args.dst, keep)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    from ..errors import cli_main

    cli_main(main)
