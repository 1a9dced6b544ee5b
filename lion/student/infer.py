"""Student inference: formatted prompts in, completions out, with a transformers or a vLLM backend.

    python -m lion.student.infer --model RUN/round_01/student --data prompts.jsonl --out answers.jsonl [--config CFG]

Python: ``generate(model_path, prompts, cfg.student.infer, adapter=None) -> list[str | None]`` (prompts already
formatted with `lion.student.data.format_prompt`; one completion per prompt, in order; None = skipped), or a
`StudentSession` that keeps the model loaded across batches (discrimination answers the Cache Pool chunk by chunk).

- ``backend: auto`` picks vLLM when ``import vllm`` works and CUDA is present, else transformers.
- Both backends tokenise a prompt the same way as training does (`data.encode_prompt`: BOS + prompt), stop at EOS,
  strip the prompt from the output and honour ``max_new_tokens``; ``temperature: 0`` is greedy.
- Both decode in one dtype (`resolve_dtype`: ``student.infer.dtype``, auto = bfloat16 on CUDA, float32 on CPU) with
  the sampling ``student.infer`` states and nothing hidden: the checkpoint's generation_config.json sampling settings
  (repetition_penalty, top_k, ...) apply only with ``generation_config: inherit`` (`student_generation_config`).
- Each answer comes as a `Completion`: its text, and whether it was cut at ``max_new_tokens`` (no stop token within
  them), which `lion.answers` records and discrimination counts.
- transformers: prompts sorted by length (longest first), batches of ``batch_size``, left padding; its greedy
  output equals one-prompt-at-a-time greedy output. A LoRA adapter is attached with PEFT, not merged.
- vLLM: see `lion.student.vllm_backend` (offline ``LLM``, ``LoRARequest``, tensor and data parallelism).
- A prompt that does not fit the student's context with a full answer (prompt tokens + ``max_new_tokens`` over
  the model's position limit, or vLLM's ``max_model_len``) is skipped, never truncated: its result is None and
  the caller is told why (``on_skip``); `lion.answers` records it, and the pair is excluded from judging.
- ``model_path`` may be an adapter checkpoint (``lion_student.json`` kind ``adapter``): its base is loaded and
  the adapter attached.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import InferConfig
from ..errors import ConfigError, DataError
from .checkpoint import checkpoint_info
from .completion import Completion, OnAnswer, resolve_dtype  # noqa: F401 - also this module's interface
from .data import encode_prompt

log = logging.getLogger("lion.student")


def inference_settings(cfg: InferConfig, backend: str | None = None) -> dict[str, Any]:
    """What decided the student's answers, for the record (discrimination.json, the evaluation): the backend, the
    dtype it resolved to (None: a server's own), whether the checkpoint's sampling settings applied, the sampling."""
    backend = backend or pick_backend(cfg, quiet=True)
    return {"backend": backend, "dtype": None if backend == "server" else resolve_dtype(cfg),
            "generation_config": cfg.generation_config, "temperature": cfg.temperature,
            "top_p": cfg.top_p if cfg.temperature else None, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}


def pick_backend(cfg: InferConfig, *, quiet: bool = False) -> str:
    """The backend to use; with `auto`, vLLM when it imports and CUDA is present (the choice and why is logged)."""
    if cfg.backend != "auto":
        return cfg.backend
    import torch

    has_vllm, has_cuda = importlib.util.find_spec("vllm") is not None, torch.cuda.is_available()
    backend = "vllm" if has_vllm and has_cuda else "transformers"
    if backend == "vllm":
        why = "vllm is installed and CUDA is available"
    elif not has_vllm:
        why = "vllm is not installed" + ("" if has_cuda else " and no CUDA GPU is visible")
    else:
        why = "no CUDA GPU is visible"
    if not quiet:
        log.info("student.infer.backend auto: %s (%s)", backend, why)
    return backend


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _same_tokenizer(a: str | Path, b: str | Path) -> bool:
    """Two folders hold the same tokenizer (tokenizer.json byte for byte)."""
    fa, fb = Path(a) / "tokenizer.json", Path(b) / "tokenizer.json"
    return fa.is_file() and fb.is_file() and fa.read_bytes() == fb.read_bytes()


def load_tokenizer(model_path: str | Path, base: str):
    from transformers import AutoTokenizer

    src = str(model_path) if _has_tokenizer(Path(model_path)) else base
    tok = AutoTokenizer.from_pretrained(src)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_prompt_tokenizer(model_path: str | Path):
    """The tokenizer that formats prompts for the student at `model_path` (its own, else its base model's)."""
    return load_tokenizer(model_path, checkpoint_info(model_path).base)


def context_length(base: str, cfg: InferConfig) -> int | None:
    """How many tokens (prompt + answer) the student can attend to: vLLM's max_model_len when set, else the model
    config's position limit (max_position_embeddings, n_positions, ...); None when the config names none."""
    if cfg.max_model_len:
        return cfg.max_model_len
    from transformers import AutoConfig

    try:
        mc = AutoConfig.from_pretrained(base)
    except (OSError, ValueError):
        return None
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        n = getattr(mc, name, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def too_long(n_prompt: int, cfg: InferConfig, limit: int | None) -> str | None:
    """Why a prompt of `n_prompt` tokens is not answered (None: it is): it and a full answer must fit the context."""
    if limit is None or n_prompt + cfg.max_new_tokens <= limit:
        return None
    return (f"prompt of {n_prompt} tokens + max_new_tokens {cfg.max_new_tokens} exceeds the student's context of "
            f"{limit} tokens")


def generate(
    model_path: str | Path,
    prompts: list[str],
    cfg: InferConfig,
    *,
    adapter: str | Path | None = None,
    progress: bool = True,
    on_answer: OnAnswer | None = None,
    on_skip: Callable[[int, str], None] | None = None,
    max_length: int | None = None,
) -> list[str | None]:
    """Completions of `prompts` (prompt stripped, stopped at EOS) by the model at `model_path` (+ `adapter`).

    `on_answer(i, completion)` is called for each prompt as soon as its answer exists (per batch with transformers,
    per `chunk_size` prompts with vLLM), so a caller can save answers as they come and resume after a crash.
    A prompt that cannot be answered within the student's context (`too_long`) is not generated and never
    truncated: its result is None and `on_skip(i, reason)` records why. `max_length` (student.max_length) sizes
    vLLM's max_model_len when student.infer.max_model_len is 0."""
    if not prompts:
        return []
    with StudentSession(model_path, cfg, adapter=adapter, progress=progress, max_length=max_length) as session:
        return session.generate(prompts, on_answer=on_answer, on_skip=on_skip)


class StudentSession:
    """One student answering batch after batch: the transformers backend loads the model once (on the first
    `generate`) and keeps it until `close`; vLLM builds its engine(s) per `generate` call, so give it big batches
    (or serve the student: `backend: server`, lion.student.serve)."""

    def __init__(self, model_path: str | Path, cfg: InferConfig, *, adapter: str | Path | None = None,
                 progress: bool = True, max_length: int | None = None) -> None:
        info = checkpoint_info(model_path)
        self.model_path, self.cfg, self.progress, self.max_length = model_path, cfg, progress, max_length
        self.base = info.base
        self.adapter = info.adapter if adapter is None else adapter
        self.backend = pick_backend(cfg)
        if self.backend not in ("transformers", "vllm"):
            raise ConfigError(f"student.infer.backend: must be auto, transformers or vllm here, got {self.backend!r}")
        if self.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError("student.infer.backend: 'vllm' but vllm is not installed (pip install vllm), or use "
                              "'transformers'")
        own = self.adapter is not None and _has_tokenizer(Path(self.adapter))
        self.tokenizer = load_tokenizer(self.adapter if own else model_path, self.base)
        self._tok_dir = str(self.adapter) if own else str(model_path)
        self._limit = context_length(self.base, cfg)
        self._model: Any = None
        self._threads: Any = None
        self.settings = inference_settings(cfg, self.backend)
        log.info("student answers: backend %s, dtype %s (student.infer.dtype %s), checkpoint sampling settings %s "
                 "(student.infer.generation_config)", self.backend, self.settings["dtype"], cfg.dtype,
                 "inherited" if cfg.generation_config == "inherit" else "ignored")

    def generate(self, prompts: list[str], *, on_answer: OnAnswer | None = None,
                 on_skip: Callable[[int, str], None] | None = None) -> list[str | None]:
        """See `generate`: a prompt that does not fit the student's context is skipped (None, `on_skip`)."""
        result: list[str | None] = [None] * len(prompts)
        all_ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        keep: list[int] = []
        for i, x in enumerate(all_ids):
            why = too_long(len(x), self.cfg, self._limit)
            if why is None:
                keep.append(i)
            elif on_skip is not None:
                on_skip(i, why)
        if not keep:
            return result
        ids = [all_ids[i] for i in keep]

        def got(j: int, answer: Completion) -> None:
            result[keep[j]] = answer.text
            if on_answer is not None:
                on_answer(keep[j], answer)

        if self.backend == "vllm":
            from .vllm_backend import generate_vllm

            tok_dir = self._tok_dir if _has_tokenizer(Path(self._tok_dir)) else self.base
            if _same_tokenizer(tok_dir, self.base):  # an adapter's copy of its base's tokenizer: vLLM takes the
                tok_dir = self.base  # base's (a LoRA tokenizer of its own is deprecated there, and parsed as a model)
            generate_vllm(self.base, ids, self.cfg, adapter=self.adapter, tokenizer=tok_dir, progress=self.progress,
                          on_answer=got, max_length=self.max_length)
            return result
        if self._model is None:
            from .threads import cpu_threads

            self._model = load_model(self.base, self.cfg, adapter=self.adapter)
            self._threads = cpu_threads(self._model, self.cfg.cpu_threads)
            self._threads.__enter__()
        generate_hf(self._model, self.tokenizer, ids, self.cfg, progress=self.progress, on_answer=got)
        return result

    def close(self) -> None:
        if self._threads is not None:
            self._threads.__exit__(None, None, None)
            self._threads = None
        self._model = None

    def __enter__(self) -> StudentSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_model(base: str, cfg: InferConfig, *, adapter: str | Path | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, resolve_dtype(cfg)))
    except OSError as e:
        raise ConfigError(f"student.model: cannot load a model from {base!r}: {e}") from None
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))  # attached, not merged
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS first, then any other end token the model's generation config names (e.g. end-of-turn)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for t in [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []):
        if int(t) not in ids:
            ids.append(int(t))
    if not ids:
        raise ConfigError("student.model: neither the tokenizer nor the model names an EOS token")
    return ids


def left_pad(seqs: Sequence[list[int]], pad: int) -> tuple[Any, Any]:
    """Token id lists as one left-padded batch for generate(): (input_ids, attention_mask), both long tensors."""
    import torch

    width = max(len(x) for x in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, x in enumerate(seqs):
        input_ids[b, width - len(x) :] = torch.tensor(x)
        mask[b, width - len(x) :] = 1
    return input_ids, mask


def student_generation_config(model: Any, cfg: InferConfig, stop: list[int], pad: int, *,
                              min_new_tokens: int = 0) -> Any:
    """The transformers GenerationConfig the student decodes with: built only from student.infer (and the stop
    tokens), or, with generation_config: inherit, the checkpoint's own with student.infer's keys over it.

    Passed to generate() *and* set as the model's generation_config for the call (`generate_hf`), since generate()
    fills every field a passed config leaves unset from the model's config: a checkpoint's repetition_penalty 1.5
    would otherwise apply to a greedy answer. Sampling gets top_k 0 (none) where transformers' own default is 50,
    like vLLM's and the APIs' defaults."""
    import copy

    from transformers import GenerationConfig

    greedy = cfg.temperature == 0.0
    own: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "do_sample": not greedy, "eos_token_id": list(stop),
                           "pad_token_id": pad}
    if min_new_tokens:
        own["min_new_tokens"] = min_new_tokens
    if cfg.generation_config == "inherit":
        gc = copy.deepcopy(model.generation_config)
        sampling = {"temperature": None, "top_p": None, "top_k": None} if greedy else {
            "temperature": cfg.temperature, "top_p": cfg.top_p}
        gc.update(**own, **sampling)
        return gc
    if not greedy:
        own.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
    return GenerationConfig(**own)


def answer_text(tokenizer: Any, tokens: Sequence[int], *, truncated: bool) -> str:
    """An answer's text from its tokens (special tokens left out). An answer cut at max_new_tokens may end inside a
    character that spans several byte tokens (an emoji): that part is left out, as vLLM's detokeniser leaves it,
    rather than shown as U+FFFD, so both backends give the same text for the same tokens."""
    text = tokenizer.decode(list(tokens), skip_special_tokens=True)
    return text.rstrip("\ufffd") if truncated else text


def generate_hf(model: Any, tokenizer: Any, ids: list[list[int]], cfg: InferConfig, *, progress: bool = True,
                min_new_tokens: int = 0, on_answer: OnAnswer | None = None) -> list[str]:
    """Batched generation from token ids (sorted by length, left-padded). `min_new_tokens` is for benchmarks."""
    import torch
    from tqdm.auto import tqdm

    eos_ids = stop_ids(model, tokenizer)
    eos = eos_ids[0]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    out: list[str | None] = [None] * len(ids)
    device = next(model.parameters()).device
    gc = student_generation_config(model, cfg, eos_ids, pad, min_new_tokens=min_new_tokens)
    if cfg.temperature != 0.0:
        torch.manual_seed(cfg.seed)
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    from ..logs import heartbeat

    checkpoint_gc = model.generation_config
    model.generation_config = gc  # what generate() falls back on for what gc leaves unset (PEFT passes it on)
    try:
        with torch.inference_mode(), heartbeat("student answers", len(ids), progress=progress, unit=" answers") as beat:
            for batch in tqdm(batches, desc="student answers", unit="batch", disable=not progress):
                input_ids, mask = left_pad([ids[i] for i in batch], pad)
                width = input_ids.shape[1]
                gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                     generation_config=gc)
                new = gen[:, width:].tolist()
                for b, i in enumerate(batch):
                    toks = new[b]
                    cut = next((k for k, t in enumerate(toks) if t in eos_ids), None)
                    if cut is not None:
                        toks = toks[:cut]
                    text = out[i] = answer_text(tokenizer, toks, truncated=cut is None)
                    if on_answer is not None:
                        on_answer(i, Completion(text, truncated=cut is None, tokens=tuple(toks)))
                beat.update(len(batch))
    finally:
        model.generation_config = checkpoint_gc
    return [o if o is not None else "" for o in out]


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.student.infer", description="Answer instructions with a student.")
    p.add_argument("--model", required=True, help="student checkpoint dir (full model or adapter), or a base model")
    p.add_argument("--adapter", help="a LoRA adapter dir to attach")
    p.add_argument("--data", required=True, type=Path, help="JSONL rows with instruction (+ input, id)")
    p.add_argument("--out", required=True, type=Path, help='JSONL to write: {"id", "answer"} per row')
    p.add_argument("--config", "-c", help="YAML config: student.infer and student.prompt_format are used")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from ..records import read_jsonl, write_jsonl
    from .data import format_prompt

    args = make_parser().parse_args(argv)
    if args.config:
        from ..config import load_config

        student = load_config(args.config, args.overrides).student
        cfg, fmt = student.infer, student.prompt_format
    else:
        cfg, fmt = InferConfig(), "alpaca"
    if not args.data.is_file():
        raise DataError(f"{args.data}: no such file")
    rows = read_jsonl(args.data)
    tok = None
    if fmt == "chat_template":
        info = checkpoint_info(args.model)
        tok = load_tokenizer(args.model, info.base)
    prompts = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
            raise DataError(f"{args.data}:{n}: expected an object with a string 'instruction'")
        prompts.append(format_prompt(row["instruction"], row.get("input") or "", fmt=fmt, tokenizer=tok))
    skipped: dict[int, str] = {}
    answers = generate(args.model, prompts, cfg, adapter=args.adapter, on_skip=skipped.__setitem__)
    out_rows = []
    for i, (row, a) in enumerate(zip(rows, answers, strict=True)):
        out_rows.append({"id": row.get("id", i), "answer": a, **({"skipped": skipped[i]} if i in skipped else {})})
    write_jsonl(args.out, out_rows)
    print(json.dumps({"answers": len(answers) - len(skipped), "skipped": len(skipped), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    from ..errors import cli_main

    cli_main(main)
