"""A local OpenAI- and Anthropic-compatible chat server (asyncio, HTTP/1.1 keep-alive) for tests, benchmarks and
offline runs.

    python -m lion.sim.server --responder echo --port 8000 --latency-ms 200 --rpm 600 --tpm 100000 --fault-rate 0.1

Endpoints: POST /v1/chat/completions (with `usage`, incl. `prompt_tokens_details.cached_tokens`), POST /v1/messages
(Anthropic's messages API: system prompt, content blocks, `usage` with cache read/write tokens; the key may come as
`x-api-key`), GET /v1/models, and both batch APIs (lion.sim.batches: /v1/files + /v1/batches incl. the list, /v1/messages/batches).
Also POST /v1/completions (the prompt as one user message to the responder, or its `complete(body)`) and vLLM's
dynamic LoRA endpoints POST /v1/load_lora_adapter / /v1/unload_lora_adapter: loaded adapters are listed and
served as models, and a responder with `load_adapter(name, path)` / `unload_adapter(name)` takes part (e.g.
lion.sim.model:StudentModelResponder, which answers with a real checkpoint). On 127.0.0.1 only. Wire formats and the emulated prompt cache: lion.sim.wire.
- strict (off by default): refuse request parameters exactly as the 2026 APIs do (lion.sim.strict).
- logprobs: a responder whose `Completion` carries them (the `hf` responder: the model's real top-k) is answered
  with `logprobs.content` cut to the request's `top_logprobs` (chat) or `logprobs` (completions, legacy shape);
  one without them answers `logprobs: null`, like a server that ignores the parameter.
- snapshots: `served_models` maps a requested name to the snapshot the response names (`model`), and
  `system_fingerprint` is sent with every OpenAI-shaped reply; both may be changed while the server runs.
- latency: every answered request (and injected 5xx) takes `latency_ms`.
- limits: RPM and TPM token buckets holding `burst_s` seconds of their rate. TPM counts, as OpenAI does, the
  prompt estimate + max_tokens of each request (tokens: lion.teachers.tokens heuristic, 4 chars per token
  + 4 per message + 3). The RPM bucket admits a request when it holds 1; the TPM bucket while its balance
  is positive (it may go into debt, so large requests pass at the right average rate). Over the limit:
  429 with `Retry-After` (whole seconds) and `retry-after-ms`.
- faults, at `fault_rate`, drawn from `faults` (default: the transport faults): "500", "503" (529
  overloaded_error on /v1/messages), "timeout" (never answers; the connection is held until the client gives up),
  "drop" (connection closed without a response), "malformed" (a 200 whose body is truncated JSON, HTML, or JSON
  without choices and without usage); and the billed faults, a 200 that carries usage but no text (lion.sim.wire):
  "no_text" (OpenAI: content null or "" with every completion token spent on reasoning, finish_reason length;
  Anthropic: a thinking block only, stop_reason max_tokens) and "no_choices" (an empty choices / content list).
  Billed faults also strike batch items. Drawn from (seed, request messages, how many times this request arrived
  before), so the k-th attempt of a given request always meets the same fate, whatever the arrival order.
- `quota_calls`: after that many answered calls the account is out of credit (OpenAI: 429 insufficient_quota;
  Anthropic: 400 "Your credit balance is too low").
- optional checks: `api_key` (401 otherwise, echoing the key it got like some real services do),
  `known_models` (404 otherwise), `context_tokens` (400 context_length_exceeded above it).
- counters (`stats`) and a per-request log (`log`, and JSONL at `log_path`) with a hash of the request
  messages, so tests can count duplicate *completed* calls (`completed_by_hash()`), and what the server billed
  (`billed_tokens()`: prompt and completion tokens of every reply that carried usage, billed faults included).
The responder (see `make_responder`) is called on one worker thread, one request at a time, unless it declares
`concurrency` (how many requests it takes at once, e.g. lion.sim.hf_responder, which batches them into one
generate call). It returns the reply's text, or a `Completion` with its own token counts and finish reason (a
real model knows them; otherwise they are estimated from the text and the text is cut at max_tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import email.parser
import email.policy
import hashlib
import importlib
import json
import math
import random
import signal
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, Protocol

from ..errors import ConfigError, LionError
from ..teachers.ratelimit import TokenBucket
from ..teachers.tokens import estimate_prompt_tokens, estimate_text_tokens
from .batches import Answer, BatchStore
from .strict import strict_refusal
from .wire import (
    MIN_CACHED,
    PrefixCache,
    anthropic_error,
    anthropic_message,
    anthropic_no_text,
    anthropic_to_chat,
    legacy_logprobs,
    openai_completion,
    openai_error,
    openai_no_text,
    top_k,
    wants_cache,
)

TRANSPORT_FAULTS = ("500", "503", "timeout", "drop", "malformed")  # nothing billed: no usage reaches the client
BILLED_FAULTS = ("no_text", "no_choices")  # a 200 with usage and no text: billed, nothing to use
FAULTS = TRANSPORT_FAULTS + BILLED_FAULTS


@dataclass
class Completion:
    """A responder's reply with its exact usage (a real model counts its tokens)."""

    text: str
    finish: str = "stop"  # "stop" or "length"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # per generated token, chat completions' `logprobs.content` entries (token, logprob, bytes, top_logprobs): a
    # responder that has them gives as many alternatives as it can; the server sends the `top_logprobs` asked for
    logprobs: list[dict[str, Any]] | None = None


class Responder(Protocol):
    def respond(self, body: dict[str, Any]) -> str | Completion: ...


def messages_hash(messages: Any) -> str:
    """Stable hash of a request's messages ([{"role", "content"}...]), as logged per request."""
    norm = [[m.get("role"), m.get("content")] if isinstance(m, dict) else list(m) for m in (messages or [])]
    return hashlib.sha256(json.dumps(norm, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


SHORT_NAMES = {"oracle": "lion.sim.oracle:OracleResponder", "hf": "lion.sim.hf_responder:HFResponder"}


def make_responder(spec: str, options: dict[str, Any] | None = None) -> Responder:
    """"scripted", "echo", "oracle" (lion.sim.oracle:OracleResponder), "hf" (lion.sim.hf_responder:HFResponder: a
    local Hugging Face model) or "package.module:Class"."""
    options = dict(options or {})
    if spec == "scripted":
        from .scripted import ScriptedResponder

        return ScriptedResponder.from_options(options)
    if spec == "echo":
        from .scripted import EchoResponder

        return EchoResponder(**options)
    target = SHORT_NAMES.get(spec, spec)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"sim.responder: expected scripted, echo, oracle, hf or 'package.module:Class', got {spec!r}")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"sim.responder: cannot load {target!r} ({e})") from None
    try:
        obj = cls.from_options(options) if hasattr(cls, "from_options") else cls(**options)
    except TypeError as e:
        raise ConfigError(f"sim.options: {target} does not accept these options ({e})") from None
    if not callable(getattr(obj, "respond", None)):
        raise ConfigError(f"sim.responder: {target} has no respond(body) method")
    return obj


@dataclass
class ServerStats:
    requests: int = 0  # every HTTP request, any path, any outcome
    completed: int = 0  # chat completions answered 200 with a real answer
    rate_limited: int = 0  # 429s
    faults: int = 0  # injected faults
    by_status: dict[int, int] = field(default_factory=dict)  # 0 = no response (drop / timeout)
    by_kind: dict[str, int] = field(default_factory=dict)


class _Drop(Exception):
    """Close the connection without answering."""


class SimServer:
    def __init__(self, responder: Responder, *, latency_ms: float = 0, rpm: float | None = None,
                 tpm: float | None = None, fault_rate: float = 0.0, faults: Sequence[str] = TRANSPORT_FAULTS,
                 seed: int = 0, port: int = 0, log_path: Path | None = None, model_name: str = "sim",
                 burst_s: float = 2.0, api_key: str | None = None, known_models: Sequence[str] | None = None,
                 context_tokens: int | None = None, hang_s: float = 60.0, default_max_tokens: int = 256,
                 strict: bool = False, batch_delay_s: float = 0.0, batch_fail_rate: float = 0.0,
                 batch_expire_rate: float = 0.0, quota_calls: int | None = None,
                 served_models: dict[str, str] | None = None, system_fingerprint: str | None = None) -> None:
        bad = [f for f in faults if f not in FAULTS]
        if bad:
            raise ValueError(f"unknown fault kinds {bad}; choose from {', '.join(FAULTS)}")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be between 0 and 1, got {fault_rate}")
        self.responder = responder
        self.latency_s = latency_ms / 1000.0
        self.rpm, self.tpm, self.burst_s = rpm, tpm, burst_s
        self.fault_rate, self.faults = fault_rate, tuple(faults)
        self.port = port
        self.log_path = log_path
        self.model_name = model_name
        self.api_key = api_key
        self.known_models = list(known_models) if known_models else None
        self.context_tokens = context_tokens
        self.hang_s = hang_s
        self.default_max_tokens = default_max_tokens
        self.seed = seed
        self.strict = strict
        self.quota_calls = quota_calls
        # the snapshot each requested name is answered by (`model` in the response), as an API does behind an alias;
        # a test may change it while the server runs (a provider moving an alias to a new snapshot)
        self.served_models: dict[str, str] = dict(served_models or {})
        self.system_fingerprint = system_fingerprint
        self.batches = BatchStore(self._batch_answer, delay_s=batch_delay_s, fail_rate=batch_fail_rate,
                                  expire_rate=batch_expire_rate, seed=seed,
                                  root_url=lambda: self.base_url.removesuffix("/v1"))
        self._prompt_cache = {"openai": PrefixCache(), "anthropic": PrefixCache()}
        self._seen: collections.Counter[str] = collections.Counter()  # arrivals per messages hash
        self._rpm = TokenBucket(rpm, burst_s) if rpm else None
        self._tpm = TokenBucket(tpm, burst_s) if tpm else None
        self._lock = threading.Lock()
        self._stats = ServerStats()
        self._log: list[dict[str, Any]] = []
        self._log_file: IO[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._n = 0
        self.adapters: dict[str, str] = {}  # LoRA adapters loaded through /v1/load_lora_adapter: name -> path
        self._lora_used = False  # once adapters are in use, an unknown model name is a 404, as in vLLM
        self.base_url = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        """Serve on a background thread (own event loop); returns "http://127.0.0.1:PORT/v1"."""
        if self._thread is not None:
            return self.base_url
        if self.log_path is not None:
            Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        workers = max(1, int(getattr(self.responder, "concurrency", 1) or 1))
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="sim-responder")
        self._thread = threading.Thread(target=self._run, name="sim-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            self._thread = None
            raise OSError(f"sim server could not start on 127.0.0.1:{self.port} ({self._error})")
        return self.base_url

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._connection, "127.0.0.1", self.port, backlog=2048))
            self.port = self._server.sockets[0].getsockname()[1]
            self.base_url = f"http://127.0.0.1:{self.port}/v1"
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self.batches.cancel_all()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        asyncio.get_running_loop().stop()

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        self._thread.join(10)
        self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.responder, "close", None)
        if callable(close):  # e.g. the hf responder's batching thread and model
            close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> SimServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ counters and log
    @property
    def stats(self) -> ServerStats:
        with self._lock:
            s = self._stats
            return ServerStats(s.requests, s.completed, s.rate_limited, s.faults, dict(s.by_status), dict(s.by_kind))

    @property
    def log(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._log)

    def completed_by_hash(self) -> collections.Counter[str]:
        """How many times each distinct request (messages hash) was answered 200."""
        return collections.Counter(e["hash"] for e in self.log if e.get("kind") == "ok")

    def billed_tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens of every reply the server billed: answers and billed faults, online and in
        batches, as their `usage` told the client."""
        billed = [e for e in self.log if e.get("billed")]
        return sum(e["prompt_tokens"] for e in billed), sum(e["completion_tokens"] for e in billed)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = ServerStats()
            self._log = []

    def _record(self, entry: dict[str, Any]) -> None:
        entry["t_done"] = time.monotonic()
        with self._lock:
            s = self._stats
            s.by_status[entry["status"]] = s.by_status.get(entry["status"], 0) + 1
            s.by_kind[entry["kind"]] = s.by_kind.get(entry["kind"], 0) + 1
            if entry["kind"] == "ok":
                s.completed += 1
            elif entry["kind"] == "rate_limited":
                s.rate_limited += 1
            elif entry["kind"].startswith("fault:"):
                s.faults += 1
            self._log.append(entry)
        if self._log_file is not None:
            self._log_file.write(json.dumps(entry) + "\n")

    # ------------------------------------------------------------------ HTTP
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                parts = line.decode("latin-1").split()
                if len(parts) != 3:
                    await self._send(writer, 400, {"error": {"message": "bad request line"}}, close=True)
                    break
                method, target, _ = parts
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    await self._send(writer, 411, {"error": {"message": "send Content-Length"}}, close=True)
                    break
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                with self._lock:
                    self._stats.requests += 1
                try:
                    await self._dispatch(method, target.split("?")[0], headers, body, reader, writer)
                except _Drop:
                    break
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ValueError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: Any, *,
                    headers: dict[str, str] | None = None, content_type: str = "application/json",
                    close: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Overloaded"
        lines = [f"HTTP/1.1 {status} {phrase}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}", "Connection: close" if close else "Connection: keep-alive"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()

    async def _dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                        reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t0 = time.monotonic()
        entry: dict[str, Any] = {"t": t0, "path": path, "status": 0, "kind": "", "hash": None}
        api = "anthropic" if path.startswith("/v1/messages") else "openai"
        if self.api_key is not None:
            got = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
            if got != self.api_key:
                entry.update(status=401, kind="auth")
                self._record(entry)
                if api == "anthropic":
                    await self._send(writer, 401, anthropic_error(401, "invalid x-api-key"))
                    return
                msg = f"Incorrect API key provided: {got}. You can find your API key at https://example.invalid."
                await self._send(writer, 401, _error(msg, "invalid_request_error", "invalid_api_key"))
                return
        route, _, query = path.partition("?")
        route = route.rstrip("/")
        if method == "GET" and route == "/v1/models":
            entry.update(status=200, kind="models")
            self._record(entry)
            names = [self.model_name, *(m for m in (self.known_models or []) if m != self.model_name)]
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "lion-sim"} for m in names]
            data += [{"id": name, "object": "model", "created": 0, "owned_by": "lion-sim", "root": lora_path,
                      "parent": self.model_name} for name, lora_path in self.adapters.items()]
            await self._send(writer, 200, {"object": "list", "data": data})
            return
        if method == "POST" and route in ("/v1/chat/completions", "/v1/messages", "/v1/completions"):
            await self._online("completions" if route == "/v1/completions" else api, raw, entry, reader, writer, t0)
            return
        if method == "POST" and route in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            await self._lora(route.endswith("/load_lora_adapter"), raw, entry, writer)
            return
        if await self._batch_route(method, route, headers, raw, entry, writer, query):
            return
        entry.update(status=404, kind="no_route")
        self._record(entry)
        await self._send(writer, 404, self._err(api, 404, f"no route {method} {path}", None))

    # ------------------------------------------------------------------ one request, either API
    def _err(self, api: str, status: int, message: str, code: str | None, param: str | None = None,
             type_: str = "invalid_request_error") -> dict[str, Any]:
        return anthropic_error(status, message) if api == "anthropic" else openai_error(message, type_, code, param)

    def _chat_body(self, api: str, body: Any) -> dict[str, Any]:
        """The request as the chat-completions body responders read; ValueError when it is not a valid request."""
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        if api == "anthropic":
            return anthropic_to_chat(body)
        if api == "completions":  # /v1/completions: the prompt, as one user message
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise ValueError("'prompt' must be a string")
            return {**body, "messages": [{"role": "user", "content": prompt}]}
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise ValueError("'messages' must be a non-empty list")
        return body

    def _measure(self, chat: dict[str, Any], entry: dict[str, Any]) -> tuple[str, int, int]:
        model = str(chat.get("model") or self.model_name)
        max_tokens = int(chat.get("max_tokens") or chat.get("max_completion_tokens") or self.default_max_tokens)
        prompt_tokens = estimate_prompt_tokens(chat["messages"])
        entry.update(hash=messages_hash(chat["messages"]), model=model, prompt_tokens=prompt_tokens,
                     tpm_tokens=prompt_tokens + max_tokens)
        return model, max_tokens, prompt_tokens

    def _refusal(self, api: str, body: dict[str, Any], model: str, entry: dict[str, Any]) -> Answer | None:
        """What is refused before any limit applies: streaming, an unknown model, a parameter (strict mode)."""
        if body.get("stream"):
            entry.update(status=400, kind="bad_request")
            return Answer(400, self._err(api, 400, "streaming is not supported by the sim server", None))
        if (self.known_models is not None or self._lora_used) and model not in self._served():
            entry.update(status=404, kind="not_found")
            msg = f"model: {model}" if api == "anthropic" else f"The model `{model}` does not exist"
            return Answer(404, self._err(api, 404, msg, "model_not_found"))
        refused = strict_refusal(body) if self.strict else None
        if refused is not None:
            entry.update(status=refused.status, kind="strict", error=refused.message)
            return Answer(refused.status, self._err(api, refused.status, refused.message, refused.code,
                                                    refused.param))
        return None

    def _context_refusal(self, api: str, need: int, entry: dict[str, Any]) -> Answer | None:
        if self.context_tokens is None or need <= self.context_tokens:
            return None
        entry.update(status=400, kind="context")
        return Answer(400, self._err(api, 400, f"This model's maximum context length is {self.context_tokens} tokens. "
                                               f"However, you requested {need} tokens.", "context_length_exceeded"))

    async def _respond(self, api: str, body: dict[str, Any], chat: dict[str, Any], model: str, max_tokens: int,
                       prompt_tokens: int, entry: dict[str, Any]) -> Answer:
        """Run the responder and shape its reply (usage, prompt cache) in the API's format."""
        try:
            assert self._pool is not None
            complete = getattr(self.responder, "complete", None) if api == "completions" else None
            answer = complete if callable(complete) else self.responder.respond
            reply = await asyncio.get_running_loop().run_in_executor(self._pool, answer, chat)
            if not isinstance(reply, (str, Completion)):
                raise TypeError(f"responder returned {type(reply).__name__}, not str or Completion")
        except LionError as e:  # the responder refuses this request (e.g. the oracle cannot read it): a 400
            entry.update(status=400, kind="responder_refused", error=str(e))
            return Answer(400, self._err(api, 400, str(e), None))
        except Exception as e:  # noqa: BLE001 - a responder bug is a 500, visible in the log
            entry.update(status=500, kind="responder_error", error=f"{type(e).__name__}: {e}")
            return Answer(500, self._err(api, 500, f"responder failed: {type(e).__name__}", None, type_="server_error"))
        content = None
        if isinstance(reply, Completion):  # the responder counted its own tokens
            text, finish, content = reply.text, reply.finish, reply.logprobs
            completion_tokens = reply.completion_tokens if reply.completion_tokens is not None else \
                estimate_text_tokens(text)
            if reply.prompt_tokens is not None:
                prompt_tokens = reply.prompt_tokens
        else:
            text, finish = reply, "stop"
            completion_tokens = estimate_text_tokens(text)
            if completion_tokens > max_tokens:
                text, finish = text[: max_tokens * 4], "length"
                completion_tokens = estimate_text_tokens(text)
        with self._lock:
            self._n += 1
            n = self._n
            served = self.served_models.get(model, model)
        # logprobs only when asked for and the responder has them (else null, as a server without them answers)
        want = body.get("logprobs")
        k = int(body.get("top_logprobs") or 0) if api == "openai" else int(want or 0)
        lp = None if not want or content is None else content
        if api == "completions":
            read = write = 0
            payload = {"id": f"cmpl-sim{n}", "object": "text_completion", "created": int(time.time()), "model": served,
                       "choices": [{"index": 0, "text": text, "finish_reason": finish,
                                    "logprobs": None if lp is None else legacy_logprobs(lp, k)}],
                       "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens},
                       "system_fingerprint": self.system_fingerprint}
        elif api == "anthropic":
            read = self._prompt_cache[api].lookup(chat["messages"], prompt_tokens) if wants_cache(body) else 0
            write = prompt_tokens - read if wants_cache(body) and prompt_tokens >= MIN_CACHED and not read else 0
            payload = anthropic_message(n, served, text, finish, prompt_tokens, completion_tokens, read, write)
        else:
            read, write = self._prompt_cache[api].lookup(chat["messages"], prompt_tokens), 0
            payload = openai_completion(n, served, text, finish, prompt_tokens, completion_tokens, read,
                                        None if lp is None else top_k(lp, k), self.system_fingerprint)
        entry.update(status=200, kind="ok", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     cached_tokens=read, cache_write_tokens=write, billed=True)
        return Answer(200, payload)

    def _billed_fault(self, api: str, fault: str, variant: int, model: str, max_tokens: int, prompt_tokens: int,
                      entry: dict[str, Any]) -> Answer:
        """A 200 that carries usage but no text (BILLED_FAULTS), in the API's shape; billed like an answer."""
        completion_tokens = max_tokens if fault == "no_text" else max_tokens // 2 + 1
        with self._lock:
            self._n += 1
            n = self._n
        if api == "anthropic":
            payload = anthropic_no_text(n, model, fault, prompt_tokens, completion_tokens)
        elif api == "completions":
            payload = {"id": f"cmpl-sim{n}", "object": "text_completion", "created": int(time.time()), "model": model,
                       "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                                "total_tokens": prompt_tokens + completion_tokens}}
        else:
            payload = openai_no_text(n, model, fault, variant, prompt_tokens, completion_tokens)
        entry.update(status=200, kind=f"fault:{fault}", prompt_tokens=prompt_tokens,
                     completion_tokens=completion_tokens, billed=True)
        return Answer(200, payload)

    async def _online(self, api: str, raw: bytes, entry: dict[str, Any], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, t0: float) -> None:
        try:
            body = json.loads(raw)
            chat = self._chat_body(api, body)
        except ValueError as e:
            entry.update(status=400, kind="bad_request")
            self._record(entry)
            await self._send(writer, 400, self._err(api, 400, f"invalid body: {e}", None))
            return
        model, max_tokens, prompt_tokens = self._measure(chat, entry)
        refused = self._refusal(api, body, model, entry)
        if refused is not None:
            self._record(entry)
            await self._send(writer, refused.status, refused.payload)
            return
        if self.quota_calls is not None and self.stats.completed >= self.quota_calls:
            entry.update(status=429 if api != "anthropic" else 400, kind="quota")
            self._record(entry)
            if api == "anthropic":
                await self._send(writer, 400, anthropic_error(400, "Your credit balance is too low to access the "
                                                                   "Anthropic API. Please go to Plans & Billing."))
            else:
                await self._send(writer, 429, openai_error("You exceeded your current quota, please check your plan "
                                                           "and billing details.", "insufficient_quota",
                                                           "insufficient_quota"))
            return
        wait = self._admit(entry["tpm_tokens"])
        if wait > 0:
            entry.update(status=429, kind="rate_limited", retry_after=wait)
            self._record(entry)
            await self._send(writer, 429, self._err(api, 429, f"Rate limit reached for {model}; try again in "
                                                              f"{wait:.3f}s", "rate_limit_exceeded", type_="requests"),
                             headers={"retry-after": str(max(1, math.ceil(wait))),
                                      "retry-after-ms": str(max(1, math.ceil(wait * 1000)))})
            return
        refused = self._context_refusal(api, entry["tpm_tokens"], entry)
        if refused is not None:
            self._record(entry)
            await self._send(writer, refused.status, refused.payload)
            return
        fault, variant = self._draw_fault(entry["hash"])
        if fault is not None and fault not in BILLED_FAULTS:
            await self._fault(api, fault, variant, entry, reader, writer, t0)
            return
        if fault is not None:
            answer = self._billed_fault(api, fault, variant, model, max_tokens, prompt_tokens, entry)
        else:
            answer = await self._respond(api, body, chat, model, max_tokens, prompt_tokens, entry)
        if answer.status != 200:
            self._record(entry)
            await self._send(writer, answer.status, answer.payload)
            return
        await self._sleep_until(t0 + self.latency_s)
        await self._send(writer, 200, answer.payload)
        self._record(entry)

    # ------------------------------------------------------------------ vLLM's dynamic LoRA endpoints
    def _served(self) -> set[str]:
        return {self.model_name, *(self.known_models or []), *self.adapters}

    async def _lora(self, load: bool, raw: bytes, entry: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        """POST /v1/load_lora_adapter {"lora_name", "lora_path"} and /v1/unload_lora_adapter {"lora_name"}, as vLLM
        answers them; a responder with load_adapter / unload_adapter is told."""
        entry["kind"] = "load_lora" if load else "unload_lora"
        try:
            body = json.loads(raw)
            name = body.get("lora_name") if isinstance(body, dict) else None
            lora_path = body.get("lora_path") if isinstance(body, dict) else None
            if not isinstance(name, str) or not name or (load and not isinstance(lora_path, str)):
                raise ValueError("expected lora_name" + (" and lora_path" if load else ""))
        except ValueError as e:
            entry["status"] = 400
            self._record(entry)
            await self._send(writer, 400, _error(f"invalid body: {e}", "BadRequestError", None))
            return
        hook = getattr(self.responder, "load_adapter" if load else "unload_adapter", None)
        if load and name in self.adapters:
            status, message = 400, f"The lora adapter '{name}' has already been loaded."
        elif not load and name not in self.adapters:
            status, message = 404, f"The lora adapter '{name}' cannot be found."
        else:
            try:
                if callable(hook):
                    assert self._pool is not None
                    args = (name, lora_path) if load else (name,)
                    await asyncio.get_running_loop().run_in_executor(self._pool, hook, *args)
                status = 200
                message = f"Success: LoRA adapter '{name}' {'added' if load else 'removed'} successfully."
            except Exception as e:  # noqa: BLE001 - the responder could not load it: like vLLM, a 400
                status, message = 400, f"Loading lora {name} failed: {type(e).__name__}: {e}"
        if status == 200:
            self._lora_used = True
            if load:
                self.adapters[name] = str(lora_path)
            else:
                self.adapters.pop(name, None)
        entry["status"] = status
        self._record(entry)
        if status == 200:
            await self._send(writer, 200, message.encode("utf-8"), content_type="text/plain")
        else:
            await self._send(writer, status, _error(message, "BadRequestError" if status == 400 else "NotFoundError",
                                                    None))

    # ------------------------------------------------------------------ batch APIs (lion.sim.batches)
    async def _batch_answer(self, api: str, body: dict[str, Any], batch_id: str) -> Answer:
        """One batch item through the request path (no rate limit, no injected fault), logged like a request."""
        path = "/v1/messages/batches" if api == "anthropic" else "/v1/batches"
        entry: dict[str, Any] = {"t": time.monotonic(), "path": path, "status": 0, "kind": "", "hash": None,
                                 "batch": batch_id}
        try:
            chat = self._chat_body(api, body)
        except ValueError as e:
            entry.update(status=400, kind="bad_request")
            self._record(entry)
            return Answer(400, self._err(api, 400, f"invalid body: {e}", None))
        model, max_tokens, prompt_tokens = self._measure(chat, entry)
        answer = self._refusal(api, body, model, entry) or self._context_refusal(api, entry["tpm_tokens"], entry)
        if answer is None and any(f in BILLED_FAULTS for f in self.faults):  # only billed faults reach a batch
            fault, variant = self._draw_fault(entry["hash"])
            if fault in BILLED_FAULTS:
                answer = self._billed_fault(api, fault, variant, model, max_tokens, prompt_tokens, entry)
        if answer is None:
            answer = await self._respond(api, body, chat, model, max_tokens, prompt_tokens, entry)
        self._record(entry)
        return answer

    async def _batch_route(self, method: str, route: str, headers: dict[str, str], raw: bytes,
                           entry: dict[str, Any], writer: asyncio.StreamWriter, query: str = "") -> bool:
        """The files / batches / message-batches endpoints; False when `route` is none of them."""
        store = self.batches
        parts = route.split("/")[1:]  # ["v1", ...]
        result: tuple[int, Any] | None = None
        content_type = "application/json"
        try:
            if method == "POST" and route == "/v1/files":
                fields = _multipart(headers.get("content-type", ""), raw)
                filename, data = fields.get("file", (None, None))
                purpose = (fields.get("purpose", (None, b""))[1] or b"").decode("utf-8")
                result = (400, _error("file: required", "invalid_request_error", None)) if data is None else \
                    store.upload(filename or "upload.jsonl", data, purpose)
            elif method == "GET" and len(parts) == 4 and parts[1] == "files" and parts[3] == "content":
                data = store.file_content(parts[2])
                result = (404, _error(f"No such File object: {parts[2]}", "invalid_request_error", None)) \
                    if data is None else (200, data)
                content_type = "application/octet-stream"
            elif method == "GET" and len(parts) == 3 and parts[1] == "files":
                result = store.file_info(parts[2])
            elif method == "POST" and route == "/v1/batches":
                result = store.create_openai(json.loads(raw))
            elif method == "GET" and route == "/v1/batches":
                q = urllib.parse.parse_qs(query)
                result = store.list_openai(int(q.get("limit", ["20"])[0]), q.get("after", [None])[0])
            elif method == "GET" and len(parts) == 3 and parts[1] == "batches":
                result = store.get_openai(parts[2])
            elif method == "POST" and route == "/v1/messages/batches":
                result = store.create_anthropic(json.loads(raw))
            elif method == "GET" and route == "/v1/messages/batches":
                q = urllib.parse.parse_qs(query)
                result = store.list_anthropic(int(q.get("limit", ["20"])[0]), q.get("after_id", [None])[0])
            elif method == "GET" and len(parts) == 4 and parts[1:3] == ["messages", "batches"]:
                result = store.get_anthropic(parts[3])
            elif method == "GET" and len(parts) == 5 and parts[1:3] == ["messages", "batches"] and parts[4] == "results":
                result = store.anthropic_results(parts[3])
                content_type = "application/binary"
        except (ValueError, AttributeError) as e:
            api = "anthropic" if route.startswith("/v1/messages") else "openai"
            result = (400, self._err(api, 400, f"invalid body: {e}", None))
        if result is None:
            return False
        status, payload = result
        entry.update(status=status, kind="batch_api")
        self._record(entry)
        await self._send(writer, status, payload, content_type=content_type if status == 200 else "application/json")
        return True

    def _draw_fault(self, h: str) -> tuple[str | None, int]:
        """Fault for the k-th arrival of this request content: seeded by (seed, messages hash, k), so which
        attempt of which item fails does not depend on arrival order or concurrency."""
        with self._lock:
            k = self._seen[h]
            self._seen[h] += 1
        if not self.faults or self.fault_rate <= 0:
            return None, 0
        rng = random.Random(f"{self.seed}:{h}:{k}")
        hit = rng.random() < self.fault_rate
        return (rng.choice(self.faults) if hit else None), rng.randrange(3)

    def _admit(self, tpm_tokens: int) -> float:
        """0 when admitted (tokens taken); else seconds until this request would be admitted."""
        now = time.monotonic()
        wait = 0.0
        if self._rpm is not None:
            self._rpm.refill(now)
            if self._rpm.tokens < 1.0:
                wait = (1.0 - self._rpm.tokens) / self._rpm.rate
        if self._tpm is not None:
            self._tpm.refill(now)
            if self._tpm.tokens <= 0.0:
                wait = max(wait, (1.0 - self._tpm.tokens) / self._tpm.rate)
        if wait > 0:
            return wait
        if self._rpm is not None:
            self._rpm.tokens -= 1.0
        if self._tpm is not None:
            self._tpm.tokens -= tpm_tokens
        return 0.0

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _fault(self, api: str, fault: str, variant: int, entry: dict[str, Any], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, t0: float) -> None:
        entry["kind"] = f"fault:{fault}"
        if fault in ("500", "503"):
            await self._sleep_until(t0 + self.latency_s)
            # Anthropic's API answers an overload with 529 overloaded_error, OpenAI's with 503
            status = 529 if fault == "503" and api == "anthropic" else int(fault)
            entry["status"] = status
            self._record(entry)
            msg = "The server had an error while processing your request." if fault == "500" else \
                "The engine is currently overloaded, please try again later."
            await self._send(writer, status, self._err(api, status, msg, None, type_="server_error"))
            return
        if fault == "drop":
            await self._sleep_until(t0 + self.latency_s / 2)
            self._record(entry)
            raise _Drop
        if fault == "timeout":
            self._record(entry)
            try:  # hold the connection until the client gives up (EOF) or hang_s passes
                await asyncio.wait_for(reader.read(1), self.hang_s)
            except asyncio.TimeoutError:
                pass
            raise _Drop
        # malformed: a 200 whose body is not a usable completion
        await self._sleep_until(t0 + self.latency_s)
        entry["status"] = 200
        self._record(entry)
        if variant == 0:
            await self._send(writer, 200, b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"mes')
        elif variant == 1:
            await self._send(writer, 200, b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        else:
            await self._send(writer, 200, {"error": {"message": "internal error: upstream failed"}})


def _error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes | None]]:
    """The fields of a multipart/form-data body: name -> (filename, bytes)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ValueError("expected multipart/form-data")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw)
    out: dict[str, tuple[str | None, bytes | None]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            out[name] = (part.get_filename(), payload if isinstance(payload, bytes) else None)
    return out


# --------------------------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lion.sim.server",
                                description="Serve an OpenAI-compatible chat API on 127.0.0.1 for offline runs.")
    p.add_argument("--responder", default="echo", help="scripted, echo, oracle, hf, or package.module:Class")
    p.add_argument("--options", default="{}", help="responder options as JSON")
    p.add_argument("--port", type=int, default=8000, help="0 = any free port")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--rpm", type=float, default=None, help="requests per minute (429 above)")
    p.add_argument("--tpm", type=float, default=None, help="tokens per minute, prompt estimate + max_tokens")
    p.add_argument("--burst-s", type=float, default=2.0, help="seconds of rate each limit bucket holds")
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--faults", default=",".join(TRANSPORT_FAULTS), help="comma-separated subset of " + ",".join(FAULTS)
                   + " (default: the transport faults)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-name", default="sim")
    p.add_argument("--log", type=Path, default=None, help="append one JSON line per request here")
    p.add_argument("--strict", action="store_true", help="refuse parameters as 2026 APIs do (lion.sim.strict)")
    p.add_argument("--batch-delay-s", type=float, default=0.0, help="batch APIs: seconds until a batch ends")
    p.add_argument("--batch-fail-rate", type=float, default=0.0, help="batch APIs: share of items that error")
    p.add_argument("--batch-expire-rate", type=float, default=0.0, help="batch APIs: share of items that expire")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--options: not valid JSON ({e.msg})") from None
    if not isinstance(options, dict):
        raise ConfigError("--options: expected a JSON object")
    faults = [f for f in args.faults.split(",") if f]
    if any(f not in FAULTS for f in faults):
        raise ConfigError(f"--faults: choose from {', '.join(FAULTS)}, got {args.faults!r}")
    if not 0 <= args.fault_rate <= 1:
        raise ConfigError(f"--fault-rate: must be between 0 and 1, got {args.fault_rate}")
    server = SimServer(make_responder(args.responder, options), latency_ms=args.latency_ms, rpm=args.rpm,
                       tpm=args.tpm, burst_s=args.burst_s, fault_rate=args.fault_rate, faults=faults,
                       seed=args.seed, port=args.port, log_path=args.log, model_name=args.model_name,
                       strict=args.strict, batch_delay_s=args.batch_delay_s, batch_fail_rate=args.batch_fail_rate,
                       batch_expire_rate=args.batch_expire_rate)
    try:
        url = server.start()
    except OSError as e:
        raise ConfigError(f"--port: {e}") from None
    print(f"serving {url} (responder {args.responder}); Ctrl-C to stop", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    s = server.stats
    print(json.dumps({"requests": s.requests, "completed": s.completed, "rate_limited": s.rate_limited,
                      "faults": s.faults, "by_status": s.by_status}), flush=True)
    return 0


if __name__ == "__main__":
    # the importable module's main, so that a responder's replies (lion.sim.server.Completion, imported by the hf and
    # student-model responders) are instances of the classes the server checks, not of this __main__ copy's
    from lion.errors import cli_main
    from lion.sim.server import main as module_main

    cli_main(module_main)
