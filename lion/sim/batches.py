"""The sim server's batch APIs: OpenAI's Batch API (files + batches) and Anthropic's Message Batches.

    SimServer(responder, batch_delay_s=2.0, batch_fail_rate=0.05, batch_expire_rate=0.02)   # lion.sim.server

OpenAI: POST /v1/files (multipart, purpose "batch"), POST /v1/batches {input_file_id, endpoint, completion_window},
GET /v1/batches/{id}, GET /v1/files/{id}/content (the output and error files, JSONL by custom_id).
Anthropic: POST /v1/messages/batches {requests: [{custom_id, params}]}, GET /v1/messages/batches/{id},
GET /v1/messages/batches (the list, newest first),
GET /v1/messages/batches/{id}/results (JSONL: succeeded / errored / expired per custom_id).

A batch ends `delay_s` after its creation; then each item is answered through the server's own request path
(strict checks, context limit, responder, prompt cache; no rate limit, no injected faults) unless its fate says it
expires (`expire_rate`) or errors with a 500 (`fail_rate`). The fate is drawn from (seed, custom_id, how many
batches carried this custom_id before), so a resubmitted item meets a new fate, reproducibly. Every answered item
is logged like an online request (path = the batch endpoint), so `SimServer.completed_by_hash()` counts paid
batch items too, and `created` lists every batch ever created (a test can check nothing was resubmitted).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

ENDPOINTS = ("/v1/chat/completions",)
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class Answer:
    """What the server's request path made of one item: an HTTP status and a wire-format body."""

    status: int
    payload: dict[str, Any]


Answerer = Callable[[str, dict[str, Any], str], Awaitable[Answer]]  # (api, body, batch id) -> Answer


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class _Batch:
    id: str
    api: str  # "openai" | "anthropic"
    items: list[tuple[str, dict[str, Any]]]  # (custom_id, request body)
    created: float
    ends: float
    meta: dict[str, Any] = field(default_factory=dict)
    status: str = "in_progress"
    done: int = 0
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    results: list[dict[str, Any]] = field(default_factory=list)  # anthropic result lines
    output: list[dict[str, Any]] = field(default_factory=list)  # openai output file lines
    errors: list[dict[str, Any]] = field(default_factory=list)  # openai error file lines
    ended_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None


class BatchStore:
    def __init__(self, answer: Answerer, *, delay_s: float = 0.0, fail_rate: float = 0.0, expire_rate: float = 0.0,
                 seed: int = 0, root_url: Callable[[], str] = lambda: "") -> None:
        if not (0 <= fail_rate <= 1 and 0 <= expire_rate <= 1 and fail_rate + expire_rate <= 1):
            raise ValueError("batch fail_rate and expire_rate must be in [0, 1] and sum to at most 1")
        self.answer = answer
        self.delay_s, self.fail_rate, self.expire_rate, self.seed = delay_s, fail_rate, expire_rate, seed
        self.root_url = root_url
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, _Batch] = {}
        self.created: list[str] = []  # every batch id ever created, in order
        self._seen: collections.Counter[str] = collections.Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()
        self._n = 0

    def _next(self, prefix: str) -> str:
        with self._lock:
            self._n += 1
            return f"{prefix}{self._n:06d}"

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------ files (OpenAI)
    def upload(self, filename: str, data: bytes, purpose: str) -> tuple[int, dict[str, Any]]:
        if purpose != "batch":
            return 400, _oa_error(f"purpose {purpose!r} is not supported by the sim server (only 'batch')", "purpose")
        fid = self._next("file-sim")
        self.files[fid] = {"bytes": data, "filename": filename, "purpose": purpose, "created_at": int(time.time())}
        return 200, self._file_object(fid)

    def _file_object(self, fid: str) -> dict[str, Any]:
        f = self.files[fid]
        return {"id": fid, "object": "file", "bytes": len(f["bytes"]), "created_at": f["created_at"],
                "filename": f["filename"], "purpose": f["purpose"], "status": "processed"}

    def file_content(self, fid: str) -> bytes | None:
        f = self.files.get(fid)
        return None if f is None else f["bytes"]

    def file_info(self, fid: str) -> tuple[int, dict[str, Any]]:
        if fid not in self.files:
            return 404, _oa_error(f"No such File object: {fid}", "id")
        return 200, self._file_object(fid)

    # ------------------------------------------------------------------ batches (OpenAI)
    def create_openai(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        fid, endpoint = body.get("input_file_id"), body.get("endpoint")
        if body.get("completion_window") != "24h":
            return 400, _oa_error("completion_window: only '24h' is supported", "completion_window")
        if endpoint not in ENDPOINTS:
            return 400, _oa_error(f"endpoint {endpoint!r} is not supported by the sim server", "endpoint")
        data = self.file_content(str(fid))
        if data is None:
            return 404, _oa_error(f"No such File object: {fid}", "input_file_id")
        items, problems = [], []
        ids: set[str] = set()
        for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                cid, body_n = row["custom_id"], row["body"]
                if row.get("method") != "POST" or row.get("url") != endpoint or not isinstance(body_n, dict):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                problems.append({"code": "invalid_request", "line": n, "param": None,
                                 "message": "each line must be {custom_id, method: POST, url: the endpoint, body}"})
                continue
            if cid in ids:
                problems.append({"code": "duplicate_custom_id", "line": n, "param": "custom_id",
                                 "message": f"The custom_id {cid!r} is used more than once in the file."})
            ids.add(cid)
            items.append((str(cid), body_n))
        now = time.time()
        b = _Batch(self._next("batch_sim"), "openai", items, now, now + self.delay_s,
                   meta={"input_file_id": fid, "endpoint": endpoint, "metadata": body.get("metadata")})
        self.batches[b.id] = b
        self.created.append(b.id)
        if problems or not items:
            b.status, b.ended_at = "failed", now
            b.meta["errors"] = problems or [{"code": "empty_file", "line": None, "param": None,
                                             "message": "The input file has no requests."}]
        else:
            self._start(b)
        return 200, self._openai_object(b)

    def get_openai(self, bid: str) -> tuple[int, dict[str, Any]]:
        b = self.batches.get(bid)
        if b is None or b.api != "openai":
            return 404, _oa_error(f"No such Batch object: {bid}", "id")
        return 200, self._openai_object(b)

    def list_openai(self, limit: int = 20, after: str | None = None) -> tuple[int, dict[str, Any]]:
        """GET /v1/batches: newest first, `limit` per page, paged with `after` (a batch id)."""
        ids = [i for i in reversed(self.created) if self.batches[i].api == "openai"]
        if after is not None:
            ids = ids[ids.index(after) + 1:] if after in ids else []
        page = ids[:max(1, min(limit, 100))]
        data = [self._openai_object(self.batches[i]) for i in page]
        return 200, {"object": "list", "data": data, "first_id": page[0] if page else None,
                     "last_id": page[-1] if page else None, "has_more": len(ids) > len(page)}

    def _openai_object(self, b: _Batch) -> dict[str, Any]:
        ok = b.counts["ok"]
        return {
            "id": b.id, "object": "batch", "endpoint": b.meta["endpoint"], "input_file_id": b.meta["input_file_id"],
            "completion_window": "24h", "status": b.status, "created_at": int(b.created),
            "in_progress_at": int(b.created), "expires_at": int(b.created + 86400),
            "completed_at": int(b.ended_at) if b.ended_at and b.status == "completed" else None,
            "failed_at": int(b.ended_at) if b.ended_at and b.status == "failed" else None,
            "expired_at": int(b.ended_at) if b.ended_at and b.status == "expired" else None,
            "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
            "errors": {"object": "list", "data": b.meta["errors"]} if b.meta.get("errors") else None,
            "request_counts": {"total": len(b.items), "completed": ok, "failed": b.done - ok},
            "metadata": b.meta.get("metadata"),
        }

    # ------------------------------------------------------------------ message batches (Anthropic)
    def create_anthropic(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        reqs = body.get("requests")
        if not isinstance(reqs, list) or not reqs:
            return 400, _an_error("requests: must be a non-empty list")
        items: list[tuple[str, dict[str, Any]]] = []
        ids: set[str] = set()
        for i, r in enumerate(reqs):
            cid = r.get("custom_id") if isinstance(r, dict) else None
            if not isinstance(cid, str) or not _CUSTOM_ID.match(cid):
                return 400, _an_error(f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if cid in ids:
                return 400, _an_error(f"requests.{i}.custom_id: duplicate custom_id {cid!r}")
            if not isinstance(r.get("params"), dict):
                return 400, _an_error(f"requests.{i}.params: Field required")
            ids.add(cid)
            items.append((cid, r["params"]))
        now = time.time()
        b = _Batch(self._next("msgbatch_sim"), "anthropic", items, now, now + self.delay_s)
        self.batches[b.id] = b
        self.created.append(b.id)
        self._start(b)
        return 200, self._anthropic_object(b)

    def get_anthropic(self, bid: str) -> tuple[int, dict[str, Any]]:
        b = self.batches.get(bid)
        if b is None or b.api != "anthropic":
            return 404, _an_error(f"message batch {bid} not found", "not_found_error")
        return 200, self._anthropic_object(b)

    def list_anthropic(self, limit: int = 20, after_id: str | None = None) -> tuple[int, dict[str, Any]]:
        """GET /v1/messages/batches: newest first, `limit` per page, paged with `after_id` (a batch id)."""
        ids = [i for i in reversed(self.created) if self.batches[i].api == "anthropic"]
        if after_id is not None:
            ids = ids[ids.index(after_id) + 1:] if after_id in ids else []
        page = ids[:max(1, min(limit, 1000))]
        return 200, {"data": [self._anthropic_object(self.batches[i]) for i in page], "has_more": len(ids) > len(page),
                     "first_id": page[0] if page else None, "last_id": page[-1] if page else None}

    def anthropic_results(self, bid: str) -> tuple[int, dict[str, Any] | bytes]:
        b = self.batches.get(bid)
        if b is None or b.api != "anthropic":
            return 404, _an_error(f"message batch {bid} not found", "not_found_error")
        if b.status != "ended":
            return 400, _an_error(f"message batch {bid} is still in progress")
        return 200, "".join(json.dumps(r) + "\n" for r in b.results).encode("utf-8")

    def _anthropic_object(self, b: _Batch) -> dict[str, Any]:
        ended = b.status == "ended"
        c = b.counts
        return {
            "id": b.id, "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
            "request_counts": {"processing": len(b.items) - b.done, "succeeded": c["ok"], "errored": c["errored"],
                               "canceled": 0, "expired": c["expired"]},
            "created_at": _iso(b.created), "expires_at": _iso(b.created + 86400),
            "ended_at": _iso(b.ended_at) if b.ended_at else None, "archived_at": None, "cancel_initiated_at": None,
            "results_url": f"{self.root_url()}/v1/messages/batches/{b.id}/results" if ended else None,
        }

    # ------------------------------------------------------------------ processing
    def _start(self, b: _Batch) -> None:
        task = asyncio.get_running_loop().create_task(self._process(b))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fate(self, cid: str) -> str:
        with self._lock:
            k = self._seen[cid]
            self._seen[cid] += 1
        u = random.Random(f"{self.seed}:batch:{cid}:{k}").random()
        return "expired" if u < self.expire_rate else "errored" if u < self.expire_rate + self.fail_rate else "answer"

    async def _process(self, b: _Batch) -> None:
        await asyncio.sleep(max(0.0, b.ends - time.time()))
        for n, (cid, body) in enumerate(b.items):
            fate = self._fate(cid)
            if fate == "answer":
                ans = await self.answer(b.api, body, b.id)
                kind = "ok" if ans.status == 200 else "errored"
            elif fate == "errored":
                ans, kind = Answer(500, _oa_error("The server had an error while processing your request.", None)
                                   if b.api == "openai" else _an_error("Internal server error", "api_error")), "errored"
            else:
                ans, kind = Answer(0, {}), "expired"
            self._add_result(b, n, cid, kind, ans)
            b.done += 1
            b.counts[kind] += 1
        b.ended_at = time.time()
        if b.api == "anthropic":
            b.status = "ended"
            return
        if b.output:
            b.output_file_id = self._store_lines(f"{b.id}_output.jsonl", b.output)
        if b.errors:
            b.error_file_id = self._store_lines(f"{b.id}_error.jsonl", b.errors)
        b.status = "expired" if b.counts["expired"] == len(b.items) else "completed"

    def _add_result(self, b: _Batch, n: int, cid: str, kind: str, ans: Answer) -> None:
        if b.api == "anthropic":
            result: dict[str, Any] = {"type": "succeeded", "message": ans.payload} if kind == "ok" else \
                {"type": "errored", "error": ans.payload} if kind == "errored" else {"type": "expired"}
            b.results.append({"custom_id": cid, "result": result})
            return
        rid = f"batch_req_{b.id}_{n}"
        if kind == "expired":
            b.errors.append({"id": rid, "custom_id": cid, "response": None, "error": {
                "code": "batch_expired",
                "message": "This request could not be executed before the completion window expired."}})
            return
        line = {"id": rid, "custom_id": cid, "error": None,
                "response": {"status_code": ans.status, "request_id": rid, "body": ans.payload}}
        (b.output if kind == "ok" else b.errors).append(line)

    def _store_lines(self, name: str, lines: list[dict[str, Any]]) -> str:
        fid = self._next("file-sim")
        data = "".join(json.dumps(x) + "\n" for x in lines).encode("utf-8")
        self.files[fid] = {"bytes": data, "filename": name, "purpose": "batch_output", "created_at": int(time.time())}
        return fid


def _oa_error(message: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


def _an_error(message: str, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}
