"""An example lion teacher plugin: a provider that is not the openai SDK (stdlib urllib in a worker thread).

    llm: {teacher: {provider: lion_example_plugin:UrllibProvider, base_url: http://127.0.0.1:8000/v1}}
    # or registered as an entry point:  [project.entry-points."lion.teachers"]  urllib-example = "lion_example_plugin:UrllibProvider"

It shows the whole plugin contract: construct from a RoleConfig, expose `identity` (no secrets), implement
`async chat(request, params)`, and raise TransientError / PermanentError so the gateway can retry or fail
fast. Caching, rate limits, retries, budget and progress come from the gateway for free.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request

from lion.config import RoleConfig
from lion.teachers.base import ChatRequest, ChatResponse, PermanentError, ResolvedParams, TransientError


class UrllibProvider:
    def __init__(self, cfg: RoleConfig) -> None:
        if not cfg.base_url:
            raise ValueError("UrllibProvider needs base_url")
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.key_env = cfg.api_key_env
        self.identity = f"urllib-example:{cfg.base_url.rstrip('/')}"
        self.calls = 0

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json",
                   "Authorization": "Bearer " + os.environ.get(self.key_env, "sk-no-key")}
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=payload.get("timeout", 30)) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            retry = e.headers.get("retry-after")
            if e.code == 429 or e.code >= 500:
                raise TransientError(f"HTTP {e.code}", status=e.code, retry_after=float(retry) if retry else None) from None
            raise PermanentError(f"HTTP {e.code}", status=e.code) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
            raise TransientError(f"{type(e).__name__}") from None

    async def chat(self, request: ChatRequest, params: ResolvedParams) -> ChatResponse:
        self.calls += 1
        body = await asyncio.to_thread(self._post, {
            "model": params.model, "temperature": params.temperature, "top_p": params.top_p,
            "max_tokens": params.max_tokens, "messages": [{"role": r, "content": c} for r, c in request.messages],
        })
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"]
            usage = body["usage"]
            if not isinstance(text, str):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise TransientError("malformed response") from None
        return ChatResponse(text, choice.get("finish_reason") or "stop", usage["prompt_tokens"], usage["completion_tokens"])


class NotAProvider:
    """Constructible, but without the chat protocol: loading it must be refused."""

    def __init__(self, cfg: RoleConfig) -> None:
        self.cfg = cfg
