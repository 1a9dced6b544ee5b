"""OpenAI-compatible chat provider on `openai.AsyncOpenAI` (OpenAI, Azure's v1 endpoint, vLLM, Ollama,
llama.cpp, SGLang, TGI, DeepSeek, Together, Anthropic's OpenAI-compatible endpoint, lion's own sim server ...).

    llm: {teacher: {provider: openai, base_url: http://127.0.0.1:8000/v1, model: sim, api_key_env: MY_KEY}}

Requests are shaped for the model (`request_body`): only the sampling keys that are set are sent, max_tokens goes
in the field `token_param` names (`auto`: max_completion_tokens for the o-series and gpt-5 families),
`reasoning_effort` when set, `logprobs: true, top_logprobs: K` when `llm.teacher.top_logprobs` is set, then
`extra_body` / `options` as they are. The same body goes online (`chat.completions.create`) and into the Batch
API's JSONL (`batch_api()`, lion.teachers.openai_batch). A reply's logprobs (chat: `logprobs.content`; completions:
the legacy lists), its `model` and `system_fingerprint` are kept (ChatResponse.logprobs / served_model /
fingerprint); a refusal of logprobs (OpenAI's 403 for reasoning models, vLLM above --max-logprobs) is kind `param`.

The SDK's own retries are off (`max_retries=0`): the gateway owns retries, so the two do not multiply. SDK
exceptions map to `TransientError` (429 unless the quota is exhausted, 408/409/5xx, timeouts, dropped
connections, malformed bodies) or `PermanentError` with a `kind` the gateway stops the run on: `quota`
(insufficient_quota), `auth` (401/403), `model` (404), `param` (a 400 refusing a parameter; `param` names it).
The API key is read from `os.environ[api_key_env]` (default OPENAI_API_KEY) when a batch starts; servers on
127.0.0.1/localhost may run without one. Error messages are redacted so no key-shaped string leaves this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import openai

from ..config import RoleConfig
from .base import (
    ChatRequest,
    ChatResponse,
    PermanentError,
    ResolvedParams,
    TransientError,
    messages_as_dicts,
    no_text_error,
    redact,
    resolve_token_param,
)
from .httperrors import (  # noqa: F401 - also this module's interface
    LOCAL_HOSTS,
    NO_KEY,
    billed_usage,
    classify_status,
    local_or_key,
    parse_retry_after,
    refused_param,
    served,
)
from .logprobs import TokenLogprobs
from .tokens import estimate_prompt_tokens, estimate_text_tokens

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
class OpenAICompatProvider:
    batch_endpoint = "/v1/chat/completions"

    def __init__(self, cfg: RoleConfig, key: str = "llm.<role>") -> None:
        self.cfg = cfg
        self.key = key
        self.key_env = cfg.api_key_env or DEFAULT_KEY_ENV
        self.base_url = (cfg.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.identity = f"openai:{self.base_url}:{cfg.model}"
        self._client: openai.AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._secret: str | None = None

    # ------------------------------------------------------------------ credentials
    def _api_key(self) -> str:
        return local_or_key(self.base_url, self.key_env, self.key)

    def prepare(self) -> None:
        """Fail early (before any call) when the key is missing."""
        self._secret = self._api_key()

    def client(self) -> openai.AsyncOpenAI:
        """The SDK client of the running event loop (one per loop: a batch of calls runs on its own loop)."""
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

    def clean(self, text: str) -> str:
        return redact(text, [self._secret])

    # ------------------------------------------------------------------ the request
    def request_body(self, request: ChatRequest, params: ResolvedParams) -> dict[str, Any]:
        """The JSON body of one chat completion, shaped for the model (only what is set is sent)."""
        body: dict[str, Any] = {"model": params.model, "messages": messages_as_dicts(request.messages)}
        body[resolve_token_param(params.token_param, params.model)] = params.max_tokens
        body.update(params.sampling())
        if params.reasoning_effort is not None:
            body["reasoning_effort"] = params.reasoning_effort
        # the n-th sample of a prompt asks for seed n, so servers that honour `seed` (OpenAI, vLLM, the sim
        # server) return a distinct, reproducible sample; sample 0 sends no seed at all
        if params.sample:
            body["seed"] = params.sample
        if params.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = params.top_logprobs
        body.update(params.extra)
        return body

    async def chat(self, request: ChatRequest, params: ResolvedParams) -> ChatResponse:
        client = self.client()
        body = self.request_body(request, params)
        model, messages = body.pop("model"), body.pop("messages")
        resp = await self._send(lambda: client.chat.completions.create(
            model=model, messages=messages, extra_body=body, timeout=params.timeout_s), params.timeout_s)
        return self.parse(resp, request)

    async def _send(self, call: Callable[[], Awaitable[Any]], timeout_s: float) -> Any:
        """Make one SDK call, its failures mapped to lion's errors (status, timeout, connection, malformed)."""
        try:
            return await call()
        except openai.APIStatusError as e:
            raise self._status_error(e) from None
        except openai.APITimeoutError:
            raise TransientError(f"timed out after {timeout_s:g} s") from None
        except openai.APIConnectionError as e:
            cause = type(e.__cause__).__name__ if e.__cause__ is not None else "connection error"
            raise TransientError(f"connection failed ({cause})") from None
        except (openai.APIResponseValidationError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise TransientError(f"malformed response ({type(e).__name__})") from None

    def _status_error(self, e: openai.APIStatusError) -> Exception:
        status = e.status_code
        body = e.body.get("error", e.body) if isinstance(e.body, dict) else None  # OpenAI: the "error" object
        text = body.get("message") if isinstance(body, dict) else None
        msg = self.clean(f"{status} {text or getattr(e, 'message', '') or e}")[:500]
        return classify_status(status, msg, code=getattr(e, "code", None), param=getattr(e, "param", None),
                               retry_after=parse_retry_after(e.response.headers))

    def error_from_body(self, status: int, body: Any) -> Exception:
        """One failed batch item (its status code and error body) as the same errors as online."""
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        msg = self.clean(f"{status} {err.get('message') or body}")[:500]
        return classify_status(status, msg, code=err.get("code"), param=err.get("param"))

    def parse(self, resp: Any, request: ChatRequest | None) -> ChatResponse:
        """Validate the body field by field: a malformed body is an error, never an answer. A body with usage but no
        text (no choices, content null, or content "" after reasoning only) was billed: a no_text failure carrying
        that usage; without usage it is malformed (transient)."""
        choices = getattr(resp, "choices", None)
        usage = getattr(resp, "usage", None)
        if not isinstance(choices, list) or not choices:
            if (billed := billed_usage(usage)) is not None:
                raise no_text_error("none", billed, what="no choices")
            raise TransientError("malformed response (no choices)")
        choice = choices[0]
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None)
        finish = getattr(choice, "finish_reason", None)
        finish = finish if isinstance(finish, str) else "unknown"
        billed = billed_usage(usage)
        reasoning = getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", None)
        if not isinstance(text, str):
            refusal = getattr(message, "refusal", None)
            if isinstance(refusal, str) and refusal:
                raise PermanentError(self.clean(f"the model refused: {refusal}")[:300], billed=billed)
            if billed is not None:
                raise no_text_error(finish, billed, reasoning if isinstance(reasoning, int) else None, "content null")
            raise TransientError("malformed response (no message content)")
        if not text and billed is not None and isinstance(reasoning, int) and reasoning > 0:
            raise no_text_error(finish, billed, reasoning)  # what a reasoning model sends when it spent it all
        pt = getattr(usage, "prompt_tokens", None)
        ct = getattr(usage, "completion_tokens", None)
        if not isinstance(pt, int) or not isinstance(ct, int):  # some servers omit usage: estimate it
            pt = estimate_prompt_tokens(request.messages) if request is not None else 0
            ct = estimate_text_tokens(text)
        cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None)
        cached = cached if isinstance(cached, int) and 0 <= cached <= pt else 0
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        return ChatResponse(text=text, finish_reason=finish, prompt_tokens=pt, completion_tokens=ct,
                            cached_tokens=cached, logprobs=_logprobs(content, TokenLogprobs.from_openai),
                            **served(resp))

    # ------------------------------------------------------------------ batch mode
    def batch_api(self) -> Any:
        from .openai_batch import OpenAIBatchAPI

        return OpenAIBatchAPI(self)


class OpenAICompletionsProvider(OpenAICompatProvider):
    """The same server's /v1/completions: the request's last user message is sent as the raw prompt, the way a
    student trained on its own prompt format (alpaca, plain) must be asked (vLLM, SGLang, TGI, llama.cpp ...).

        llm: {student: {provider: openai_completions, base_url: http://gpu7:8000/v1}}
    """

    batch_api = None  # no batch mode for raw completions (llm.<role>.mode: batch is refused, naming the key)

    def __init__(self, cfg: RoleConfig, key: str = "llm.<role>") -> None:
        super().__init__(cfg, key)
        self.identity = f"openai_completions:{self.base_url}:{cfg.model}"

    async def chat(self, request: ChatRequest, params: ResolvedParams) -> ChatResponse:
        client = self.client()
        prompt = messages_as_dicts(request.messages)[-1]["content"]
        resp = await self._send(lambda: client.completions.create(
            model=params.model, prompt=prompt, max_tokens=params.max_tokens, timeout=params.timeout_s,
            **params.sampling(), **({"seed": params.sample} if params.sample else {}),
            **({"logprobs": params.top_logprobs} if params.top_logprobs else {}),
            **({"extra_body": dict(params.extra)} if params.extra else {}),
        ), params.timeout_s)
        choices = getattr(resp, "choices", None)
        text = getattr(choices[0], "text", None) if isinstance(choices, list) and choices else None
        usage = getattr(resp, "usage", None)
        if not isinstance(text, str):
            if (billed := billed_usage(usage)) is not None:
                raise no_text_error("none", billed, what="no completion text")
            raise TransientError("malformed response (no completion text)")
        finish = getattr(choices[0], "finish_reason", None)
        pt, ct = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
        if not isinstance(pt, int) or not isinstance(ct, int):
            pt, ct = estimate_prompt_tokens(request.messages), estimate_text_tokens(text)
        return ChatResponse(text=text, finish_reason=finish if isinstance(finish, str) else "unknown",
                            prompt_tokens=pt, completion_tokens=ct, **served(resp),
                            logprobs=_logprobs(getattr(choices[0], "logprobs", None), TokenLogprobs.from_completions))


def _logprobs(raw: Any, parse: Callable[[Any], TokenLogprobs]) -> TokenLogprobs | None:
    """The reply's logprobs (None when the server sent none); unreadable ones are a malformed body."""
    if raw is None:
        return None
    try:
        return parse(raw)
    except (ValueError, TypeError, AttributeError) as e:
        raise TransientError(f"malformed response (logprobs: {e})") from None
