"""Strict mode of the sim server: refuse request parameters exactly as the 2026 APIs do.

    python -m lion.sim.server --strict ...          # or SimServer(..., strict=True), sim.strict: true

The rules and messages are the ones measured against the real services:
- gpt-5 family and o-series (`gpt-5`, `gpt-5-mini`, `o3`, `o4-mini`, ... also behind a router prefix such as
  `openai/gpt-5-mini`): `max_tokens` is refused (use `max_completion_tokens`), `temperature` / `top_p`
  other than the default 1 are refused, and `logprobs` gets a 403 "You are not allowed to request logprobs from
  this model" (OpenAI's answer on o4-mini);
- Claude 4.5 and later (`claude-sonnet-4-5`, `claude-opus-4-5-20251101`, `claude-haiku-4-5`, `claude-opus-4-6`,
  ...), on the OpenAI-compatible endpoint and on /v1/messages: `temperature` and `top_p` together are refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_REASONING = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)
_CLAUDE = re.compile(r"^claude-(?:opus|sonnet|haiku)-(\d+)(?:[-.](\d{1,2}))?(?!\d)", re.IGNORECASE)


@dataclass(frozen=True)
class Refusal:
    """A 400 the real API would answer: its message, the parameter it names (if any) and its code."""

    message: str
    param: str | None
    code: str | None
    status: int = 400


def _base_name(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def is_reasoning_model(model: str) -> bool:
    """The o-series and gpt-5 families: max_completion_tokens only, default sampling only."""
    return bool(_REASONING.match(_base_name(model)))


def is_claude_45_plus(model: str) -> bool:
    m = _CLAUDE.match(_base_name(model))
    if not m:
        return False
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    return (major, minor) >= (4, 5)


def _number(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def strict_refusal(body: dict[str, Any]) -> Refusal | None:
    """The refusal a 2026 API gives for this request body (chat completions or messages), or None."""
    model = str(body.get("model") or "")
    if is_reasoning_model(model) and (body.get("logprobs") or body.get("top_logprobs")):
        from ..teachers.base import LOGPROBS_REFUSED

        return Refusal(LOGPROBS_REFUSED, None, None, status=403)  # OpenAI answers this one with a 403
    if is_reasoning_model(model):
        if body.get("max_tokens") is not None:
            return Refusal("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                           "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
        for param in ("temperature", "top_p"):
            value = body.get(param)
            if value is not None and value != 1:
                return Refusal(f"Unsupported value: '{param}' does not support {_number(value)} with this model. "
                               "Only the default (1) value is supported.", param, "unsupported_value")
    if is_claude_45_plus(model) and body.get("temperature") is not None and body.get("top_p") is not None:
        return Refusal("`temperature` and `top_p` cannot both be specified for this model. Please use only one.",
                       None, "invalid_request_error")
    return None
