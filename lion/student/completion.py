"""What one student answer is, whichever backend wrote it, and the dtype every backend answers in.

    from lion.student.completion import Completion, resolve_dtype      # lion.student.infer, vllm_backend, serve

`Completion` is the text with whether it was cut at max_new_tokens; `resolve_dtype` turns student.infer.dtype
"auto" into the one concrete dtype both the transformers and the vLLM backend use (bfloat16 on CUDA, float32 on CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import InferConfig


@dataclass(frozen=True)
class Completion:
    """One answer of the student: its text (prompt stripped, ended at the first stop token, special tokens removed);
    `truncated`: it was cut at max_new_tokens, no stop token within them (transformers), finish_reason "length"
    (vLLM, a server); `tokens`: its token ids without the stop token, when the backend gives them."""

    text: str
    truncated: bool = False
    tokens: tuple[int, ...] | None = None


OnAnswer = Callable[[int, Completion], None]


def resolve_dtype(cfg: InferConfig) -> str:
    """The dtype every backend answers in: student.infer.dtype, with auto = bfloat16 on CUDA, float32 on CPU."""
    if cfg.dtype != "auto":
        return cfg.dtype
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"
