"""FAKE vllm for tests (see tests/fake_vllm/README.md): records calls, generates nothing real."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

FAKE = True


def _record(event: str, **data: Any) -> None:
    path = os.environ.get("FAKE_VLLM_RECORD")
    if not path:
        return
    row = {"event": event, "pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), **data}
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")


# vLLM's SamplingParams defaults of the fields lion reads back from get_default_sampling_params()
_DEFAULTS = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}


class SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def __getattr__(self, name: str) -> Any:
        if name in _DEFAULTS:
            return self.__dict__["kwargs"].get(name, _DEFAULTS[name])
        raise AttributeError(name)


@dataclass
class CompletionOutput:
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


def fake_answer(ids: list[int]) -> str:
    """The fake's deterministic 'completion' of a prompt: its length and last token id."""
    return f"fake:{len(ids)}:{ids[-1] if ids else -1}"


class LLM:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        _record("LLM", kwargs=kwargs)

    def get_default_sampling_params(self) -> SamplingParams:  # a checkpoint's generation_config.json, as vLLM reads it
        return SamplingParams(**json.loads(os.environ.get("FAKE_VLLM_DEFAULTS", "{}")))

    def generate(self, prompts, sampling_params=None, use_tqdm=True, lora_request=None):
        ids = [p["prompt_token_ids"] for p in prompts]
        lora = None if lora_request is None else vars(lora_request)
        _record("generate", n=len(ids), sampling=getattr(sampling_params, "kwargs", None), lora=lora,
                prompt_lengths=[len(p) for p in ids])
        return [RequestOutput(p, [CompletionOutput(fake_answer(p))]) for p in ids]
