"""Batch mode (`llm.<role>.mode: batch`): a phase's calls go out through the provider's batch API at its discount.

    llm: {teacher: {mode: batch, batch_poll_s: 60}}        # OpenAI Batch API / Anthropic Message Batches

The gateway (lion.teachers.gateway) takes this path for a role in batch mode, after the call cache: only calls not
in the cache go out. `BatchRunner.run`:
1. resume: the role's batches recorded in RUN/calls.sqlite and not ended yet, holding any of these calls, are
   polled again; their calls are not resubmitted;
2. the other calls go out as one or more batches within the provider's limits (`max_items`, `max_bytes`,
   `llm.<role>.batch_max_items`), each worst case reserved against the budget at the batch price; each batch is
   committed to the run directory (with every item's params and messages) as an intent before its create request,
   under a tag sent as the batch's metadata, and named by its id once the provider answers; an intent a kill
   left unnamed is looked up by its tag on resume (`BatchAPI.find`), so a batch is never paid twice;
3. every `batch_poll_s` the open batches are polled; an ended batch's results go into the same call cache as online
   calls (the key does not depend on the mode) and the ledger, priced at `llm.prices.<model>.batch_discount`, mode
   "batch"; an item billed without an answer (no text, a refusal) is charged there too and fails with its reason;
4. items a batch errored transiently (5xx, overloaded, rate limited), expired, cancelled or left out go in the next
   batch, up to `batch_attempts` batches; then online if `batch_fallback_online`, else they count as failed. An item
   refused for good (a 400) fails; auth, quota, unknown model and refused parameters stop the run (ProviderError).
A progress bar shows batches submitted / ended, items done and spend.

A provider offers batch mode with `batch_api()` returning a `BatchAPI` (lion.teachers.openai_batch,
lion.teachers.anthropic_provider): submit lines, poll a batch, fetch its results, with the same request bodies and
error mapping as its online calls.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from ..config import RoleConfig
from .base import ChatProvider, ChatResponse, PermanentError, TransientError
from .base import failure_reason as _reason
from .batchapi import BatchAPI, BatchLine, BatchLost, BatchOutcome, BatchProgress  # noqa: F401 - also this module's
from .calls import BatchState, CallItem, CallResult, permanent_message
from .store import CallStore


class BatchHost(Protocol):
    """What the batch path asks of the gateway that runs it (lion.teachers.gateway.Gateway): its call store, budget,
    recording of outcomes, fatal stops, messages, and its online path for the fallback."""

    store: CallStore

    def batch_factor(self, model: str) -> float: ...

    def reserve(self, usd: float, tokens: int) -> bool: ...

    def release(self, usd: float, tokens: int) -> None: ...

    async def run_online(self, role: str, phase: str, rc: RoleConfig, provider: ChatProvider, items: list[CallItem],
                         pending: dict[str, list[int]], keys: list[str], results: list[CallResult | None],
                         bar: Any, state: BatchState) -> None: ...

    def record_success(self, role: str, phase: str, provider: ChatProvider, key: str, model: str,
                       key_fields: dict[str, Any], messages: list[dict[str, str]], resp: ChatResponse, attempts: int,
                       mode: str, state: BatchState) -> CallResult: ...

    def record_failure(self, role: str, phase: str, provider: ChatProvider, it: CallItem, error: str,
                       status: int | None, attempts: int, reason: str, state: BatchState,
                       mode: str = "online", billed: ChatResponse | None = None) -> CallResult: ...

    def charge(self, role: str, resp: ChatResponse, model: str, mode: str, state: BatchState) -> float: ...

    def fill(self, results: list[CallResult | None], idxs: list[int], res: CallResult) -> None: ...

    def is_fatal(self, e: PermanentError) -> bool: ...

    def set_fatal(self, state: BatchState, role: str, rc: RoleConfig, provider: ChatProvider,
                  e: PermanentError) -> None: ...

    def say(self, line: str) -> None: ...

    def note(self, line: str) -> None: ...

log = logging.getLogger("lion.teachers")


def chunks(lines: Sequence[BatchLine], max_items: int, max_bytes: int, size: Any) -> list[list[BatchLine]]:
    """Split lines into batches of at most max_items lines and max_bytes bytes (a line is never split)."""
    out: list[list[BatchLine]] = []
    cur: list[BatchLine] = []
    nbytes = 0
    for line in lines:
        n = size(line)
        if cur and (len(cur) >= max_items or nbytes + n > max_bytes):
            out.append(cur)
            cur, nbytes = [], 0
        cur.append(line)
        nbytes += n
    if cur:
        out.append(cur)
    return out


class BatchRunner:
    def __init__(self, gw: BatchHost, role: str, phase: str, rc: RoleConfig, provider: ChatProvider, api: BatchAPI,
                 items: list[CallItem], pending: dict[str, list[int]], results: list[CallResult | None], bar: Any,
                 state: BatchState) -> None:
        self.gw, self.role, self.phase, self.rc, self.provider, self.api = gw, role, phase, rc, provider, api
        self.items, self.pending, self.results, self.bar, self.state = items, pending, results, bar, state
        self.todo: set[str] = set(pending)  # calls of this chat_many still without an outcome
        self.sent: collections.Counter[str] = collections.Counter()  # batches each call went in
        self.last_error: dict[str, Exception] = {}
        self.active: dict[str, list[str]] = {}  # batch id -> keys
        self.reserved: dict[str, tuple[float, int]] = {}  # key -> budget reservation
        self.n_submitted = self.n_ended = self.n_resumed = 0
        self.factor = gw.batch_factor(rc.model)
        self.max_items = min(api.max_items, rc.batch_max_items) if rc.batch_max_items else api.max_items

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        await self._find_intents()
        self._resume()
        while self.state.stop != "fatal":
            todo = [k for k in self.pending if k in self.todo and not self._in_flight(k)
                    and self.sent[k] < self.rc.batch_attempts]
            if todo and self.state.stop is None:
                await self._submit(todo)
            if not self.active:
                break
            for bid in await self._wait_any():
                await self._collect(bid)
        for key in list(self.reserved):
            self._release(key)
        if self.state.stop is not None:
            return
        left = [k for k in self.pending if k in self.todo]
        if left and self.rc.batch_fallback_online:
            self.gw.say(f"llm.{self.role} ({self.phase}): {len(left)} calls still failed after "
                        f"{self.rc.batch_attempts} batches go online at the full price (batch_fallback_online)")
            await self.gw.run_online(self.role, self.phase, self.rc, self.provider, self.items, self.pending, left,
                                     self.results, self.bar, self.state)
            return
        for key in left:
            err = self.last_error.get(key) or TransientError("no result", reason="batch_missing")
            it = self.items[self.pending[key][0]]
            res = self.gw.record_failure(self.role, self.phase, self.provider, it,
                                         f"gave up after {self.sent[key]} batches: {err}",
                                         getattr(err, "status", None), self.sent[key], _reason(err), self.state,
                                         mode="batch")
            self.gw.fill(self.results, self.pending[key], res)
            self.bar.update(len(self.pending[key]))

    def _in_flight(self, key: str) -> bool:
        return any(key in keys for keys in self.active.values())

    # ------------------------------------------------------------------ resume
    async def _find_intents(self) -> None:
        """Batches written as intents by a run killed before it learnt their ids: found by their tag, they are
        re-polled like any open batch; not found (the create request never arrived), their calls go out again.
        A lookup that keeps failing (llm.<role>.outage_s) stops the run with the intent kept: its calls are held
        back, not sent a second time, until a later run finds out whether the provider has them."""
        known = frozenset(b["id"] for b in self.gw.store.batches())
        for intent in self.gw.store.intents(self.role):
            failing_since: float | None = None
            while True:
                try:
                    bid = await self.api.find(intent["tag"], intent["created"], int(intent["n"]), known)
                    break
                except TransientError as e:
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since >= max(self.rc.outage_s, self.rc.batch_poll_s):
                        self._stop(f"could not look up batch {intent['tag']} (created just before the last stop) "
                                   f"for llm.{self.role}.outage_s ({e}); its calls are held back rather than paid "
                                   "twice")
                        return
                    await asyncio.sleep(self.rc.batch_poll_s)
                except PermanentError as e:
                    self.gw.set_fatal(self.state, self.role, self.rc, self.provider, e)
                    return
            if bid is None:
                self.gw.store.drop_intent(intent["tag"])
            else:
                self.gw.store.promote(intent["tag"], bid)
                self.gw.say(f"llm.{self.role} ({self.phase}): found batch {bid} by its tag {intent['tag']} (created "
                            "just before the last stop; not resubmitted)")

    def _resume(self) -> None:
        """Re-poll the role's open batches that hold any call wanted now (they are never submitted again)."""
        for b in self.gw.store.open_batches(self.role):
            keys = b["keys"]
            if not self.todo.intersection(keys):
                continue
            self.active[b["id"]] = keys
            self.n_resumed += 1
            for k in keys:
                if k in self.todo:
                    self.sent[k] += 1
                    self._reserve(k)
            self.gw.say(f"llm.{self.role} ({self.phase}): re-polling batch {b['id']} ({len(keys)} calls, submitted "
                        "before the last stop; not resubmitted)")

    # ------------------------------------------------------------------ budget
    def _reserve(self, key: str) -> bool:
        it = self.items[self.pending[key][0]]
        usd, tokens = it.worst_usd * self.factor, it.need_tokens
        if not self.gw.reserve(usd, tokens):
            return False
        self.reserved[key] = (usd, tokens)
        return True

    def _release(self, key: str) -> None:
        got = self.reserved.pop(key, None)
        if got is not None:
            self.gw.release(*got)

    # ------------------------------------------------------------------ submit
    async def _submit(self, keys: list[str]) -> None:
        lines = []
        for k in keys:
            if k not in self.reserved and not self._reserve(k):
                self.state.stop = "budget"  # what fits goes out; BudgetExceeded once those batches ended
                break
            it = self.items[self.pending[k][0]]
            lines.append(BatchLine(k, it.request, it.params))
        for chunk in chunks(lines, self.max_items, self.api.max_bytes, self.api.line_size):
            attempt = max(self.sent[line.custom_id] for line in chunk) + 1
            tag = f"lion:{self.role}:{self.phase}:{attempt}:{uuid.uuid4().hex[:16]}"
            # the intent first: a kill after the provider created the batch and before we learn its id leaves
            # the tag, by which a resume finds the batch instead of paying for it twice
            self.gw.store.record_batch(tag, role=self.role, phase=self.phase, provider=self.provider.identity,
                                       model=self.rc.model, attempt=attempt, status="submitting",
                                       items=[(ln.custom_id, ln.params.key_fields(),
                                               [{"role": r, "content": c} for r, c in ln.request.messages])
                                              for ln in chunk])
            bid = await self._submit_one(chunk, attempt, tag)
            if bid is None:
                self.gw.store.drop_intent(tag)
                return
            self.gw.store.promote(tag, bid)
            self.active[bid] = [ln.custom_id for ln in chunk]
            for ln in chunk:
                self.sent[ln.custom_id] += 1
            self.n_submitted += 1
            self.state.stats["batches_submitted"] += 1
            self.gw.note(f"llm.{self.role} ({self.phase}): submitted batch {bid} ({len(chunk)} calls, "
                         f"attempt {attempt})")
            self._postfix()

    async def _submit_one(self, chunk: list[BatchLine], attempt: int, tag: str) -> str | None:
        """Create one batch, backing off on transient errors for up to outage_s; None when it cannot be."""
        first = time.monotonic()
        delay = self.rc.backoff_initial_s
        while True:
            try:
                return await self.api.submit(chunk, tag)
            except TransientError as e:
                if time.monotonic() - first >= max(self.rc.outage_s, self.rc.backoff_initial_s):
                    self._fail_lines(chunk, f"could not submit a batch: {e}", e)
                    return None
                self.state.stats["transient_errors"] += 1
                await asyncio.sleep(min(delay, self.rc.backoff_max_s) if e.retry_after is None else e.retry_after)
                delay *= 2
            except PermanentError as e:
                if self.gw.is_fatal(e):
                    self.gw.set_fatal(self.state, self.role, self.rc, self.provider, e)
                else:
                    self._fail_lines(chunk, f"batch refused: {e}", e)
                return None

    def _fail_lines(self, chunk: list[BatchLine], error: str, exc: Exception) -> None:
        for ln in chunk:
            key = ln.custom_id
            self._release(key)
            self.todo.discard(key)
            it = self.items[self.pending[key][0]]
            res = self.gw.record_failure(self.role, self.phase, self.provider, it, error,
                                         getattr(exc, "status", None), self.sent[key], _reason(exc), self.state,
                                         mode="batch")
            self.gw.fill(self.results, self.pending[key], res)
            self.bar.update(len(self.pending[key]))

    # ------------------------------------------------------------------ wait and collect
    async def _wait_any(self) -> list[str]:
        """Poll the open batches every batch_poll_s until at least one has ended; the ended ids."""
        failing_since: float | None = None
        while True:
            ended, done = [], 0
            for bid in list(self.active):
                try:
                    p = await self.api.progress(bid)
                except BatchLost:
                    self._lost(bid)
                    continue
                except TransientError as e:
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since >= max(self.rc.outage_s, self.rc.batch_poll_s):
                        self._stop(f"cannot poll batch {bid} for llm.{self.role}.outage_s ({e})")
                        return []
                    continue
                except PermanentError as e:
                    self.gw.set_fatal(self.state, self.role, self.rc, self.provider, e)
                    return []
                failing_since = None
                done += p.done
                if p.ended:
                    ended.append(bid)
            self._postfix(in_batch=done)
            if ended or not self.active:
                return ended
            await asyncio.sleep(self.rc.batch_poll_s)

    def _stop(self, why: str) -> None:
        from ..errors import ProviderError

        if self.state.stop != "fatal":
            self.state.stop = "fatal"
            self.state.fatal = ProviderError(f"llm.{self.role}: {why}; the batches stay recorded in the run directory "
                                             "and are polled again (not resubmitted) when the same command runs again")

    def _lost(self, bid: str) -> None:
        keys = self.active.pop(bid)
        self.gw.store.end_batch(bid, "lost")
        self.gw.say(f"llm.{self.role} ({self.phase}): batch {bid} is unknown to the provider; its {len(keys)} calls "
                    "go out again")
        for k in keys:
            self.last_error[k] = TransientError(f"batch {bid} lost", reason="batch_lost")

    async def _collect(self, bid: str) -> None:
        try:
            outcomes = await self.api.results(bid)
        except BatchLost:
            self._lost(bid)
            return
        except TransientError as e:  # try the download again at the next poll
            log.debug("results of batch %s not downloadable yet: %s", bid, e)
            await asyncio.sleep(self.rc.batch_poll_s)
            return
        except PermanentError as e:  # the batch stays recorded as submitted: a re-run polls it again
            self.gw.set_fatal(self.state, self.role, self.rc, self.provider, e)
            return
        keys = self.active.pop(bid)
        wanted = set(keys)
        seen: set[str] = set()
        n_ok = 0
        for out in outcomes:
            key = out.custom_id
            if key not in wanted or key in seen:
                continue
            seen.add(key)
            if out.response is not None:
                self._answered(bid, key, out.response)
                n_ok += 1
            elif isinstance(out.error, PermanentError):
                if self.gw.is_fatal(out.error):
                    self.gw.set_fatal(self.state, self.role, self.rc, self.provider, out.error)
                self._refused(bid, key, out.error)
            else:
                self.last_error[key] = out.error or TransientError("no result", reason="batch_missing")
        for key in wanted - seen:
            self.last_error[key] = TransientError(f"missing from the results of batch {bid}",
                                                  reason="batch_missing")
        self.gw.store.end_batch(bid, "ended")
        self.n_ended += 1
        self.state.stats["batches_ended"] += 1
        self.gw.note(f"llm.{self.role} ({self.phase}): batch {bid} ended: {n_ok} of {len(keys)} answered")
        self._postfix()

    def _answered(self, bid: str, key: str, resp: ChatResponse) -> None:
        self._release(key)
        if key in self.pending:
            if key not in self.todo:  # already has its outcome (e.g. listed twice)
                return
            it = self.items[self.pending[key][0]]
            model, fields, messages = it.params.model, it.params.key_fields(), \
                [{"role": r, "content": c} for r, c in it.request.messages]
        else:  # a call of an earlier run's batch that nobody asks for now: paid for, so cached all the same
            stored = self.gw.store.batch_item(bid, key)
            if stored is None:
                return
            fields, messages = stored
            model = str(fields.get("model", self.rc.model))
        res = self.gw.record_success(self.role, self.phase, self.provider, key, model, fields, messages, resp,
                                     max(1, self.sent[key]), "batch", self.state)
        if key in self.pending:
            self.todo.discard(key)
            self.gw.fill(self.results, self.pending[key], res)
            self.bar.update(len(self.pending[key]))

    def _refused(self, bid: str, key: str, err: PermanentError) -> None:
        """An item that failed for good; a reply billed without an answer (no text, a refusal) is charged even when
        no call of this run asks for it (an earlier run's batch): paid for, so in the ledger all the same."""

        self._release(key)
        if key not in self.todo:
            if err.billed is not None and key not in self.pending and (stored := self.gw.store.batch_item(bid, key)):
                model = str(stored[0].get("model", self.rc.model))
                usd = self.gw.charge(self.role, err.billed, model, "batch", self.state)
                self.gw.store.record_billed(role=self.role, model=model, phase=self.phase, mode="batch",
                                            billed=err.billed, usd=usd)
            return
        self.todo.discard(key)
        it = self.items[self.pending[key][0]]
        res = self.gw.record_failure(self.role, self.phase, self.provider, it, permanent_message(err),
                                     err.status, self.sent[key], _reason(err), self.state, mode="batch",
                                     billed=err.billed)
        self.gw.fill(self.results, self.pending[key], res)
        self.bar.update(len(self.pending[key]))

    def _postfix(self, in_batch: int | None = None) -> None:
        s = self.state
        extra = f" in-batch={in_batch}" if in_batch is not None else ""
        self.bar.set_postfix_str(f"batches {self.n_submitted + self.n_resumed} sent/{self.n_ended} ended{extra} "
                                 f"${s.usd:.4f} failed={s.failed}", refresh=True)
