"""vLLM backend of student inference: offline `LLM`, LoRA via `LoRARequest`, tensor and data parallelism.

    python -m lion.student.vllm_backend --worker SPEC.json     # internal: one data-parallel engine

Called by `lion.student.infer.generate` with token ids (tokenised by our own rule, so vLLM sees exactly what the
student was trained on). vLLM strips the prompt and stops at EOS itself.

- ``tensor_parallel`` GPUs per engine (``tensor_parallel_size``).
- ``data_parallel`` engines: prompts are dealt round-robin to the engines; each engine runs in its own process
  with ``CUDA_VISIBLE_DEVICES`` set to its own group of ``tensor_parallel`` GPUs; results come back in the
  original order. With ``data_parallel: 1`` the engine runs in this process.
- Prompts go to an engine ``chunk_size`` at a time; each chunk's answers are handed to the caller (``on_answer``)
  as soon as the chunk is done (a data-parallel engine appends them to a result file the parent reads as it
  grows), so a caller that saves them loses at most a chunk per engine in a crash.
- One dtype for both backends: ``dtype`` is `infer.resolve_dtype` (auto = float32 on CPU, where vLLM's own auto
  would run a float32 checkpoint in bfloat16). Sampling: ``generation_config: ignore`` runs the engine with
  ``generation_config="vllm"`` and explicit neutral SamplingParams (repetition_penalty 1, no top_k / min_p), so only
  what student.infer states applies; ``inherit`` runs it with ``generation_config="auto"`` and starts from the
  engine's defaults (`LLM.get_default_sampling_params`: the checkpoint's generation_config.json), student.infer's
  keys over them. The checkpoint's extra stop tokens (generation_config eos_token_id) apply either way, as in
  transformers. ``finish_reason == "length"`` marks an answer cut at max_new_tokens.
- ``engine_args`` reach ``vllm.LLM`` as they are (e.g. ``enforce_eager: true``: no torch.compile or CUDA graphs).
- A LoRA adapter is served without merging: ``enable_lora=True``, ``max_lora_rank`` = the adapter's rank
  (``adapter_config.json``) rounded up to a rank vLLM accepts (``VLLM_LORA_RANKS``: r = 12 is served as 16), and a
  ``LoRARequest("student", 1, path)`` on every request.
- ``max_model_len``: ``student.infer.max_model_len``, else ``student.max_length`` (or the longest prompt, if
  longer) + ``max_new_tokens``, capped at the model's ``max_position_embeddings``: a 7B model with a 32K or
  128K context would otherwise reserve KV-cache memory for a length no prompt here has.
- A fresh process: when this process has already used CUDA (e.g. it has just trained the student in-process),
  the engine runs in a worker process even with one engine, since the memory the training left in this
  process's CUDA caching allocator would fail vLLM's free-memory check at ``gpu_memory_utilization``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import InferConfig
from ..errors import ConfigError, LionError
from .completion import Completion, OnAnswer, resolve_dtype

logger = logging.getLogger("lion.student")

# the LoRA ranks vLLM's engine accepts for max_lora_rank
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


# vLLM's neutral values of the sampling settings a checkpoint's generation_config.json may set (student.infer states
# none of them): sent explicitly under generation_config: ignore, so no default of the engine or server applies
NEUTRAL_SAMPLING = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                    "frequency_penalty": 0.0}


def sampling_kwargs(cfg: InferConfig, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our InferConfig -> vllm.SamplingParams keyword arguments. `defaults`: the engine's default sampling
    parameters (the checkpoint's generation_config.json), used with generation_config: inherit under our keys."""
    greedy = cfg.temperature == 0.0
    base = dict(defaults or {}) if cfg.generation_config == "inherit" else dict(NEUTRAL_SAMPLING)
    return {
        **base,
        "n": 1,
        "temperature": 0.0 if greedy else cfg.temperature,
        "top_p": 1.0 if greedy else cfg.top_p,
        "max_tokens": cfg.max_new_tokens,
        "seed": cfg.seed,
        "skip_special_tokens": True,
    }


def completion_of(output: Any) -> Completion:
    """One vLLM CompletionOutput as our Completion (the stop token, which vLLM keeps in token_ids, left out)."""
    tokens = list(output.token_ids or [])
    if output.finish_reason == "stop" and tokens and not isinstance(getattr(output, "stop_reason", None), str):
        tokens = tokens[:-1]
    return Completion(output.text, truncated=output.finish_reason == "length", tokens=tuple(tokens))


def lora_rank(adapter: str | Path) -> int:
    cfg_path = Path(adapter) / "adapter_config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{adapter}: not a LoRA adapter directory (no adapter_config.json)")
    return int(json.loads(cfg_path.read_text()).get("r", 16))


def vllm_lora_rank(r: int) -> int:
    """The smallest rank vLLM accepts as max_lora_rank that can serve an adapter of rank r."""
    for allowed in VLLM_LORA_RANKS:
        if r <= allowed:
            return allowed
    raise ConfigError(f"student.lora.r: {r} is above the largest LoRA rank vLLM serves ({VLLM_LORA_RANKS[-1]}); "
                      "use a smaller rank, lora.between_rounds: merge, or student.infer.backend: transformers")


def model_max_positions(model: str) -> int | None:
    """The model's own context length (config.json max_position_embeddings), None when it cannot be read."""
    try:
        from transformers import AutoConfig

        return int(getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", 0)) or None
    except Exception:  # noqa: BLE001 - only a cap: vLLM reads the config itself and says what is wrong
        return None


def default_max_model_len(model: str, cfg: InferConfig, *, max_length: int | None, longest_prompt: int) -> int | None:
    """max_model_len when student.infer.max_model_len is 0: the training length (or the longest prompt) plus the
    answer budget, capped at the model's own context; None when nothing is known (vLLM then uses the model's)."""
    if cfg.max_model_len:
        return cfg.max_model_len
    if max_length is None and not longest_prompt:
        return None
    need = max(max_length or 0, longest_prompt) + cfg.max_new_tokens
    cap = model_max_positions(model)
    return min(need, cap) if cap else need


def engine_kwargs(model: str, cfg: InferConfig, *, tokenizer: str | None, adapter: str | Path | None,
                  max_model_len: int | None = None) -> dict[str, Any]:
    """Our InferConfig -> vllm.LLM keyword arguments for one engine (`max_model_len`: see default_max_model_len)."""
    kw: dict[str, Any] = {
        "model": model,
        "tokenizer": tokenizer or model,
        "tensor_parallel_size": cfg.tensor_parallel,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "dtype": resolve_dtype(cfg),
        "seed": cfg.seed,
        "generation_config": "auto" if cfg.generation_config == "inherit" else "vllm",
        **cfg.engine_args,
    }
    if cfg.max_model_len or max_model_len:
        kw["max_model_len"] = cfg.max_model_len or max_model_len
    if adapter is not None:
        kw.update(enable_lora=True, max_lora_rank=vllm_lora_rank(lora_rank(adapter)), max_loras=1)
    return kw


def run_engine(model: str, ids: list[list[int]], cfg: InferConfig, *, tokenizer: str | None,
               adapter: str | Path | None, progress: bool, max_model_len: int | None = None,
               on_answer: OnAnswer | None = None) -> list[str]:
    """One vLLM engine in this process answers every prompt (token ids) in order, `cfg.chunk_size` prompts per
    `generate` call; `on_answer(i, completion)` is called for each answer of a chunk as soon as the chunk is done."""
    import vllm

    llm = vllm.LLM(**engine_kwargs(model, cfg, tokenizer=tokenizer, adapter=adapter, max_model_len=max_model_len))
    defaults = None
    if cfg.generation_config == "inherit":  # the checkpoint's generation_config.json, as vLLM reads it
        engine_defaults = llm.get_default_sampling_params()
        defaults = {k: getattr(engine_defaults, k) for k in NEUTRAL_SAMPLING}
        logger.info("vLLM: the checkpoint's sampling defaults apply (student.infer.generation_config inherit): %s",
                    defaults)
    params = vllm.SamplingParams(**sampling_kwargs(cfg, defaults))
    lora = None
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("student", 1, str(adapter))
    texts: list[str] = []
    for start in range(0, len(ids), cfg.chunk_size):
        chunk = ids[start : start + cfg.chunk_size]
        outs = llm.generate([{"prompt_token_ids": p} for p in chunk], params, use_tqdm=progress, lora_request=lora)
        for k, o in enumerate(outs):
            answer = completion_of(o.outputs[0])
            texts.append(answer.text)
            if on_answer is not None:
                on_answer(start + k, answer)
    return texts


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_groups(data_parallel: int, tensor_parallel: int, gpus: Sequence[str]) -> list[list[str]]:
    need = data_parallel * tensor_parallel
    if len(gpus) < need:
        raise ConfigError(
            f"student.infer: data_parallel={data_parallel} x tensor_parallel={tensor_parallel} needs {need} GPUs, "
            f"{len(gpus)} visible"
        )
    return [list(gpus[k * tensor_parallel : (k + 1) * tensor_parallel]) for k in range(data_parallel)]


def shard(n: int, parts: int) -> list[list[int]]:
    """Round-robin indices 0..n-1 over `parts` engines (balances long and short prompts)."""
    return [list(range(k, n, parts)) for k in range(parts)]


def cuda_in_use() -> bool:
    """Has this process initialised CUDA (trained or run a model on the GPU)? Then its caching allocator may hold
    memory that vLLM's start-up check would count as taken."""
    import sys as _sys

    torch = _sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


class _Tail:
    """Reads the complete lines an engine process appends to its result file, as they come."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest = path, 0, b""

    def new_rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        return [json.loads(x) for x in lines if x.strip()]


def generate_vllm(model: str, ids: list[list[int]], cfg: InferConfig, *, adapter: str | Path | None = None,
                  tokenizer: str | None = None, progress: bool = True, max_length: int | None = None,
                  on_answer: OnAnswer | None = None) -> list[str]:
    """Answers for token-id prompts with vLLM: one engine here, or `data_parallel` worker processes (also one worker
    when this process already holds CUDA memory). `max_length`: the student's training length (max_model_len).
    `on_answer(i, completion)` as each chunk finishes, in whichever engine."""
    longest = max((len(p) for p in ids), default=0)
    max_model_len = default_max_model_len(model, cfg, max_length=max_length, longest_prompt=longest)
    if cfg.data_parallel == 1 and not cuda_in_use():
        return run_engine(model, ids, cfg, tokenizer=tokenizer, adapter=adapter, progress=progress,
                          max_model_len=max_model_len, on_answer=on_answer)
    if cfg.data_parallel == 1:
        logger.info("vLLM engine in a fresh process: this one has used CUDA (training), and the memory its allocator "
                 "keeps would fail vLLM's gpu_memory_utilization check")
    # one engine: it sees the GPUs this process sees; several: each its own group of tensor_parallel GPUs
    groups: list[list[str] | None] = ([None] if cfg.data_parallel == 1 else
                                      list(gpu_groups(cfg.data_parallel, cfg.tensor_parallel, visible_gpus())))
    parts = shard(len(ids), cfg.data_parallel)
    out: list[str | None] = [None] * len(ids)
    root = str(Path(__file__).resolve().parents[2])
    with tempfile.TemporaryDirectory(prefix="lion-vllm-") as work:
        procs = []
        for k, (group, part) in enumerate(zip(groups, parts, strict=True)):
            if not part:
                continue
            spec = Path(work) / f"engine{k}.json"
            result = Path(work) / f"engine{k}.out.jsonl"
            one = {**cfg.__dict__, "data_parallel": 1}
            spec.write_text(json.dumps({"model": model, "tokenizer": tokenizer, "adapter": str(adapter) if adapter else None,
                                        "cfg": one, "ids": [ids[i] for i in part], "result": str(result),
                                        "progress": progress and k == 0, "max_model_len": max_model_len}))
            env = dict(os.environ) if group is None else dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(group))
            env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            log = open(Path(work) / f"engine{k}.log", "w+")
            p = subprocess.Popen([sys.executable, "-m", "lion.student.vllm_backend", "--worker", str(spec)],
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
            procs.append((k, part, p, log, _Tail(result)))

        ended: set[int] = set()

        def collect(k: int, part: list[int], tail: _Tail) -> None:
            """Hand on the answers engine k wrote so far; note its end line."""
            for row in tail.new_rows():
                if "end" in row:
                    ended.add(k)
                    continue
                i = part[row["i"]]
                out[i] = row["text"]
                if on_answer is not None:
                    tokens = row.get("tokens")
                    on_answer(i, Completion(row["text"], truncated=bool(row.get("truncated")),
                                            tokens=None if tokens is None else tuple(tokens)))

        running = list(procs)
        while running:  # answers are handed on while the engines work, so a crash here loses at most a chunk
            time.sleep(0.2)
            for item in list(running):
                k, part, p, _, tail = item
                if p.poll() is not None:
                    running.remove(item)
                else:
                    collect(k, part, tail)
        failures = []
        for k, part, p, log, tail in procs:
            rc = p.wait()
            collect(k, part, tail)
            log.seek(0)
            last = "".join(collections.deque(log, maxlen=20))
            log.close()
            if rc != 0 or k not in ended:
                gpus = "visible" if groups[k] is None else ",".join(groups[k] or [])
                failures.append(f"engine {k} (GPUs {gpus}) exit status {rc}:\n{last}")
        if failures:
            raise LionError("vLLM data-parallel inference failed: " + "\n".join(failures))
    return [o if o is not None else "" for o in out]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.student.vllm_backend", description="One vLLM engine (internal).")
    p.add_argument("--worker", required=True, type=Path, help="spec JSON written by generate_vllm")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    spec = json.loads(args.worker.read_text())
    cfg = InferConfig(**spec["cfg"])
    with open(spec["result"], "a", encoding="utf-8") as out:

        def emit(i: int, answer: Completion) -> None:  # one line per answer, flushed as it comes
            row = {"i": i, "text": answer.text, "truncated": answer.truncated,
                   "tokens": None if answer.tokens is None else list(answer.tokens)}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()

        texts = run_engine(spec["model"], spec["ids"], cfg, tokenizer=spec["tokenizer"], adapter=spec["adapter"],
                           progress=spec["progress"], max_model_len=spec.get("max_model_len"), on_answer=emit)
        out.write(json.dumps({"end": len(texts)}) + "\n")
    return 0


if __name__ == "__main__":
    from ..errors import cli_main

    cli_main(main)
