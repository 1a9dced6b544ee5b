"""Supervised fine-tuning of the student on (instruction, teacher answer) pairs: full, LoRA or QLoRA.

    python -m lion.student.train --config CFG.yaml --data train.jsonl --init-from BASE_OR_PREV --out DIR
    python -m lion.student.train SPEC.json     # one process of a launched job (torchrun/accelerate/srun), any node

Python: ``train_student(cfg.student, examples, init_from, out_dir, seed=round_no) -> TrainResult``.

Built on the transformers ``Trainer`` (so FSDP / DeepSpeed configs, gradient checkpointing, ``report_to``, seeds
and the progress bar are the Trainer's own). The seed used is ``student.seed + seed``.

- ``mode: full`` trains every weight; ``lora`` trains a PEFT LoRA adapter (``lora.target_modules``, all linear
  layers by default); ``qlora`` loads the base in 4 bits (bitsandbytes, CUDA only) under the adapter.
- Between rounds (``lora.between_rounds``): ``merge`` (default) folds the adapter into the weights and saves a
  full model, so the next round starts a fresh adapter on an already improved model (each round's adapter stays a
  small correction, and every checkpoint is a plain model any backend loads). ``continue`` saves only the adapter
  (plus ``lion_student.json`` naming its base); the next round reloads it and keeps training the same adapter on
  the same frozen base (cheaper on disk; inference attaches it: PEFT for transformers, ``LoRARequest`` for vLLM).
- The checkpoint is written to ``OUT.tmp`` and renamed to ``OUT`` only when complete: a crash never leaves a
  half-written ``OUT``. It holds the tokenizer and ``lion_student.json`` (kind, base, metrics, and the training's
  fingerprint: a restart that finds this very training saved returns it without training again).
- Mid-training checkpoints (``student.save_steps`` / ``save_minutes`` / ``save_total_limit``) go to ``OUT.ckpt/``
  and a restarted training resumes from the last complete one (optimizer, scheduler, RNG, data position), in one
  process or under torchrun; ``OUT.ckpt/`` is removed once ``OUT`` is saved. See `lion.student.resume`.
- More than one GPU (``num_gpus > 1``), several nodes, FSDP or DeepSpeed: the training runs as a separate job
  (``student.launcher``: torchrun, torchrun_multinode, accelerate or a command such as srun) whose every process
  runs this module with the spec file written by launch.py; only rank 0 writes the checkpoint.
- Knobs that reach the Trainer: ``student.training_args`` (any other ``TrainingArguments`` key, checked against
  its fields), ``student.attn_implementation``; under FSDP the wrapped layer class comes from the model's
  ``_no_split_modules`` unless ``fsdp_config.transformer_layer_cls_to_wrap`` is set, activation checkpointing is
  FSDP's own (``fsdp_config.activation_checkpointing``, no redundant AllGather) and ``cpu_ram_efficient_loading``
  lets rank 0 alone read the weights. A full fine-tuning with ``bf16`` saves its checkpoint in bf16 (half the
  disk of fp32; the fp32 master weights exist only while training).
- When the training starts it logs what an optimizer step holds (rows, examples, tokens; `lion.student.batching`,
  also in the metrics); before `train_student` returns it frees the training's memory (`release_training_memory`),
  so vLLM can start on the same GPU next.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import StudentConfig
from ..errors import ConfigError, DataError
from ..layout import training_checkpoints
from .batching import batch_plan
from .checkpoint import META, CheckpointInfo, TrainResult, checkpoint_info
from .objectives import Objective, default_objective, objective_from_spec
from .resume import (
    Checkpoints,
    TrainingTally,
    counting_collator,
    meter_callback,
    save_arguments,
    tallied_trainer,
    training_fingerprint,
)
from .trainargs import OWN_ARGS, check_training_args  # noqa: F401 - part of this module's interface

log = logging.getLogger("lion.student")


def in_distributed_launch() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) >= 1 and "RANK" in os.environ


def needs_launch(cfg: StudentConfig) -> bool:
    """True when training must run under torchrun/accelerate (and we are not already inside such a launch)."""
    if in_distributed_launch():
        return False
    return (cfg.num_gpus > 1 or cfg.nnodes > 1 or bool(cfg.fsdp) or bool(cfg.deepspeed)
            or cfg.launcher in ("torchrun_multinode", "command") or bool(cfg.accelerate_config))


def train_student(
    cfg: StudentConfig,
    examples: list[dict[str, Any]],
    init_from: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    progress: bool = True,
    keep_model: bool = False,
    logging_dir: str | Path | None = None,
    objective: Objective | None = None,
) -> TrainResult:
    """Fine-tune the model at `init_from` on `examples` ([{"instruction", "input", "output"}] for SFT, the default
    `objective`; lion.student.objectives for others); save into `out_dir`.

    `logging_dir`: where the Trainer's TensorBoard events go (student.report_to: tensorboard); default: inside
    the checkpoint's `_trainer` folder."""
    out = Path(out_dir)
    objective = objective if objective is not None else default_objective(cfg)
    if needs_launch(cfg):
        done = _finished(out, _fingerprint(cfg, examples, init_from, seed, objective))
        if done is not None:  # saved before a crash that came before the caller noted it
            Checkpoints(training_checkpoints(out), "").remove()
            return TrainResult(out, done)
        from .launch import launch_training

        return launch_training(cfg, examples, init_from, out, seed=seed, logging_dir=logging_dir,
                               objective=objective.spec())
    return _train_here(cfg, examples, init_from, out, seed=seed, progress=progress, keep_model=keep_model,
                       logging_dir=logging_dir, objective=objective)


def _fingerprint(cfg: StudentConfig, examples: list[dict[str, Any]], init_from: str | Path, seed: int,
                 objective: Objective) -> str:
    """The training's identity; an SFT training's is what it was before objectives existed (saved runs resume)."""
    spec = objective.spec()
    rows = examples if spec.get("name") == "sft" else [{"objective": spec}, *examples]
    return training_fingerprint(cfg, rows, init_from, seed)


# --------------------------------------------------------------------------------------------- the run


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _all_sum(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def _attn_kwargs(cfg: StudentConfig) -> dict[str, Any]:
    """from_pretrained's attn_implementation, checked where it cannot work (flash-attn without CUDA or package)."""
    if cfg.attn_implementation == "auto":
        return {}
    if cfg.attn_implementation == "flash_attention_2":
        import importlib.util

        import torch

        if not torch.cuda.is_available():
            raise ConfigError("student.attn_implementation: flash_attention_2 needs a CUDA GPU; use sdpa here")
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("student.attn_implementation: flash_attention_2 needs the flash-attn package "
                              "(pip install flash-attn --no-build-isolation), or use sdpa")
    return {"attn_implementation": cfg.attn_implementation}


def attention_of(model: Any) -> str | None:
    """The attention implementation `model` runs (from_pretrained's resolution of attn_implementation)."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def wrap_classes(model_path: str) -> list[str]:
    """The decoder-layer classes FSDP should wrap: the model class's `_no_split_modules` (read from its config,
    no weights loaded), e.g. ["Qwen2DecoderLayer"] for Qwen2.5, ["LlamaDecoderLayer"] for Llama."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_path)
        cls = AutoModelForCausalLM._model_mapping[type(config)]
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"student.fsdp_config.transformer_layer_cls_to_wrap: cannot tell the layer class of "
                          f"{model_path!r} ({type(e).__name__}: {e}); set it") from None
    names = list(getattr(cls, "_no_split_modules", None) or [])
    if not names:
        raise ConfigError(f"student.fsdp_config.transformer_layer_cls_to_wrap: {cls.__name__} names no "
                          "_no_split_modules; set the decoder-layer class to wrap")
    return names


def fsdp_config(cfg: StudentConfig, model_path: str) -> dict[str, Any] | None:
    """TrainingArguments.fsdp_config: the user's, plus the wrap class, FSDP's activation checkpointing and
    cpu_ram_efficient_loading where the user left them unset. None without FSDP."""
    if not cfg.fsdp:
        return dict(cfg.fsdp_config) or None
    fc = dict(cfg.fsdp_config)
    if "min_num_params" not in fc and "transformer_layer_cls_to_wrap" not in fc:
        fc["transformer_layer_cls_to_wrap"] = wrap_classes(model_path)
    if cfg.gradient_checkpointing:
        fc.setdefault("activation_checkpointing", True)
    if cfg.cpu_ram_efficient_loading:
        fc.setdefault("cpu_ram_efficient_loading", True)
    return fc


def _load_model(cfg: StudentConfig, path: str, *, quantize: bool):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = _attn_kwargs(cfg)
    if quantize:
        if not torch.cuda.is_available():
            raise ConfigError("student.mode: qlora needs a CUDA GPU and bitsandbytes; use 'lora' on this machine")
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            raise ConfigError("student.mode: qlora needs the bitsandbytes package (pip install bitsandbytes)") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if cfg.bf16 else torch.float16,
        )
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    elif cfg.mode != "full" and cfg.bf16:
        kwargs["dtype"] = torch.bfloat16  # frozen base: no fp32 master copy needed
    else:
        kwargs["dtype"] = torch.float32  # full fine-tuning keeps fp32 weights; bf16 runs under autocast
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ConfigError(f"student.model: cannot load a model from {path!r}: {e}") from None


def starting_weights(info: CheckpointInfo, base: Any) -> Any:
    """The model a training starts from, given `base` (the loaded `info.base`): when `init_from` was an adapter
    checkpoint (`info.adapter`), that adapter folded into the weights. The one owner of that rule: the training
    (`_prepare_model`, except `between_rounds: continue`, which trains the adapter itself) and the merge on save
    (`merged_for_save`) both build on it, so a round's merged student keeps the earlier rounds' learning."""
    if info.adapter is None:
        return base
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(info.adapter)).merge_and_unload()


def merged_for_save(info: CheckpointInfo, adapter_dir: Path, dtype: Any) -> Any:
    """The full model a sharded or quantized LoRA training (merge policy) saves: its starting weights, loaded
    unquantised in `dtype` (`starting_weights`: the base with any adapter it started from folded in), with the
    adapter it trained (`adapter_dir`) merged on top."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    start = starting_weights(info, AutoModelForCausalLM.from_pretrained(info.base, dtype=dtype))
    return PeftModel.from_pretrained(start, str(adapter_dir)).merge_and_unload()


def _prepare_model(cfg: StudentConfig, init_from: str | Path):
    """The trainable model and a description of what it was built from."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model

    info = checkpoint_info(init_from)
    if cfg.mode == "full":  # an adapter checkpoint feeding full fine-tuning: folded in first
        return starting_weights(info, _load_model(cfg, info.base, quantize=False)), info
    quantize = cfg.mode == "qlora"
    base = _load_model(cfg, info.base, quantize=quantize)
    if quantize:
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if info.adapter is not None and cfg.lora.between_rounds == "continue":
        return PeftModel.from_pretrained(base, str(info.adapter), is_trainable=True), info
    base = starting_weights(info, base)  # merge policy, but handed an adapter: fold it in, then a fresh adapter
    lcfg = PeftLoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(base, lcfg), info


def _load_tokenizer(init_from: str | Path, base: str):
    from transformers import AutoTokenizer

    src = str(init_from)
    if not any((Path(src) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        src = base
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except OSError as e:
        raise ConfigError(f"student.model: cannot load a tokenizer from {src!r}: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _training_args(cfg: StudentConfig, out: Path, seed: int, progress: bool, model_path: str = "",
                   ckpt_dir: Path | None = None, grad_accum: int | None = None):
    """The Trainer's arguments; `out` names the wandb run, `ckpt_dir` holds the resumable checkpoints, `grad_accum`
    the accumulation of the training's `BatchPlan` (default: student.grad_accum)."""
    import torch
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    check_training_args(cfg.training_args)
    fsdp_cfg = fsdp_config(cfg, model_path)
    sdt = str(cfg.fsdp_config.get("state_dict_type", "FULL_STATE_DICT"))
    if cfg.fsdp and "FULL_STATE_DICT" not in sdt:
        raise ConfigError(f"student.fsdp_config.state_dict_type: must be FULL_STATE_DICT (got {sdt}) so that each "
                          "round's checkpoint is a plain model both inference backends load")
    warm: dict[str, Any]
    if "float" in str(fields["warmup_steps"].type) or "warmup_ratio" not in fields:
        warm = {"warmup_steps": cfg.warmup_ratio}  # transformers >= 5: a float < 1 is a ratio
    else:
        warm = {"warmup_ratio": cfg.warmup_ratio}
    ckpt = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    if cfg.gradient_checkpointing and not (fsdp_cfg or {}).get("activation_checkpointing"):
        warm[ckpt] = True  # under FSDP, fsdp_config.activation_checkpointing does it without a redundant AllGather
        warm[ckpt + "_kwargs"] = {"use_reentrant": False}
    return TrainingArguments(
        output_dir=str(ckpt_dir if ckpt_dir is not None else out / "_trainer"),  # checkpoint-N (lion.student.resume)
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=grad_accum or cfg.grad_accum or 1,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        bf16=cfg.bf16,
        torch_compile=cfg.torch_compile,
        fsdp=cfg.fsdp or "",
        fsdp_config=fsdp_cfg,
        deepspeed=cfg.deepspeed,
        report_to=cfg.report_targets(),
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        seed=seed,
        data_seed=seed,
        **save_arguments(cfg),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not progress,
        **warm,
        # wandb: each training its own run, named after its checkpoint (e.g. round_01-student)
        **({"run_name": f"{out.parent.name}-{out.name.removesuffix('.tmp')}"}
           if "wandb" in cfg.report_targets() and "run_name" not in cfg.training_args else {}),
        **cfg.training_args,
    )


def _heartbeat_callback(progress: bool):
    """A Trainer callback that beats (lion.logs) with the optimizer steps when progress bars are off."""
    from transformers import TrainerCallback

    from ..logs import heartbeat

    class Beat(TrainerCallback):
        def __init__(self) -> None:
            self.hb: Any = None

        def on_train_begin(self, args, state, control, **kw):
            # after a resume the trainer's state already holds the steps done before the crash: count from there
            if state.is_world_process_zero:
                self.hb = heartbeat("student training", state.max_steps or None, progress=progress,
                                    done=state.global_step, unit=" steps").start()

        def on_step_end(self, args, state, control, **kw):
            if self.hb is not None:
                self.hb.update(state.global_step - self.hb.done)

        def on_train_end(self, args, state, control, **kw):
            if self.hb is not None:
                self.hb.close()
                self.hb = None

    return Beat()


def _train_here(
    cfg: StudentConfig, examples: list[dict[str, Any]], init_from: str | Path, out: Path, *, seed: int, progress: bool,
    keep_model: bool = False, logging_dir: str | Path | None = None, objective: Objective | None = None,
) -> TrainResult:
    objective = objective if objective is not None else default_objective(cfg)
    rank0 = _rank() == 0
    fingerprint = _fingerprint(cfg, examples, init_from, seed, objective)
    ckpts = Checkpoints(training_checkpoints(out), fingerprint, keep=cfg.save_total_limit)
    done = _finished(out, fingerprint)
    if done is not None:  # saved before a crash that came before the caller noted it: not trained again
        _barrier()
        if rank0:
            ckpts.remove()
        return TrainResult(out, done)
    tmp = out.with_name(out.name + ".tmp")
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    t_start = time.perf_counter()
    info = checkpoint_info(init_from)
    tokenizer = _load_tokenizer(init_from, info.base)
    the_seed = cfg.seed + seed
    dataset, data_figures = objective.build(tokenizer, cfg, examples, the_seed)
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    plan = batch_plan(cfg, *objective.row_sizes(dataset), world)
    if rank0:
        log.info(plan.line(cfg))
    if cfg.fsdp and cfg.cpu_ram_efficient_loading:
        os.environ.setdefault("ACCELERATE_USE_FSDP", "true")  # from_pretrained loads on rank 0 only (meta elsewhere)
    # the arguments first: under FSDP they set what from_pretrained reads (cpu_ram_efficient_loading)
    args = _training_args(cfg, tmp, the_seed, progress, info.base, ckpt_dir=ckpts.dir, grad_accum=plan.grad_accum)
    if cfg.fsdp:
        _ = args.device  # sets up the process group, which from_pretrained's rank-0-only loading checks for
    from transformers import set_seed

    set_seed(the_seed)  # a fresh LoRA adapter is initialised from the global RNG: the same seed, the same adapter
    model, info = _prepare_model(cfg, init_from)
    model.config.use_cache = False  # training: no KV cache (also lets packed position ids take effect)
    # the collator follows the attention the model really runs (FlashAttention: packed micro-batches flattened)
    collator = objective.collator(tokenizer, cfg, attention_of(model))
    resume = ckpts.prepare() if cfg.save_steps or cfg.save_minutes else None
    tally = TrainingTally.from_json(ckpts.tally_of(resume)) if resume is not None else TrainingTally()
    if resume is not None:
        tally.resumed_at.append(int(resume.name.rsplit("-", 1)[1]))
        if rank0:
            print(f"resuming the training from {resume}", flush=True)
    meter = meter_callback(tally, ckpts if args.save_strategy != "no" else None, cfg)
    with _env("TENSORBOARD_LOGGING_DIR", str(logging_dir) if logging_dir is not None else None):
        trainer = objective.trainer_class(tallied_trainer(tally))(
            model=model, args=args, train_dataset=dataset, data_collator=counting_collator(collator),
            processing_class=tokenizer, callbacks=[meter, _heartbeat_callback(progress)])
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout either
    from .threads import cpu_threads

    with cpu_threads(model, cfg.cpu_threads):
        out_train = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    if "wandb" in cfg.report_targets() and rank0:
        import wandb

        if wandb.run is not None:  # the Trainer's run of this round: the next round's training gets its own
            wandb.finish()
    seconds = time.perf_counter() - t_start
    train_s = sum(tally.step_s)
    warm = _warm(tally.step_s)
    tokens, supervised, padded, steady_tok, steady_s = _all_sum([
        float(tally.tokens), float(tally.supervised), float(tally.padded),
        float(sum(tally.step_tokens[warm:])), float(sum(tally.step_s[warm:])),
    ])
    steady_s /= world  # each rank timed the same wall clock
    metrics: dict[str, Any] = {
        "mode": cfg.mode,
        **data_figures,
        "batch": plan.to_metrics(),  # what an optimizer step holds: rows, examples, tokens (lion.student.batching)
        "steps": int(out_train.global_step),
        "train_loss": tally.loss_sum / tally.loss_steps if tally.loss_steps else float(out_train.training_loss),
        "train_loss_first": tally.losses[0] if tally.losses else None,
        "train_loss_last": tally.losses[-1] if tally.losses else None,
        "losses": tally.losses,
        "tokens": int(tokens),
        "supervised_tokens": int(supervised),
        "padded_tokens": int(padded),
        "seconds": round(seconds, 3),
        "train_seconds": round(train_s, 3),
        "tokens_per_s": round(tokens / train_s, 1) if train_s > 0 else None,
        "steady_tokens_per_s": round(steady_tok / steady_s, 1) if steady_s > 0 else None,
        "world_size": world,
        "seed": the_seed,
        "resumed_at": tally.resumed_at,  # steps a restarted training continued from (its checkpoints)
        "checkpoints": tally.checkpoints,  # mid-training checkpoints written
        **objective.metrics(),
    }
    _save(cfg, trainer, tokenizer, info, tmp, metrics, init_from, fingerprint)
    if rank0:
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        # the Trainer's logs stay with the student when a tracker reads them from there
        keep_logs = cfg.report_targets() and logging_dir is None
        ckpts.remove(keep_logs_in=out / "_trainer" if keep_logs else None)
    _barrier()
    kept = trainer.model if keep_model else None
    del trainer, model, out_train  # the last references of this frame; the rest are cycles
    release_training_memory(compiled=cfg.torch_compile)
    return TrainResult(out, metrics, kept)


def release_training_memory(*, compiled: bool = False) -> None:
    """Free what a finished in-process training held, before this process runs inference on the same GPU.

    The trainer, its accelerator and the model stay alive after the last reference is dropped: they form
    reference cycles (e.g. accelerate's mixed-precision wrapper binds `model.forward` to the model), freed only by
    a garbage collection. Collected first, their tensors go back to the CUDA caching allocator, and
    `empty_cache` returns its blocks to the device, so a vLLM engine started next (vLLM >= 0.9 checks the free
    memory against gpu_memory_utilization x total) sees the GPU free but for this process's CUDA context (vLLM's
    engine itself runs in a worker process whenever this one used CUDA, `lion.student.vllm_backend`).
    `compiled`: the training ran under torch.compile, whose caches also hold the compiled model."""
    import gc

    import torch

    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class _env:
    """Set (or, with None, leave alone) one environment variable for the duration of a `with` block."""

    def __init__(self, name: str, value: str | None) -> None:
        self.name, self.value, self.old = name, value, os.environ.get(name)

    def __enter__(self) -> None:
        if self.value is not None:
            os.environ[self.name] = self.value

    def __exit__(self, *exc: object) -> None:
        if self.value is None:
            return
        if self.old is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self.old


def cast_checkpoint(path: Path, dtype: str = "bfloat16") -> int:
    """Rewrite the floating-point weights of the safetensors checkpoint at `path` in `dtype` (one shard at a time);
    fix config.json's dtype and the shard index's total size. Returns the bytes saved."""
    import torch
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    saved = 0
    for shard in sorted(path.glob("*.safetensors")):
        tensors = load_file(str(shard))
        if all(not t.is_floating_point() or t.dtype == target for t in tensors.values()):
            continue
        before = sum(t.numel() * t.element_size() for t in tensors.values())
        cast = {k: (t.to(target) if t.is_floating_point() else t).contiguous() for k, t in tensors.items()}
        saved += before - sum(t.numel() * t.element_size() for t in cast.values())
        del tensors
        tmp = shard.with_name(shard.name + ".tmp")
        save_file(cast, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, shard)
    if not saved:
        return 0
    config = path / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        for k in ("dtype", "torch_dtype"):
            if k in c or k == "dtype":
                c[k] = dtype
        config.write_text(json.dumps(c, indent=2) + "\n")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        idx = json.loads(index.read_text())
        if isinstance(idx.get("metadata", {}).get("total_size"), int):
            idx["metadata"]["total_size"] -= saved
        index.write_text(json.dumps(idx, indent=2) + "\n")
    return saved


def _finished(out: Path, fingerprint: str) -> dict[str, Any] | None:
    """The metrics of `out` when it is this very training's saved student, else None."""
    try:
        meta = json.loads((out / META).read_text())
    except (OSError, ValueError):
        return None
    return meta.get("metrics") if isinstance(meta, dict) and meta.get("fingerprint") == fingerprint else None


def _warm(step_s: list[float]) -> int:
    """Steps left out of the steady-state figure (allocation, kernel selection, first-batch work)."""
    n = len(step_s)
    return 0 if n < 3 else min(3, n // 4 or 1)


def _save(cfg: StudentConfig, trainer: Any, tokenizer: Any, info: Any, tmp: Path, metrics: dict, init_from,
          fingerprint: str = "") -> None:
    import torch

    rank0 = _rank() == 0
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    model = trainer.model
    if hasattr(model, "config"):
        model.config.use_cache = True
    meta: dict[str, Any] = {"mode": cfg.mode, "init_from": str(init_from), "metrics": metrics,
                            "fingerprint": fingerprint}
    if cfg.mode == "full":
        trainer.save_model(str(tmp))
        meta["kind"] = "full"
    elif cfg.lora.between_rounds == "continue":
        trainer.save_model(str(tmp))  # the adapter + tokenizer
        meta.update(kind="adapter", base=str(info.base))
    elif world == 1 and cfg.mode == "lora" and not cfg.deepspeed and not cfg.fsdp:
        merged = trainer.accelerator.unwrap_model(model).merge_and_unload()
        merged.config.use_cache = True
        if rank0:
            merged.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        meta["kind"] = "full"
    else:  # sharded or quantized: save the adapter, then merge into a freshly loaded unquantized base on rank 0
        adapter_dir = tmp / "_adapter"
        trainer.save_model(str(adapter_dir))
        _barrier()
        if rank0:
            merged = merged_for_save(info, adapter_dir, torch.bfloat16 if cfg.bf16 else torch.float32)
            merged.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            shutil.rmtree(adapter_dir)
        meta["kind"] = "full"
    if rank0 and cfg.bf16 and meta["kind"] == "full":
        # full fine-tuning trains fp32 master weights under bf16 autocast; the round's student is kept in bf16
        meta["saved_dtype"] = "bfloat16"
        cast_checkpoint(tmp, "bfloat16")
    if rank0:
        (tmp / META).write_text(json.dumps(meta, indent=1))
    _barrier()


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.student.train", description="Fine-tune the student once.")
    p.add_argument("spec_path", nargs="?", type=Path, metavar="SPEC",
                   help="a training spec written by lion.student.launch (what every process of a launched job runs)")
    p.add_argument("--spec", type=Path, help="the same, as an option")
    p.add_argument("--config", "-c", help="YAML config (its student section is used)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data", type=Path, help="JSONL rows with instruction, input (optional), output")
    p.add_argument("--init-from", help="base model dir / hub id, or the previous round's student dir")
    p.add_argument("--out", type=Path, help="checkpoint directory to write")
    p.add_argument("--seed", type=int, default=0)
    return p


def student_config_from_dict(data: dict[str, Any]) -> StudentConfig:
    from ..config import _build  # the config module's strict builder (unknown keys and bad types are errors)

    cfg = _build(StudentConfig, data, "student")
    cfg.check("student")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    from ..logs import setup_logging
    from ..records import read_jsonl

    args = make_parser().parse_args(argv)
    setup_logging("info")  # the batch plan line when the training starts (lion.student)
    spec_path = args.spec or args.spec_path
    if spec_path is not None:
        if not spec_path.is_file():
            raise DataError(f"{spec_path}: no such training spec (on a worker node: is the run directory shared?)")
        spec = json.loads(spec_path.read_text())
        cfg = student_config_from_dict(spec["cfg"])
        examples = list(read_jsonl(Path(spec["examples"])))
        _train_here(cfg, examples, spec["init_from"], Path(spec["out_dir"]), seed=spec["seed"],
                    progress=_rank() == 0, logging_dir=spec.get("logging_dir"),
                    objective=objective_from_spec(spec.get("objective"), cfg))
        return 0
    if not (args.config and args.data and args.init_from and args.out):
        raise ConfigError("give --config, --data, --init-from and --out (or --spec)")
    from ..config import load_config

    cfg = load_config(args.config, args.overrides).student
    if not args.data.is_file():
        raise DataError(f"{args.data}: no such file")
    examples = list(read_jsonl(args.data))
    res = train_student(cfg, examples, args.init_from, args.out, seed=args.seed)
    print(json.dumps({"path": str(res.path), **{k: v for k, v in res.metrics.items() if k != "losses"}}))
    return 0


if __name__ == "__main__":
    from ..errors import cli_main

    cli_main(main)

