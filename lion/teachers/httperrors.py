"""An API's HTTP answers as lion's errors, the same for every provider and for online and batch calls.

    from lion.teachers.httperrors import classify_status     # openai_compat, openai_batch, anthropic_provider

`classify_status` maps a status code and message to `TransientError` (429 unless the quota is exhausted, 408/409,
5xx) or `PermanentError` with the `kind` the gateway stops the run on (quota, auth, model, param: the refused
parameter named); `parse_retry_after` reads Retry-After; `local_or_key` takes the API key from its variable (a
server on 127.0.0.1 may go without one); `served` reads the snapshot that answered from a response, and
`billed_usage` the usage of a reply that came without text (billed all the same).
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from typing import Any
from urllib.parse import urlparse

from ..errors import ConfigError
from .base import ChatResponse, PermanentError, TransientError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
NO_KEY = "sk-no-key"

# a 400 that refuses a request parameter: OpenAI's codes and messages, and Claude's on its compatible endpoint
_PARAM_CODES = ("unsupported_parameter", "unsupported_value", "unknown_parameter", "invalid_parameter")
_PARAM_TEXT = re.compile(r"Unsupported (?:parameter|value): '([\w.]+)'|Unrecognized request argument supplied: "
                         r"([\w.]+)|Unknown parameter: '([\w.]+)'")
_BOTH_SAMPLING = re.compile(r"temperature.{0,4} and .{0,4}top_p.{0,4} cannot both be specified", re.IGNORECASE)
_QUOTA_TEXT = re.compile(r"insufficient_quota|exceeded your current quota|credit balance is too low", re.IGNORECASE)
# logprobs refused: OpenAI's reasoning models (a 403), vLLM above --max-logprobs, servers without them
_LOGPROBS_TEXT = re.compile(r"not allowed to request logprobs|logprobs .{0,40}(?:not supported|greater than max|"
                            r"not enabled|not available)|(?:top_)?logprobs.{0,20}(?:must be|exceed)", re.IGNORECASE)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None if absent/invalid."""
    if headers is None:
        return None
    raw = headers.get("retry-after-ms")
    if raw:
        try:
            return max(0.0, float(raw) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is None:
            return None
        return max(0.0, email.utils.mktime_tz(parsed) - time.time())


def refused_param(message: str, code: str | None = None, param: str | None = None) -> str | None:
    """The request parameter a 400 refuses ("temperature+top_p" for Claude's both-at-once refusal), or None when
    the 400 is about something else (context length, content ...)."""
    if _BOTH_SAMPLING.search(message):
        return "temperature+top_p"
    if _LOGPROBS_TEXT.search(message) or (param in ("logprobs", "top_logprobs") and code is not None):
        return "top_logprobs"
    m = _PARAM_TEXT.search(message)
    if m:
        return next(g for g in m.groups() if g)
    if code in _PARAM_CODES and param:
        return param
    return None


def classify_status(status: int, message: str, *, code: str | None = None, param: str | None = None,
                    retry_after: float | None = None) -> Exception:
    """An HTTP error (online, or one item of a batch) as TransientError or PermanentError (with its kind)."""
    if _QUOTA_TEXT.search(message) or code == "insufficient_quota":
        return PermanentError(message, status=status, kind="quota")
    if status == 429 or status in (408, 409) or status >= 500:
        return TransientError(message, status=status, retry_after=retry_after)
    if status in (400, 403, 422) and refused_param(message, code, param) == "top_logprobs":
        return PermanentError(message, status=status, kind="param", param="top_logprobs")  # OpenAI: a 403
    if status in (401, 403):
        return PermanentError(message, status=status, kind="auth")
    if status == 404:
        return PermanentError(message, status=status, kind="model")
    if status == 402:
        return PermanentError(message, status=status, kind="quota")
    refused = refused_param(message, code, param) if status in (400, 422) else None
    if refused is not None:
        return PermanentError(message, status=status, kind="param", param=refused)
    return PermanentError(message, status=status)


def billed_usage(usage: Any) -> ChatResponse | None:
    """The usage of a reply without text (prompt and completion tokens, prompt-cache reads), when it has one: such
    a reply was billed. None when the body carries no usable usage."""
    pt, ct = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
    if not isinstance(pt, int) or not isinstance(ct, int) or isinstance(pt, bool) or pt < 0 or ct < 0:
        return None
    cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
    return ChatResponse(text="", finish_reason="no_text", prompt_tokens=pt, completion_tokens=ct,
                        cached_tokens=cached if isinstance(cached, int) and 0 <= cached <= pt else 0)


def local_or_key(base_url: str, env_name: str, key: str) -> str:
    """The API key from `env_name`; a local server may go without one; else ConfigError naming `key`.api_key_env."""
    value = os.environ.get(env_name, "") if env_name else ""
    if value:
        return value
    host = urlparse(base_url).hostname or ""
    if host in LOCAL_HOSTS or f"[{host}]" in LOCAL_HOSTS:
        return NO_KEY
    raise ConfigError(
        f"{key}.api_key_env: environment variable {env_name!r} is not set (it must hold the API key for "
        f"{base_url}); export it, or point {key}.api_key_env at the variable that holds the key"
    )


def served(resp: Any) -> dict[str, str | None]:
    """The snapshot that answered (`model` in the response) and OpenAI's system_fingerprint, when given."""
    model, fp = getattr(resp, "model", None), getattr(resp, "system_fingerprint", None)
    return {"served_model": model if isinstance(model, str) and model else None,
            "fingerprint": fp if isinstance(fp, str) and fp else None}
