"""OpenAI's Batch API for the openai provider (`llm.<role>.mode: batch`): upload JSONL, create, poll, download.

    from lion.teachers.openai_batch import OpenAIBatchAPI      # made by OpenAICompatProvider.batch_api()

Each line is `{"custom_id": <call-cache key>, "method": "POST", "url": "/v1/chat/completions", "body": ...}` with the
very body the provider sends online (`OpenAICompatProvider.request_body`). A batch holds at most 50,000 requests and
200 MB (OpenAI's limits; lion keeps 10 MB of margin). Results come from the output file (answers, parsed like online
ones) and the error file (per-item HTTP errors, mapped like online ones; `batch_expired` items go in the next batch).
A batch that failed validation fails each of its items with the batch's own error messages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import openai
from openai.types.chat import ChatCompletion

from .base import ChatResponse, PermanentError, TransientError
from .batchapi import BatchLine, BatchLost, BatchOutcome, BatchProgress
from .httperrors import classify_status


class WireProvider(Protocol):
    """What the Batch API takes from the provider that sends the same calls online (lion.teachers.openai_compat's
    `OpenAICompatProvider`): its client, request bodies, reply parsing and error mapping."""

    batch_endpoint: str

    def client(self) -> Any: ...

    def request_body(self, request: Any, params: Any) -> dict[str, Any]: ...

    def parse(self, resp: Any, request: Any) -> ChatResponse: ...

    def error_from_body(self, status: int, body: Any) -> Exception: ...

    def clean(self, text: str) -> str: ...

    def _status_error(self, e: Any) -> Exception: ...

ENDED = ("completed", "failed", "expired", "cancelled")


class OpenAIBatchAPI:
    max_items = 50_000
    max_bytes = 190 * 1024 * 1024

    def __init__(self, provider: WireProvider) -> None:
        self.p = provider

    def _line(self, line: BatchLine) -> bytes:
        row = {"custom_id": line.custom_id, "method": "POST", "url": self.p.batch_endpoint,
               "body": self.p.request_body(line.request, line.params)}
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")

    def line_size(self, line: BatchLine) -> int:
        return len(self._line(line))

    def _error(self, e: Exception, batch_id: str | None = None) -> Exception:
        if isinstance(e, openai.APIStatusError):
            if e.status_code == 404 and batch_id is not None:
                return BatchLost(batch_id)
            return self.p._status_error(e)
        if isinstance(e, openai.APITimeoutError):
            return TransientError("timed out")
        if isinstance(e, openai.APIConnectionError):
            return TransientError("connection failed")
        return TransientError(f"malformed response ({type(e).__name__})")

    async def submit(self, lines: Sequence[BatchLine], tag: str) -> str:
        client = self.p.client()
        data = b"".join(self._line(ln) for ln in lines)
        try:
            f = await client.files.create(file=("lion-batch.jsonl", data, "application/jsonl"), purpose="batch")
            b = await client.batches.create(input_file_id=f.id, endpoint=self.p.batch_endpoint,  # type: ignore[arg-type]
                                            completion_window="24h", metadata={"lion": tag})
        except (openai.OpenAIError, ValueError, TypeError) as e:
            raise self._error(e) from None
        return b.id

    async def find(self, tag: str, since: float, n: int, known: frozenset[str]) -> str | None:
        """The batch created with metadata {"lion": tag} (exact, so n and known are not needed): the list is newest
        first, so stop at batches created well before the intent was written."""
        try:
            async for b in self.p.client().batches.list(limit=100):
                if (b.metadata or {}).get("lion") == tag:
                    return b.id
                if b.created_at < since - 300:
                    break
        except (openai.OpenAIError, ValueError, TypeError) as e:
            raise self._error(e) from None
        return None

    async def _retrieve(self, batch_id: str) -> Any:
        try:
            return await self.p.client().batches.retrieve(batch_id)
        except (openai.OpenAIError, ValueError, TypeError) as e:
            raise self._error(e, batch_id) from None

    async def progress(self, batch_id: str) -> BatchProgress:
        b = await self._retrieve(batch_id)
        c = b.request_counts
        done = (c.completed + c.failed) if c is not None else 0
        return BatchProgress(b.status in ENDED, b.status, done, c.total if c is not None else 0)

    async def _file(self, file_id: str) -> list[dict[str, Any]]:
        try:
            content = await self.p.client().files.content(file_id)
            text = content.text
        except (openai.OpenAIError, ValueError, TypeError) as e:
            raise self._error(e) from None
        rows = []
        for line in text.splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # an unreadable line leaves its item without a result: it goes in the next batch
        return rows

    async def results(self, batch_id: str) -> list[BatchOutcome]:
        b = await self._retrieve(batch_id)
        if b.status == "failed":
            return await self._failed(b)
        out: list[BatchOutcome] = []
        for fid in (b.output_file_id, b.error_file_id):
            if fid:
                out += [self._outcome(row) for row in await self._file(fid) if isinstance(row, dict)]
        return out

    def _outcome(self, row: dict[str, Any]) -> BatchOutcome:
        cid = str(row.get("custom_id"))
        resp, err = row.get("response"), row.get("error")
        if isinstance(resp, dict) and resp.get("status_code") == 200:
            try:
                return BatchOutcome(cid, response=self.p.parse(ChatCompletion.model_validate(resp.get("body")), None))
            except (TransientError, PermanentError) as e:
                return BatchOutcome(cid, error=e)
            except ValueError:
                return BatchOutcome(cid, error=TransientError("malformed response in the batch output",
                                                              reason="malformed"))
        if isinstance(resp, dict) and isinstance(resp.get("status_code"), int):
            return BatchOutcome(cid, error=self.p.error_from_body(resp["status_code"], resp.get("body")))
        err = err if isinstance(err, dict) else {}
        msg = self.p.clean(str(err.get("message") or "no response"))[:300]
        expired = err.get("code") == "batch_expired"
        return BatchOutcome(cid, error=TransientError(msg, reason="batch_expired" if expired else "batch_errored"))

    async def _failed(self, b: Any) -> list[BatchOutcome]:
        """A batch that failed validation: each of its items fails with the batch's errors (a 400 each)."""
        errors = getattr(getattr(b, "errors", None), "data", None) or []
        msg = self.p.clean("; ".join(str(getattr(e, "message", e)) for e in errors) or "the batch failed")[:500]
        error = classify_status(400, f"400 batch {b.id} failed: {msg}")
        if isinstance(error, TransientError):
            error = PermanentError(str(error), status=400)
        rows = await self._file(b.input_file_id)
        return [BatchOutcome(str(r.get("custom_id")), error=error) for r in rows if isinstance(r, dict)]
