"""The small chat protocol every LLM provider implements, and the types that cross it.

    from lion.teachers.base import ChatRequest, ChatProvider   # used by lion.teachers.gateway

A provider does one thing: send one chat request and return the text, finish reason and token usage, or
raise `TransientError` (worth retrying: 429, 5xx, timeouts, dropped connections, malformed bodies) or
`PermanentError` (not worth retrying: 400, 401, 403, 404, context too long). A reply the service billed (it
carries usage) but that holds no text to use (`no_text_error`: a reasoning model that spent its whole max tokens
on reasoning, a thinking budget used up, an empty choices list) or a refusal is a PermanentError that carries
that usage (`billed`): the gateway charges it to the ledger and the budget and fails the call with its reason,
never retrying it (a retry would pay again for the same outcome). Batching, caching, rate limits, retries, cost
and progress bars live in the gateway and work for every provider.

A plugin is any class with an `identity` string and an async `chat(request, params)` method, constructed
as `Class(role_cfg)` (a `lion.config.RoleConfig`; plugin-specific settings go in `role_cfg.options`).
Optional hooks the gateway calls when present: `prepare()` (sync, before a batch: check credentials and
raise `ConfigError` early), `async aclose()` (after a batch, on the batch's event loop), and
`batch_api()` (a `lion.teachers.batch.BatchAPI`, for `llm.<role>.mode: batch`).

Only the sampling parameters that are set are sent: `ResolvedParams.temperature` / `top_p` are None when neither
the request nor the role sets them, `token_param` names the field that carries max_tokens (`max_completion_tokens`
for the o-series and gpt-5 families), and `extra` holds fields added to the request body as they are.
`ResolvedParams.top_logprobs` > 0 asks for the top-K logprobs of every answer token: a provider that can return
them fills `ChatResponse.logprobs` (lion.teachers.logprobs.TokenLogprobs); one that answers without them stops the
run at its first reply (the gateway names llm.<role>.top_logprobs). `ChatResponse.served_model` / `fingerprint`
carry the snapshot the provider says answered (lion.snapshots).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .logprobs import TokenLogprobs

Messages = tuple[tuple[str, str], ...]

_ROLES_OK = ("system", "user", "assistant", "developer", "tool")


def normalise_messages(messages: Any) -> Messages:
    """[{"role", "content"}...] or [(role, content)...] -> a hashable tuple of (role, content) pairs."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Iterable):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} items, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, Mapping):
            role, content = m.get("role"), m.get("content")
            extra = set(m) - {"role", "content"}
            if extra:
                raise ValueError(f"message {i}: unsupported keys {sorted(extra)} (only role and content)")
        elif isinstance(m, Sequence) and not isinstance(m, (str, bytes)) and len(m) == 2:
            role, content = m
        else:
            raise ValueError(f"message {i}: expected {{'role', 'content'}} or (role, content), got {m!r}")
        if role not in _ROLES_OK:
            raise ValueError(f"message {i}: role must be one of {', '.join(_ROLES_OK)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string, got {type(content).__name__}")
        out.append((str(role), content))
    if not out:
        raise ValueError("messages must not be empty")
    return tuple(out)


def messages_as_dicts(messages: Messages) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in messages]


@dataclass(frozen=True)
class ChatRequest:
    """One chat call. Unset sampling fields take the role's configured value."""

    messages: Messages | list[dict[str, str]]
    temperature: float | None = None  # None -> the role's configured value
    top_p: float | None = None
    max_tokens: int | None = None
    sample: int = 0  # sample index: part of the cache key, so n samples of one prompt are n distinct calls

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", normalise_messages(self.messages))


LEGACY_TOP_P = 1.0  # sent on every call before 2026-12 when top_p was not set; the providers' default


@dataclass(frozen=True)
class ResolvedParams:
    """The parameters actually sent (request values overlaid on the role's config); None = not sent."""

    model: str
    temperature: float | None
    top_p: float | None
    max_tokens: int
    sample: int = 0
    timeout_s: float = 120.0
    token_param: str = "max_tokens"  # the request field that carries max_tokens
    reasoning_effort: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # request-body fields sent as they are
    top_logprobs: int = 0  # > 0: ask for the top-K logprobs of every generated token (logprobs: true)

    def key_fields(self) -> dict[str, Any]:
        """The fields that change the answer (part of the cache key); the timeout, the name of the max-tokens
        field and the mode (online or batch) do not, so the same call made either way replays the other.
        `top_logprobs` is in the key only when set (a reply with logprobs is another reply), so caches written
        before it existed keep their keys."""
        out = {"model": self.model, "temperature": self.temperature, "top_p": self.top_p,
               "max_tokens": self.max_tokens, "sample": self.sample}
        if self.top_logprobs:
            out["top_logprobs"] = self.top_logprobs
        if self.reasoning_effort is not None:
            out["reasoning_effort"] = self.reasoning_effort
        if self.extra:
            out["extra"] = dict(self.extra)
        return out

    def legacy_key_fields(self) -> dict[str, Any] | None:
        """The key fields as lion wrote them before 2026-12, when every call sent top_p (default LEGACY_TOP_P):
        an unset top_p samples the same, so those calls replay; None when top_p is set (no older form)."""
        return {**self.key_fields(), "top_p": LEGACY_TOP_P} if self.top_p is None else None

    def sampling(self) -> dict[str, float]:
        """The sampling fields that are set (the only ones sent)."""
        return {k: v for k, v in (("temperature", self.temperature), ("top_p", self.top_p)) if v is not None}


_REASONING_FAMILY = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)


def is_reasoning_family(model: str) -> bool:
    """The o-series and gpt-5 families (the name may carry a router prefix such as `openai/gpt-5-mini`): they refuse
    max_tokens (max_completion_tokens instead) and any temperature / top_p but the default (1)."""
    return bool(_REASONING_FAMILY.match(model.rsplit("/", 1)[-1]))


def resolve_token_param(token_param: str, model: str) -> str:
    """`auto` -> max_completion_tokens for the o-series and gpt-5 families (they refuse max_tokens), max_tokens
    otherwise; an explicit choice is kept."""
    if token_param != "auto":
        return token_param
    return "max_completion_tokens" if is_reasoning_family(model) else "max_tokens"


# what OpenAI answers when a reasoning model is asked for logprobs (a 403 invalid_request_error, seen on o4-mini)
LOGPROBS_REFUSED = "You are not allowed to request logprobs from this model"


def logprobs_refusal(provider: str, model: str) -> str | None:
    """Why a provider or model is known to return no logprobs (None when it may): Anthropic's API has none; the
    o-series and gpt-5 families refuse them (OpenAI: "You are not allowed to request logprobs from this model")."""
    if provider == "anthropic":
        return "Anthropic's messages API returns no logprobs"
    if provider in ("openai", "openai_completions") and is_reasoning_family(model):
        return (f"{model} is a reasoning model (o-series / gpt-5 family), which returns no logprobs "
                f'(OpenAI: "{LOGPROBS_REFUSED}")')
    return None


@dataclass
class ChatResponse:
    text: str
    finish_reason: str
    prompt_tokens: int  # every prompt token, cached ones included
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens read from the provider's prompt cache (priced at Price.cached_input)
    cache_write_tokens: int = 0  # prompt tokens written to the cache (Anthropic; priced at Price.cache_write)
    logprobs: TokenLogprobs | None = None  # per answer token, when asked for (top_logprobs) and returned
    served_model: str | None = None  # the model the provider says served the call (`model` in the response)
    fingerprint: str | None = None  # OpenAI's system_fingerprint (the backend configuration), when given


@runtime_checkable
class ChatProvider(Protocol):
    identity: str  # e.g. "openai:<base_url>:<model>"; part of the cache key; never a secret

    async def chat(self, request: ChatRequest, params: ResolvedParams) -> ChatResponse: ...


class TransientError(Exception):
    """Worth retrying (rate limit, overload, timeout, dropped connection, malformed body)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.reason = reason  # e.g. "batch_expired"; None: derived from status and message (failure_reason)


class PermanentError(Exception):
    """Not worth retrying. status 401/403/404, and a `kind` of auth / quota / model / param, make the whole batch
    hopeless (every call would fail the same way: the run stops naming the key to change); else it fails one item.
    `param` is the request parameter a server refused (kind "param"). `billed`: the usage of a reply the service
    charged for although it is no answer (a refusal, kind "no_text"); the gateway puts it in the ledger."""

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None,
                 param: str | None = None, billed: ChatResponse | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.param = param
        self.billed = billed


NO_TEXT = "no_text"  # the failure reason of a billed reply without text


def no_text_error(finish: str, usage: ChatResponse, reasoning_tokens: int | None = None,
                  what: str = "") -> PermanentError:
    """A billed reply that holds no text: the call fails (reason no_text) with its usage charged. The message says
    why, e.g. "the model returned no text: finish_reason length, 4,096 reasoning tokens of 4,096 completion
    tokens"."""
    spent = f"{usage.completion_tokens:,} completion tokens"
    if reasoning_tokens:
        spent = f"{reasoning_tokens:,} reasoning tokens of {spent}"
    detail = f"{what}; " if what else ""
    return PermanentError(f"the model returned no text: {detail}finish_reason {finish}, {spent} "
                          f"(billed: {usage.prompt_tokens:,} prompt + {usage.completion_tokens:,} completion tokens)",
                          kind=NO_TEXT, billed=usage)


def failure_reason(exc: BaseException) -> str:
    """A short name for why a call failed, for the per-batch failure summary (timeout, http_503, quota, ...)."""
    if isinstance(exc, TransientError):
        if exc.reason:
            return exc.reason
        if exc.status == 429:
            return "rate_limited"
        if exc.status is not None:
            return f"http_{exc.status}"
        text = str(exc)
        for prefix, name in (("timed out", "timeout"), ("connection", "connection"), ("malformed", "malformed")):
            if text.startswith(prefix):
                return name
        return "transient"
    if isinstance(exc, PermanentError):
        if exc.kind:
            return exc.kind
        if str(exc).startswith("the model refused"):
            return "refused"
        return f"http_{exc.status}" if exc.status is not None else "permanent"
    return "provider_bug"


# Anything that looks like an API key: OpenAI style (sk-..., incl. partially masked echoes), bearer tokens.
_KEYLIKE = re.compile(r"(sk-[A-Za-z0-9_\-*.]{3,}|Bearer\s+\S+)")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove secrets (exact strings, and anything key-shaped) from a message before it is shown or stored."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return _KEYLIKE.sub("***", text)
