"""What a provider's batch API is to lion (`llm.<role>.mode: batch`): submit lines, poll a batch, fetch its results.

    from lion.teachers.batchapi import BatchAPI, BatchLine      # a provider's batch_api() returns a BatchAPI

Implemented by lion.teachers.openai_batch (OpenAI's Batch API) and lion.teachers.anthropic_provider (Anthropic's
Message Batches); driven by lion.teachers.batch (`BatchRunner`), which the gateway runs for a role in batch mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .base import ChatRequest, ChatResponse, ResolvedParams


@dataclass(frozen=True)
class BatchLine:
    """One call of a batch; `custom_id` is its call-cache key."""

    custom_id: str
    request: ChatRequest
    params: ResolvedParams


@dataclass
class BatchProgress:
    ended: bool
    status: str  # the provider's own word (in_progress, finalizing, completed, ended, expired ...)
    done: int  # items finished so far
    total: int


@dataclass
class BatchOutcome:
    custom_id: str
    response: ChatResponse | None = None
    error: Exception | None = None  # TransientError: goes in the next batch; PermanentError: fails the item


class BatchLost(Exception):
    """The provider does not know this batch (any more): its items go out again."""


class BatchAPI(Protocol):
    max_items: int
    max_bytes: int

    def line_size(self, line: BatchLine) -> int: ...

    async def submit(self, lines: Sequence[BatchLine], tag: str) -> str: ...

    async def progress(self, batch_id: str) -> BatchProgress: ...

    async def results(self, batch_id: str) -> list[BatchOutcome]: ...

    async def find(self, tag: str, since: float, n: int, known: frozenset[str]) -> str | None:
        """The id of the batch an intent stands for (a kill left it unnamed): created with metadata tag `tag`, or
        where the provider keeps no metadata, the batch of `n` requests created nearest after `since` that is not
        one of the `known` ids. None when there is none (then the intent's calls go out again)."""
        ...
