"""The records of one batch of calls through the gateway: each call's result, the item sent, the batch's state.

    from lion.teachers.calls import CallResult       # what Gateway.chat_many returns, one per request

Shared by the gateway's online path (lion.teachers.gateway) and its batch path (lion.teachers.batch).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from ..errors import LionError
from .base import NO_TEXT, ChatRequest, PermanentError, ResolvedParams


@dataclass
class CallResult:
    ok: bool
    text: str | None  # the answer; None when the call failed (an error is never returned as text)
    error: str | None  # why it failed (redacted), None when ok
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached: bool  # replayed from the cache (no HTTP call, no cost)
    attempts: int  # HTTP attempts made in this batch (0 when cached; batches the item went in, in batch mode)
    reason: str | None = None  # short failure reason (timeout, http_503, batch_expired, ...), None when ok
    logprobs: bytes | None = None  # the answer's top-K logprobs (llm.<role>.top_logprobs), encoded: TokenLogprobs
    served_model: str | None = None  # the snapshot the provider says answered (None: it did not say)
    fingerprint: str | None = None  # its system_fingerprint, when given


@dataclass
class CallItem:
    request: ChatRequest
    params: ResolvedParams
    key: str
    need_tokens: int  # estimated prompt + max_tokens (TPM reservation, token budget)
    worst_usd: float  # at the online price
    ident: str = ""  # the provider identity in the key (or the role's cache_namespace)


@dataclass
class BatchState:
    stop: str | None = None  # "budget" | "fatal"
    fatal: LionError | None = None
    done: int = 0
    failed: int = 0
    tokens: int = 0
    usd: float = 0.0
    stats: dict[str, int] = field(default_factory=lambda: collections.Counter())


def permanent_message(e: PermanentError) -> str:
    """A failed item's error text for a permanent error (a billed reply without text says so itself)."""
    return str(e) if e.kind == NO_TEXT else f"permanent error: {e}"
