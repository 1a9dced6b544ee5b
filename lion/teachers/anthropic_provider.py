"""Native Anthropic provider on `anthropic.AsyncAnthropic` (the messages API), with Message Batches for batch mode.

    llm: {teacher: {provider: anthropic, model: claude-sonnet-4-5, max_tokens: 1024}}   # ANTHROPIC_API_KEY

- Request: the system and developer messages become `system`; the rest go as user / assistant messages;
  `max_tokens` is always sent (the API requires it); `temperature` / `top_p` only when set (Claude 4.5+ refuses
  both together); `reasoning_effort` as `output_config.effort`; then `extra_body` / `options` as they are (e.g.
  `extra_body: {cache_control: {type: ephemeral}}` asks for prompt caching). The same body goes online and into
  Message Batches.
- Response: the text blocks joined; stop_reason end_turn / stop_sequence -> "stop", max_tokens -> "length",
  refusal -> a permanent error; a billed message with no text (a thinking block only: the budget used up; or an
  empty content list) -> a no_text failure carrying its usage (charged, not retried); usage: prompt tokens = input + cache read + cache write tokens, with the cache
  read (`cache_read_input_tokens`) and write (`cache_creation_input_tokens`) tokens kept apart for pricing.
- Errors, mapped like the OpenAI provider's: 429 (Retry-After honoured), 529 overloaded, 408/409/5xx, timeouts
  and dropped connections are transient; 401/403 (auth), 404 (model), 402 and "credit balance is too low"
  (quota), a 400 refusing a parameter (param) stop the run; other 4xx fail the item.
- base_url: `https://api.anthropic.com` by default; a trailing `/v1` is dropped (the SDK adds it), so the sim
  server's URL works as it is. The key comes from `api_key_env` (default ANTHROPIC_API_KEY); a local server
  may run without one.
Anthropic has no `seed`: a later sample of the same prompt (`ChatRequest.sample`) is a new call in the cache, but
at temperature 0 it may repeat the first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import anthropic

from ..config import RoleConfig
from .base import ChatRequest, ChatResponse, PermanentError, ResolvedParams, TransientError, no_text_error, redact
from .batchapi import BatchLine, BatchLost, BatchOutcome, BatchProgress
from .httperrors import classify_status, local_or_key, parse_retry_after, served
from .tokens import estimate_prompt_tokens, estimate_text_tokens

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_KEY_ENV = "ANTHROPIC_API_KEY"
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_use",
          "pause_turn": "length", "model_context_window_exceeded": "length"}
TRANSIENT_TYPES = ("api_error", "overloaded_error", "rate_limit_error", "timeout_error")


class AnthropicProvider:
    def __init__(self, cfg: RoleConfig, key: str = "llm.<role>") -> None:
        self.cfg = cfg
        self.key = key
        self.key_env = cfg.api_key_env or DEFAULT_KEY_ENV
        self.base_url = (cfg.base_url or DEFAULT_BASE_URL).rstrip("/").removesuffix("/v1")
        self.identity = f"anthropic:{self.base_url}:{cfg.model}"
        self._client: anthropic.AsyncAnthropic | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._secret: str | None = None

    # ------------------------------------------------------------------ credentials and client
    def prepare(self) -> None:
        self._secret = local_or_key(self.base_url, self.key_env, self.key)

    def client(self) -> anthropic.AsyncAnthropic:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._secret = local_or_key(self.base_url, self.key_env, self.key)
            self._client = anthropic.AsyncAnthropic(api_key=self._secret, base_url=self.base_url, max_retries=0,
                                                    timeout=self.cfg.timeout_s)
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.close()

    def clean(self, text: str) -> str:
        return redact(text, [self._secret])

    # ------------------------------------------------------------------ the request
    def request_body(self, request: ChatRequest, params: ResolvedParams) -> dict[str, Any]:
        system = "\n\n".join(c for r, c in request.messages if r in ("system", "developer"))
        messages = [{"role": r, "content": c} for r, c in request.messages if r in ("user", "assistant")]
        body: dict[str, Any] = {"model": params.model, "max_tokens": params.max_tokens, "messages": messages}
        if system:
            body["system"] = system
        body.update(params.sampling())
        if params.reasoning_effort is not None:
            body["output_config"] = {"effort": params.reasoning_effort}
        body.update(params.extra)
        return body

    async def chat(self, request: ChatRequest, params: ResolvedParams) -> ChatResponse:
        client = self.client()
        body = self.request_body(request, params)
        model, max_tokens, messages = body.pop("model"), body.pop("max_tokens"), body.pop("messages")
        try:
            resp = await client.messages.create(model=model, max_tokens=max_tokens, messages=messages,
                                                extra_body=body, timeout=params.timeout_s)
        except Exception as e:  # noqa: BLE001 - mapped below; anything unexpected is a malformed response
            raise self._error(e, params.timeout_s) from None
        return self.parse(resp, request)

    def _error(self, e: Exception, timeout_s: float | None = None, batch_id: str | None = None) -> Exception:
        if isinstance(e, anthropic.APIStatusError):
            if e.status_code == 404 and batch_id is not None:
                return BatchLost(batch_id)
            err = e.body.get("error") if isinstance(e.body, dict) else None
            msg = self.clean(f"{e.status_code} {(err or {}).get('message') if isinstance(err, dict) else e}")[:500]
            return classify_status(e.status_code, msg, retry_after=parse_retry_after(e.response.headers))
        if isinstance(e, anthropic.APITimeoutError):
            return TransientError(f"timed out after {timeout_s:g} s" if timeout_s else "timed out")
        if isinstance(e, anthropic.APIConnectionError):
            cause = type(e.__cause__).__name__ if e.__cause__ is not None else "connection error"
            return TransientError(f"connection failed ({cause})")
        if isinstance(e, (TransientError, PermanentError)):
            return e
        return TransientError(f"malformed response ({type(e).__name__})")

    def parse(self, resp: Any, request: ChatRequest | None) -> ChatResponse:
        """Validate the message field by field: a malformed body is an error, never an answer."""
        blocks = getattr(resp, "content", None)
        if not isinstance(blocks, list):
            raise TransientError("malformed response (no content)")
        stop = getattr(resp, "stop_reason", None)
        texts = [b.text for b in blocks if getattr(b, "type", None) == "text" and isinstance(getattr(b, "text", None),
                                                                                            str)]
        usage = getattr(resp, "usage", None)
        inp, out = getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None)
        read = getattr(usage, "cache_read_input_tokens", None) or 0
        write = getattr(usage, "cache_creation_input_tokens", None) or 0
        finish = FINISH.get(str(stop), str(stop) if stop else "unknown")
        billed = ChatResponse(text="", finish_reason=finish, prompt_tokens=inp + read + write, completion_tokens=out,
                              cached_tokens=read, cache_write_tokens=write) \
            if isinstance(inp, int) and isinstance(out, int) else None
        if stop == "refusal":
            raise PermanentError(self.clean(f"the model refused: {''.join(texts)[:200]}"), billed=billed)
        kinds = sorted({str(getattr(b, "type", "?")) for b in blocks})
        thought_only = not "".join(texts) and any(k in ("thinking", "redacted_thinking") for k in kinds)
        if billed is not None and (not texts or thought_only):  # billed, nothing to use (a thinking budget used up)
            raise no_text_error(finish, billed, what=f"content blocks: {', '.join(kinds) or 'none'}")
        if not texts:
            raise TransientError("malformed response (no text block)")
        text = "".join(texts)
        if not isinstance(inp, int) or not isinstance(out, int):
            inp = estimate_prompt_tokens(request.messages) if request is not None else 0
            out, read, write = estimate_text_tokens(text), 0, 0
        return ChatResponse(text=text, finish_reason=finish, prompt_tokens=inp + read + write, completion_tokens=out,
                            cached_tokens=read, cache_write_tokens=write, served_model=served(resp)["served_model"])

    # ------------------------------------------------------------------ batch mode
    def batch_api(self) -> AnthropicBatchAPI:
        return AnthropicBatchAPI(self)


class AnthropicBatchAPI:
    """Message Batches: at most 100,000 requests and 256 MB per batch (lion keeps 16 MB of margin)."""

    max_items = 100_000
    max_bytes = 240 * 1024 * 1024

    def __init__(self, provider: AnthropicProvider) -> None:
        self.p = provider

    def _request(self, line: BatchLine) -> dict[str, Any]:
        return {"custom_id": line.custom_id, "params": self.p.request_body(line.request, line.params)}

    def line_size(self, line: BatchLine) -> int:
        return len(json.dumps(self._request(line), ensure_ascii=False).encode("utf-8")) + 2

    async def find(self, tag: str, since: float, n: int, known: frozenset[str]) -> str | None:
        """Message Batches keep no metadata, so the tag cannot be looked up: the batch is the one of `n` requests,
        not among the run's `known` ids, created nearest after `since` (the list is newest first; 60 s of clock
        skew allowed). Should another client have created one like it in that minute, its results carry none of
        the intent's custom_ids: they are all missing when it ends, and go out again then."""
        best: tuple[float, str] | None = None
        try:
            async for b in self.p.client().messages.batches.list(limit=100):
                created = b.created_at.timestamp()
                if created < since - 300:
                    break
                c = b.request_counts
                total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
                if b.id in known or total != n or created < since - 60:
                    continue
                gap = abs(created - since)
                if best is None or gap < best[0]:
                    best = (gap, b.id)
        except Exception as e:  # noqa: BLE001
            raise self.p._error(e) from None
        return best[1] if best else None

    async def submit(self, lines: Sequence[BatchLine], tag: str) -> str:
        try:
            b = await self.p.client().messages.batches.create(requests=[self._request(ln) for ln in lines])  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001
            raise self.p._error(e) from None
        return b.id

    async def progress(self, batch_id: str) -> BatchProgress:
        try:
            b = await self.p.client().messages.batches.retrieve(batch_id)
        except Exception as e:  # noqa: BLE001
            raise self.p._error(e, batch_id=batch_id) from None
        c = b.request_counts
        total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
        return BatchProgress(b.processing_status == "ended", b.processing_status, total - c.processing, total)

    async def results(self, batch_id: str) -> list[BatchOutcome]:
        out: list[BatchOutcome] = []
        try:
            async for row in await self.p.client().messages.batches.results(batch_id):
                out.append(self._outcome(row))
        except Exception as e:  # noqa: BLE001
            raise self.p._error(e, batch_id=batch_id) from None
        return out

    def _outcome(self, row: Any) -> BatchOutcome:
        cid, result = str(row.custom_id), row.result
        kind = getattr(result, "type", None)
        if kind == "succeeded":
            try:
                return BatchOutcome(cid, response=self.p.parse(result.message, None))
            except (TransientError, PermanentError) as e:
                return BatchOutcome(cid, error=e)
        if kind == "errored":
            err = getattr(getattr(result, "error", None), "error", None)
            etype, msg = getattr(err, "type", "api_error"), self.p.clean(str(getattr(err, "message", "")))[:300]
            if etype in TRANSIENT_TYPES:
                return BatchOutcome(cid, error=TransientError(f"{etype}: {msg}", reason="batch_errored"))
            status = {"authentication_error": 401, "permission_error": 403, "not_found_error": 404,
                      "billing_error": 402}.get(etype, 400)
            return BatchOutcome(cid, error=classify_status(status, f"{status} {etype}: {msg}"))
        reason = "batch_expired" if kind == "expired" else "batch_canceled"
        return BatchOutcome(cid, error=TransientError(f"batch item {kind}", reason=reason))
