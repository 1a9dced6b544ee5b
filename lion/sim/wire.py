"""Wire formats of the sim server's two APIs (OpenAI chat completions, Anthropic messages) and its prompt cache.

    from lion.sim.wire import anthropic_to_chat, openai_completion, anthropic_message, PrefixCache

- `anthropic_to_chat(body)`: an Anthropic messages body as the chat-style body responders read
  (`{"model", "messages": [{"role", "content"}], "max_tokens", ...}`, the system prompt first).
- `openai_completion` / `anthropic_message`: a reply in each API's response shape, with its `usage`
  (OpenAI `prompt_tokens_details.cached_tokens`; Anthropic `cache_read_input_tokens` /
  `cache_creation_input_tokens`, its `input_tokens` excluding both).
- `PrefixCache`: the providers' prompt caching, emulated: a prompt of at least 1,024 tokens whose prefix (in
  steps of 128 tokens) was seen before reads that prefix from the cache. OpenAI caches automatically; Anthropic
  only when the request carries `cache_control` (top level or on a content block), and writes what it did not read.
- `openai_no_text` / `anthropic_no_text`: a billed reply without text, as the services send one (a reasoning model
  that spent its whole max tokens on reasoning, a thinking budget used up, an empty choices / content list).
- error bodies in each API's shape.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

MIN_CACHED = 1024  # tokens: the smallest prompt the providers cache
CACHE_STEP = 128  # tokens: cache hits grow in steps of this
CHARS_PER_TOKEN = 4


def _text(content: Any) -> str:
    """A message content: a string, or a list of blocks whose text blocks are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    raise ValueError("content must be a string or a list of content blocks")


def anthropic_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A /v1/messages body as the chat-completions body the responders read."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: must be a non-empty list")
    if not isinstance(body.get("max_tokens"), int):
        raise ValueError("max_tokens: Field required")
    out: list[dict[str, str]] = []
    system = body.get("system")
    if system:
        out.append({"role": "system", "content": _text(system)})
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ValueError(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        out.append({"role": m["role"], "content": _text(m.get("content"))})
    chat = {k: v for k, v in body.items() if k not in ("messages", "system")}
    chat["messages"] = out
    return chat


def wants_cache(body: dict[str, Any]) -> bool:
    """Does an Anthropic body ask for prompt caching (`cache_control` at the top level or on any block)?"""
    if body.get("cache_control"):
        return True
    blocks: list[Any] = []
    if isinstance(body.get("system"), list):
        blocks += body["system"]
    for m in body.get("messages") or []:
        if isinstance(m, dict) and isinstance(m.get("content"), list):
            blocks += m["content"]
    return any(isinstance(b, dict) and b.get("cache_control") for b in blocks)


class PrefixCache:
    """Which prompt prefixes were seen (one cache per API), thread-safe."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def _flat(messages: list[dict[str, Any]]) -> str:
        return "".join(f"{m.get('role')}\n{m.get('content')}\n" for m in messages)

    def lookup(self, messages: list[dict[str, Any]], prompt_tokens: int) -> int:
        """Prompt tokens read from the cache for this prompt (0 below MIN_CACHED); remembers its prefixes."""
        if prompt_tokens < MIN_CACHED:
            return 0
        flat = self._flat(messages)
        hit = 0
        with self._lock:
            n = MIN_CACHED
            while n <= prompt_tokens and n * CHARS_PER_TOKEN <= len(flat):
                h = hashlib.sha256(flat[: n * CHARS_PER_TOKEN].encode("utf-8")).hexdigest()
                if h in self._seen:
                    hit = n
                else:
                    self._seen.add(h)
                n += CACHE_STEP
        return hit


def openai_completion(n: int, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
                      cached_tokens: int, logprobs: list[dict[str, Any]] | None = None,
                      fingerprint: str | None = None) -> dict[str, Any]:
    """A chat completion; `logprobs`: the `logprobs.content` entries (token, logprob, bytes, top_logprobs)."""
    return {
        "id": f"chatcmpl-sim{n}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                     "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens,
                  "prompt_tokens_details": {"cached_tokens": cached_tokens}},
        "system_fingerprint": fingerprint,
    }


def top_k(content: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Chat-completions logprobs entries with at most `k` alternatives each (what `top_logprobs: k` returns)."""
    return [{**e, "top_logprobs": list(e.get("top_logprobs") or [])[:k]} for e in content]


def legacy_logprobs(content: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """The same entries in /v1/completions' legacy shape (`logprobs: k`)."""
    offsets, at = [], 0
    for e in content:
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": [e["token"] for e in content], "token_logprobs": [e["logprob"] for e in content],
            "top_logprobs": [{a["token"]: a["logprob"] for a in (e.get("top_logprobs") or [])[:k]} for e in content],
            "text_offset": offsets}


def anthropic_message(n: int, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
                      cache_read: int, cache_write: int) -> dict[str, Any]:
    return {
        "id": f"msg_sim{n}", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "max_tokens" if finish == "length" else "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens - cache_read - cache_write, "output_tokens": completion_tokens,
                  "cache_read_input_tokens": cache_read, "cache_creation_input_tokens": cache_write},
    }


def openai_no_text(n: int, model: str, kind: str, variant: int, prompt_tokens: int,
                   completion_tokens: int) -> dict[str, Any]:
    """A billed chat completion without text. kind "no_text": every completion token went to reasoning
    (finish_reason length; variant 0: content null, 1: content "" as OpenAI sends it, 2: content null beside a
    `reasoning_content` as vLLM / DeepSeek send it); kind "no_choices": an empty choices list. Usage is always there."""
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": 0}}
    body: dict[str, Any] = {"id": f"chatcmpl-sim{n}", "object": "chat.completion", "created": int(time.time()),
                            "model": model, "choices": [], "usage": usage}
    if kind == "no_text":
        usage["completion_tokens_details"] = {"reasoning_tokens": completion_tokens}
        message: dict[str, Any] = {"role": "assistant", "content": "" if variant == 1 else None, "refusal": None}
        if variant == 2:
            message["reasoning_content"] = "Let me think about this step by step. " * 4
        body["choices"] = [{"index": 0, "message": message, "finish_reason": "length", "logprobs": None}]
    return body


def anthropic_no_text(n: int, model: str, kind: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """A billed message without a text block. kind "no_text": a thinking block only, the budget used up (stop_reason
    max_tokens); kind "no_choices": an empty content list (end_turn)."""
    content = [{"type": "thinking", "thinking": "Let me think about this step by step.", "signature": "sim"}] \
        if kind == "no_text" else []
    return {
        "id": f"msg_sim{n}", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": "max_tokens" if kind == "no_text" else "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens, "cache_read_input_tokens": 0,
                  "cache_creation_input_tokens": 0},
    }


def openai_error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         500: "api_error", 529: "overloaded_error"}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message}}
