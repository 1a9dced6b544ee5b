"""OpenAI-compatible chat provider on `openai.AsyncOpenAI` (OpenAI, Azure's v1 endpoint, vLLM, Ollama,
llama.cpp, SGLang, TGI, DeepSeek, Together, lion's own sim server ...).

    llm: {teacher: {provider: openai, base_url: http://127.0.0.1:8000/v1, model: sim, api_key_env: MY_KEY}}

The SDK's own retries are off (`max_retries=0`): the gateway's tenacity layer owns retries, so the two do
not multiply. SDK exceptions map to `TransientError` (429 unless the quota is exhausted, 408/409/5xx,
timeouts, dropped connections, malformed bodies) or `PermanentError` (other 4xx, empty answers). The API
key is read from `os.environ[api_key_env]` when a batch starts; servers on 127.0.0.1/localhost may run
without one. Error messages are redacted so no key-shaped string leaves this module.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from typing import Any
from urllib.parse import urlparse

import openai

from ..config import RoleConfig
from ..errors import ConfigError
from .base import ChatRequest, ChatResponse, PermanentError, ResolvedParams, TransientError, messages_as_dicts, redact
from .tokens import estimate_prompt_tokens, estimate_text_tokens

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
NO_KEY = "sk-no-key"


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


class OpenAICompatProvider:
    def __init__(self, cfg: RoleConfig, key: str = "llm.<role>") -> None:
        self.cfg = cfg
        self.key = key
        self.base_url = (cfg.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.identity = f"openai:{self.base_url}:{cfg.model}"
        self._client: openai.AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._secret: str | None = None

    # ------------------------------------------------------------------ credentials
    def _api_key(self) -> str:
        name = self.cfg.api_key_env
        value = os.environ.get(name, "") if name else ""
        if value:
            return value
        host = urlparse(self.base_url).hostname or ""
        if host in LOCAL_HOSTS or f"[{host}]" in LOCAL_HOSTS:
            return NO_KEY
        raise ConfigError(
            f"{self.key}.api_key_env: environment variable {name!r} is not set (it must hold the API key for "
            f"{self.base_url}); export it, or point {self.key}.api_key_env at the variable that holds the key"
        )

    def prepare(self) -> None:
        """Fail early (before any call) when the key is missing."""
        self._secret = self._api_key()

    def _get_client(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._secret = self._api_key()
            self._client = openai.AsyncOpenAI(api_key=self._secret, base_url=self.base_url, max_retries=0,
                                              timeout=self.cfg.timeout_s)
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.close()

    def _clean(self, text: str) -> str:
        return redact(text, [self._secret])

    # ------------------------------------------------------------------ the call
    async def chat(self, request: ChatRequest, params: ResolvedParams) -> ChatResponse:
        client = self._get_client()
        try:
            resp = await client.chat.completions.create(
                model=params.model,
                messages=messages_as_dicts(request.messages),  # type: ignore[arg-type]
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                timeout=params.timeout_s,
                # the n-th sample of a prompt asks for seed n, so servers that honour `seed` (OpenAI, vLLM,
                # the sim server) return a distinct, reproducible sample; sample 0 sends no seed at all
                **({"seed": params.sample} if params.sample else {}),
            )
        except openai.APIStatusError as e:
            raise self._status_error(e) from None
        except openai.APITimeoutError:
            raise TransientError(f"timed out after {params.timeout_s:g} s") from None
        except openai.APIConnectionError as e:
            cause = type(e.__cause__).__name__ if e.__cause__ is not None else "connection error"
            raise TransientError(f"connection failed ({cause})") from None
        except (openai.APIResponseValidationError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise TransientError(f"malformed response ({type(e).__name__})") from None
        return self._parse(resp, request)

    def _status_error(self, e: openai.APIStatusError) -> Exception:
        status = e.status_code
        msg = self._clean(f"{status} {getattr(e, 'message', '') or e}")[:500]
        code = getattr(e, "code", None)
        if status == 429 and code != "insufficient_quota":
            return TransientError(msg, status=429, retry_after=parse_retry_after(e.response.headers))
        if status in (408, 409) or status >= 500:
            return TransientError(msg, status=status, retry_after=parse_retry_after(e.response.headers))
        return PermanentError(msg, status=status)

    def _parse(self, resp: Any, request: ChatRequest) -> ChatResponse:
        """Validate the body field by field: a malformed body is an error, never an answer."""
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise TransientError("malformed response (no choices)")
        choice = choices[0]
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None)
        if not isinstance(text, str):
            refusal = getattr(message, "refusal", None)
            if isinstance(refusal, str) and refusal:
                raise PermanentError(self._clean(f"the model refused: {refusal}")[:300])
            raise TransientError("malformed response (no message content)")
        finish = getattr(choice, "finish_reason", None)
        finish = finish if isinstance(finish, str) else "unknown"
        usage = getattr(resp, "usage", None)
        pt = getattr(usage, "prompt_tokens", None)
        ct = getattr(usage, "completion_tokens", None)
        if not isinstance(pt, int) or not isinstance(ct, int):  # some servers omit usage: estimate it
            pt = estimate_prompt_tokens(request.messages)
            ct = estimate_text_tokens(text)
        return ChatResponse(text=text, finish_reason=finish, prompt_tokens=pt, completion_tokens=ct)


class OpenAICompletionsProvider(OpenAICompatProvider):
    """The same server's /v1/completions: the request's last user message is sent as the raw prompt, the way a
    student trained on its own prompt format (alpaca, plain) must be asked (vLLM, SGLang, TGI, llama.cpp ...).

        llm: {student: {provider: openai_completions, base_url: http://gpu7:8000/v1}}
    """

    def __init__(self, cfg: RoleConfig, key: str = "llm.<role>") -> None:
        super().__init__(cfg, key)
        self.identity = f"openai_completions:{self.base_url}:{cfg.model}"

    async def chat(self, request: ChatRequest, params: ResolvedParams) -> ChatResponse:
        client = self._get_client()
        prompt = messages_as_dicts(request.messages)[-1]["content"]
        try:
            resp = await client.completions.create(
                model=params.model, prompt=prompt, temperature=params.temperature, top_p=params.top_p,
                max_tokens=params.max_tokens, timeout=params.timeout_s,
                **({"seed": params.sample} if params.sample else {}),
            )
        except openai.APIStatusError as e:
            raise self._status_error(e) from None
        except openai.APITimeoutError:
            raise TransientError(f"timed out after {params.timeout_s:g} s") from None
        except openai.APIConnectionError as e:
            cause = type(e.__cause__).__name__ if e.__cause__ is not None else "connection error"
            raise TransientError(f"connection failed ({cause})") from None
        except (openai.APIResponseValidationError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise TransientError(f"malformed response ({type(e).__name__})") from None
        choices = getattr(resp, "choices", None)
        text = getattr(choices[0], "text", None) if isinstance(choices, list) and choices else None
        if not isinstance(text, str):
            raise TransientError("malformed response (no completion text)")
        finish = getattr(choices[0], "finish_reason", None)
        usage = getattr(resp, "usage", None)
        pt, ct = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        if not isinstance(pt, int) or not isinstance(ct, int):
            pt, ct = estimate_prompt_tokens(request.messages), estimate_text_tokens(text)
        return ChatResponse(text=text, finish_reason=finish if isinstance(finish, str) else "unknown",
                            prompt_tokens=pt, completion_tokens=ct)
