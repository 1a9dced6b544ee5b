"""GPU memory per device of the student's training, before any GPU is rented (used by `python -m lion.plan`).

    python -m lion.memplan --config configs/lion-7b-fsdp.yaml [--gpu-gb 80]

The model's shape comes from its config: `student.model: tiny` (built from `student.tiny`), a local folder or a hub
id whose config.json is on disk, else a LLaMA shape read off the name ("llama-7b", "...13b"...). The model is built
on the meta device (accelerate's `init_empty_weights`, nothing is allocated) and measured with accelerate's
estimator (`calculate_maximum_sizes`: parameter bytes and the largest layer), then per device:

- states: full fine-tuning keeps fp32 weights, fp32 gradients and AdamW's two fp32 moments (16 bytes a parameter);
  LoRA a frozen base (2 bytes in bf16, else 4) plus 16 bytes per adapter parameter; QLoRA a 4-bit base (~0.53
  bytes per linear weight, 2 for the rest). FSDP (`full_shard`: everything; `shard_grad_op`: gradients and
  optimizer) and DeepSpeed ZeRO (stage 1: optimizer; 2: + gradients; 3: + weights) divide what they shard by the
  number of processes; FSDP also holds the gathered copy of the largest layers (two, with prefetch);
- activations of a micro-batch (per_device_batch_size x max_length, or pack_length when packing): per layer and
  token (8 hidden + 4 intermediate) values (SDPA attention keeps no seq x seq matrix); with gradient checkpointing
  only each layer's input plus one layer's full set;
- logits: batch x length x vocab, in the compute dtype plus the fp32 copy of the loss and its gradient;
- 1.5 GB of CUDA context and allocator slack.
When the total does not fit `--gpu-gb`, it says what would (the Lion README's out-of-memory advice): gradient
checkpointing, a smaller per-device batch with more accumulation (same effective batch), LoRA, QLoRA, more shards.
These are estimates (not yet checked against measured GPU peaks in this project); they tell a plan that cannot
fit from one that can.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import StudentConfig, add_config_args, load_config
from .errors import ConfigError

GB = 1024**3
OVERHEAD = 1.5 * GB
# LLaMA shapes by size, for a model named like "llama-7b" whose config is not on disk
LLAMA_SHAPES = {7: (4096, 32, 32, 11008), 13: (5120, 40, 40, 13824), 30: (6656, 60, 52, 17920),
                33: (6656, 60, 52, 17920), 65: (8192, 80, 64, 22016), 70: (8192, 80, 64, 28672)}


@dataclass
class ModelShape:
    params: int
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    largest_layer: int  # parameters of the largest no-split module (a decoder layer, or the embeddings)
    linear: int  # parameters inside linear layers (the LM head excluded)
    adapter: int  # LoRA parameters for the configured rank and target modules
    source: str


@dataclass
class MemEstimate:
    mode: str
    processes: int
    sharding: str
    parts: dict[str, float] = field(default_factory=dict)  # bytes per device, by what holds them

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GB:.2f}" for k, v in self.parts.items())
        return f"{self.total / GB:.1f} GB per device ({parts} GB)"


def _tiny_config(sc: StudentConfig) -> Any:
    from transformers import LlamaConfig

    from .student.tiny import char_vocab

    t = {"vocab": "char", "hidden": 128, "layers": 4, "heads": 4, "max_position_embeddings": 2048,
         "bpe_vocab_size": 1000, **sc.tiny}
    hidden = int(t["hidden"])
    inter = t.get("intermediate") or max(8, int(round(hidden * 8 / 3 / 8)) * 8)
    vocab = len(char_vocab()) if t["vocab"] == "char" else int(t["bpe_vocab_size"])
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                       num_hidden_layers=int(t["layers"]), num_attention_heads=int(t["heads"]),
                       num_key_value_heads=int(t["heads"]), tie_word_embeddings=True)


def _named_llama(name: str) -> Any:
    m = re.search(r"(\d+)\s*b\b", name.lower().replace("_", "-"))
    if not m or int(m.group(1)) not in LLAMA_SHAPES:
        return None
    from transformers import LlamaConfig

    hidden, layers, heads, inter = LLAMA_SHAPES[int(m.group(1))]
    return LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads)


def model_config(sc: StudentConfig) -> tuple[Any, str]:
    """(transformers config, where it came from); ConfigError naming student.model when there is none. With
    student.init.keep_layers, the config of the pruned student."""
    config, where = _base_config(sc)
    if sc.init.keep_layers is not None and sc.model != "tiny":
        from .student.prune import keep_indices

        config.num_hidden_layers = len(keep_indices(sc.init.keep_layers, config.num_hidden_layers))
        where += f", {config.num_hidden_layers} layers kept (student.init.keep_layers)"
    return config, where


def _base_config(sc: StudentConfig) -> tuple[Any, str]:
    if sc.model == "tiny":
        return _tiny_config(sc), "student.tiny"
    from transformers import AutoConfig

    from .student.gguf import gguf_config, is_gguf

    if is_gguf(sc.model):  # read from the converted folder, or the file's metadata: nothing converted here
        return gguf_config(sc.model, sc.init.cache_dir), f"the GGUF file {sc.model}"
    try:
        return AutoConfig.from_pretrained(sc.model, local_files_only=True), f"{sc.model}/config.json"
    except Exception:  # noqa: BLE001 - not on disk: fall back to the name
        pass
    named = _named_llama(Path(sc.model).name)
    if named is not None:
        return named, f"a LLaMA shape read off the name {Path(sc.model).name!r} (its config.json is not on disk)"
    raise ConfigError(f"student.model: no config.json at {sc.model!r} and no LLaMA size in its name; the memory "
                      "estimate needs the model's config (download it, or point student.model at a local copy)")


def model_shape(sc: StudentConfig) -> ModelShape:
    """Build the model on the meta device and measure it (accelerate's estimator)."""
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils import calculate_maximum_sizes
    from transformers import AutoModelForCausalLM

    config, source = model_config(sc)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    total_bytes, (largest_bytes, _) = calculate_maximum_sizes(model)
    params = total_bytes // 4
    targets = sc.lora.target_modules
    linear = adapter = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        linear += mod.in_features * mod.out_features
        if targets == "all-linear" or (isinstance(targets, list) and name.rsplit(".", 1)[-1] in targets):
            adapter += sc.lora.r * (mod.in_features + mod.out_features)
    get = lambda *names: next(getattr(config, n) for n in names if hasattr(config, n))  # noqa: E731
    return ModelShape(params=int(params), hidden=int(get("hidden_size", "n_embd")),
                      layers=int(get("num_hidden_layers", "n_layer")), vocab=int(config.vocab_size),
                      intermediate=int(get("intermediate_size", "n_inner") or 4 * get("hidden_size", "n_embd")),
                      largest_layer=int(largest_bytes // 4), linear=linear, adapter=adapter, source=source)


def _deepspeed_stage(path: str | None) -> int:
    if not path:
        return 0
    try:
        return int(json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage", 0))
    except (OSError, ValueError, AttributeError):
        return 2  # the file is not here: assume ZeRO-2, the common choice


def estimate(sc: StudentConfig, shape: ModelShape) -> MemEstimate:
    """Bytes per device for training with `sc` (see the module docstring for the model)."""
    n = sc.num_gpus * sc.nnodes if sc.num_gpus > 1 else 1
    fsdp = sc.fsdp.split()
    stage = _deepspeed_stage(sc.deepspeed)
    if "full_shard" in fsdp or "hybrid_shard" in fsdp or stage == 3:
        shard_w, shard_g, shard_o = n, n, n
    elif "shard_grad_op" in fsdp or stage == 2:
        shard_w, shard_g, shard_o = 1, n, n
    elif stage == 1:
        shard_w, shard_g, shard_o = 1, 1, n
    else:
        shard_w = shard_g = shard_o = 1
    sharding = (f"FSDP {' '.join(fsdp)}" if fsdp else f"DeepSpeed ZeRO-{stage}" if stage else "none") + f" over {n}"
    p, parts = shape.params, {}
    act = 2 if sc.bf16 else 4
    if sc.mode == "full":
        parts["weights"] = 4 * p / shard_w
        parts["gradients"] = 4 * p / shard_g
        parts["optimizer"] = 8 * p / shard_o
    else:
        base = 0.53 * shape.linear + 2 * (p - shape.linear) if sc.mode == "qlora" else (2 if sc.bf16 else 4) * p
        parts["frozen base"] = base / shard_w
        parts["adapter+grads+optimizer"] = 16 * shape.adapter / shard_o
    if fsdp and shard_w > 1:
        parts["gathered layers"] = 2 * shape.largest_layer * act
    tokens = sc.per_device_batch_size * (sc.pack_length or sc.max_length if sc.packing else sc.max_length)
    per_token_layer = (8 * shape.hidden + 4 * shape.intermediate) * act
    if sc.gradient_checkpointing:
        parts["activations"] = tokens * (shape.layers * shape.hidden * act + per_token_layer)
    else:
        parts["activations"] = tokens * shape.layers * per_token_layer
    parts["logits"] = tokens * shape.vocab * (act + 8)
    parts["cuda overhead"] = OVERHEAD
    return MemEstimate(sc.mode, n, sharding, parts)


def alternatives(sc: StudentConfig, shape: ModelShape, capacity: float) -> list[tuple[str, MemEstimate]]:
    """Changes that would make training fit `capacity` bytes per device: single changes first, then the
    README's advice applied one after another until it fits."""
    steps: list[tuple[str, dict[str, Any]]] = []
    if not sc.gradient_checkpointing:
        steps.append(("student.gradient_checkpointing: true", {"gradient_checkpointing": True}))
    b, acc = sc.per_device_batch_size, sc.grad_accum
    while b > 1:
        b, acc = max(1, b // 2), acc * 2
        if acc:
            steps.append((f"student.per_device_batch_size: {b} with student.grad_accum: {acc} (same effective batch)",
                          {"per_device_batch_size": b, "grad_accum": acc}))
        else:  # grad_accum 0: derived from student.examples_per_step, which keeps the examples per step
            steps.append((f"student.per_device_batch_size: {b} (grad_accum follows from student.examples_per_step)",
                          {"per_device_batch_size": b}))
    if sc.mode == "full":
        steps.append(("student.mode: lora", {"mode": "lora"}))
    if sc.mode in ("full", "lora") and not sc.fsdp:
        steps.append(("student.mode: qlora", {"mode": "qlora"}))
    if sc.num_gpus > 1 and (sc.fsdp or sc.deepspeed):
        steps.append((f"student.num_gpus: {sc.num_gpus * 2} (more shards)", {"num_gpus": sc.num_gpus * 2}))
    elif sc.num_gpus > 1:
        steps.append(('student.fsdp: "full_shard auto_wrap"', {"fsdp": "full_shard auto_wrap"}))
    out: list[tuple[str, MemEstimate]] = []
    for what, change in steps:
        e = estimate(dataclasses.replace(sc, **change), shape)
        if e.total <= capacity:
            out.append((what, e))
    if out:
        return out
    cur, whats = sc, []
    for what, change in steps:
        cur = dataclasses.replace(cur, **change)
        whats.append(what)
        e = estimate(cur, shape)
        if e.total <= capacity:
            return [(" + ".join(whats), e)]
    return []


def memory_report(sc: StudentConfig, gpu_gb: float) -> dict[str, Any]:
    """The estimate as a dict (for lion.plan): fits, per-device GB by part, and the advice when it does not fit."""
    shape = model_shape(sc)
    e = estimate(sc, shape)
    capacity = gpu_gb * GB
    report: dict[str, Any] = {
        "model": sc.model, "shape_from": shape.source, "params": shape.params, "mode": sc.mode,
        "processes": e.processes, "sharding": e.sharding, "per_device_gb": round(e.total / GB, 2),
        "parts_gb": {k: round(v / GB, 3) for k, v in e.parts.items()}, "gpu_gb": gpu_gb,
        "fits": e.total <= capacity, "advice": [],
    }
    if not report["fits"]:
        report["advice"] = [{"change": what, "per_device_gb": round(alt.total / GB, 2)}
                            for what, alt in alternatives(sc, shape, capacity)]
    report["text"] = _text(report, e)
    return report


def _text(r: dict[str, Any], e: MemEstimate) -> str:
    head = (f"student: {r['mode']} training of {r['model']} ({r['params'] / 1e6:,.1f}M parameters; shape from "
            f"{r['shape_from']}), sharding {r['sharding']}: ~{e.describe()} — "
            + (f"fits in {r['gpu_gb']:g} GB" if r["fits"] else f"does NOT fit in {r['gpu_gb']:g} GB"))
    if r["fits"]:
        return head
    if not r["advice"]:
        return head + "\n  nothing in the out-of-memory advice makes it fit: a larger GPU or a smaller model"
    return head + "\n" + "\n".join(f"  would fit: {a['change']} -> ~{a['per_device_gb']:.1f} GB" for a in r["advice"])


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.memplan", description=(__doc__ or "").split("\n\n")[0])
    add_config_args(p)
    p.add_argument("--gpu-gb", type=float, default=80.0, help="memory of one GPU in GB (default 80)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    r = memory_report(cfg.student, args.gpu_gb)
    print(json.dumps({k: v for k, v in r.items() if k != "text"}) if args.json else r["text"])
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
