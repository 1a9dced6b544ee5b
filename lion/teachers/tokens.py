"""Offline token estimates for rate limiting, budget pre-checks and the sim server's `usage`.

    python -c "from lion.teachers.tokens import estimate_prompt_tokens as e; print(e([('user', 'hi there')]))"

tiktoken downloads its tables and cannot work offline, so the default is a documented heuristic:
a text is ceil(len(text) / chars_per_token) tokens (chars_per_token = 4.0 by default, OpenAI's rule of
thumb for English); a chat prompt adds 4 tokens per message (role and separators) and 3 for the reply
primer. With `llm.tokenizer` set to a local Hugging Face tokenizer directory, texts are counted with it
instead. The sim server counts with the same heuristic, so client-side and server-side TPM agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError

PER_MESSAGE = 4
PER_REPLY = 3


def estimate_text_tokens(text: str, chars_per_token: float = 4.0) -> int:
    return math.ceil(len(text) / chars_per_token) if text else 0


def estimate_prompt_tokens(messages: Iterable[Any], chars_per_token: float = 4.0) -> int:
    """messages: (role, content) pairs or {"role", "content"} dicts."""
    total = PER_REPLY
    for m in messages:
        content = m.get("content", "") if isinstance(m, dict) else m[1]
        total += PER_MESSAGE + estimate_text_tokens(content if isinstance(content, str) else str(content), chars_per_token)
    return total


class TokenCounter:
    """Counts with a local tokenizer when configured, else with the heuristic."""

    def __init__(self, chars_per_token: float = 4.0, tokenizer: str | None = None) -> None:
        self.chars_per_token = chars_per_token
        self._tok: Any = None
        if tokenizer:
            try:
                from transformers import AutoTokenizer

                self._tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
            except Exception as e:  # noqa: BLE001 - any load failure is a config problem
                raise ConfigError(f"llm.tokenizer: cannot load a tokenizer from {tokenizer!r} ({e})") from None

    def text(self, text: str) -> int:
        if self._tok is None:
            return estimate_text_tokens(text, self.chars_per_token)
        return len(self._tok.encode(text, add_special_tokens=False))

    def prompt(self, messages: Iterable[tuple[str, str]]) -> int:
        if self._tok is None:
            return estimate_prompt_tokens(messages, self.chars_per_token)
        return PER_REPLY + sum(PER_MESSAGE + self.text(c) for _, c in messages)
