"""The teacher gateway: every LLM call of every phase goes through here.

    from lion.teachers.gateway import Gateway
    gw = Gateway(cfg.llm, run_dir)                       # RUN/calls.sqlite (None: in memory)
    results = gw.chat_many("teacher", "imitation", [[{"role": "user", "content": "Hi"}], ...])
    gw.usage_summary(); gw.close()

What it guarantees, for any provider (lion.teachers.base):
- no paid call twice: a completed call is committed to the SQLite cache before the next one is counted, under
  hash(provider identity, model, messages, sampling params, sample index); re-runs replay it for free.
  With `llm.<role>.cache_namespace` set, "<provider>:ns=<namespace>" replaces the identity (which holds the
  base_url), so a local server on a new port, or a move to another endpoint serving the same model, replays.
  Identical requests in flight together are sent once (a later one is a cache hit). Failures are recorded apart
  and never served as answers.
- rate limits per role (RPM and TPM token buckets, max in flight), one shared cool-down after a 429 that
  honours Retry-After, tenacity retries with exponential backoff + jitter for transient errors (the SDK's own
  retries are off); permanent errors fail fast: 401/403/404 stop the batch with ProviderError, a 400 (e.g.
  context too long) fails only its item.
- a usage ledger (tokens in/out, USD, calls, cached replays per role, model and phase; RUN/usage.json) and a
  budget cap: before each call the worst case (estimated prompt + max_tokens at the model's price) is
  reserved; a call that could push spend over `llm.budget_usd` / `llm.budget_tokens` is not started, the
  calls in flight finish, and BudgetExceeded is raised. Raise the cap and re-run: the cache replays the rest.
- `chat_many` returns the results in input order; `chat_iter` yields (position, result) as calls complete. Both
  read `requests` lazily (any iterable): only the calls in flight are held, so a million-request phase takes
  the memory of `max_in_flight` calls. A progress bar shows done/total, rate, tokens and spend.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter
from tqdm import tqdm

from ..config import LLMConfig, RoleConfig
from ..errors import BudgetExceeded, ConfigError, LionError, ProviderError
from ..layout import RunLayout
from .base import (
    ChatProvider,
    ChatRequest,
    ChatResponse,
    PermanentError,
    ResolvedParams,
    TransientError,
    messages_as_dicts,
    redact,
)
from .plugins import load_provider
from .ratelimit import RoleLimiter
from .store import CallStore
from .tokens import TokenCounter

__all__ = ["CallResult", "Gateway", "load_provider"]

log = logging.getLogger("lion.teachers")

BURST_S = 1.0  # client token buckets hold one second of their rate
HOPELESS = (401, 403, 404)  # auth / unknown model: every call of the batch would fail the same way


@dataclass
class CallResult:
    ok: bool
    text: str | None  # the answer; None when the call failed (an error is never returned as text)
    error: str | None  # why it failed (redacted), None when ok
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached: bool  # replayed from the cache (no HTTP call, no cost)
    attempts: int  # HTTP attempts made in this batch (0 when cached)


@dataclass
class _Item:
    request: ChatRequest
    params: ResolvedParams
    key: str
    need_tokens: int  # estimated prompt + max_tokens (TPM reservation, token budget)
    worst_usd: float


class _Closed(Exception):
    """The consumer of `chat_iter` stopped reading: the calls in flight finish, nothing new starts."""


@dataclass
class _BatchState:
    stop: str | None = None  # "budget" | "fatal"
    fatal: LionError | None = None
    done: int = 0
    failed: int = 0
    tokens: int = 0
    usd: float = 0.0
    stats: dict[str, int] = field(default_factory=lambda: collections.Counter())


class _Budget:
    def __init__(self, llm: LLMConfig, spent_usd: float, spent_tokens: int) -> None:
        self.cap_usd, self.cap_tokens = llm.budget_usd, llm.budget_tokens
        self.spent_usd, self.spent_tokens = spent_usd, spent_tokens
        self.reserved_usd, self.reserved_tokens = 0.0, 0

    def reserve(self, usd: float, tokens: int) -> bool:
        if self.cap_usd is not None and self.spent_usd + self.reserved_usd + usd > self.cap_usd + 1e-12:
            return False
        if self.cap_tokens is not None and self.spent_tokens + self.reserved_tokens + tokens > self.cap_tokens:
            return False
        self.reserved_usd += usd
        self.reserved_tokens += tokens
        return True

    def release(self, usd: float, tokens: int) -> None:
        self.reserved_usd -= usd
        self.reserved_tokens -= tokens

    def message(self) -> str:
        parts = []
        if self.cap_usd is not None:
            parts.append(f"spent ${self.spent_usd:.4f} of ${self.cap_usd:.4f}; raise llm.budget_usd")
        if self.cap_tokens is not None:
            parts.append(f"used {self.spent_tokens} of {self.cap_tokens} tokens; raise llm.budget_tokens")
        return ("budget cap reached before the next call could start: " + " / ".join(parts)
                + " and re-run to resume (every completed call is cached and replays for free)")


class _Wait:
    """429: no extra wait here (the shared cool-down holds every task); Retry-After otherwise honoured;
    else exponential backoff with jitter."""

    def __init__(self, rc: RoleConfig) -> None:
        self.expo = wait_exponential_jitter(multiplier=rc.backoff_initial_s, max=rc.backoff_max_s,
                                            jitter=rc.backoff_initial_s)
        self.max = rc.backoff_max_s

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.status == 429:
            return 0.0
        backoff = float(self.expo(state))
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(max(exc.retry_after, backoff), max(self.max, exc.retry_after))
        return backoff


class Gateway:
    def __init__(self, llm: LLMConfig, run_dir: Path | None, *, progress: bool = True) -> None:
        self.llm = llm
        self.layout = RunLayout(run_dir) if run_dir is not None else None
        self.progress = progress
        self.store = CallStore(self._cache_file())
        self.counter = TokenCounter(llm.chars_per_token, llm.tokenizer)
        self._providers: dict[str, ChatProvider] = {}
        self._limiters: dict[str, RoleLimiter] = {}
        self._budget = _Budget(llm, *self.store.spent())
        self.stats: collections.Counter[str] = collections.Counter()  # attempts, retries, rate_limited, ...
        self._closed = False

    def _cache_file(self) -> Path | None:
        """RUN/calls.sqlite or `llm.cache_path`, refused on a network filesystem (lion.fscheck); None: in memory."""
        from ..fscheck import check_sqlite_home

        if self.layout is not None:
            path: Path | None = self.layout.calls_file(self.llm.cache_path)
        else:
            path = Path(self.llm.cache_path) if self.llm.cache_path else None
        if path is not None:
            check_sqlite_home(path, what="the call cache", allow_network=self.llm.allow_network_fs)
        return path

    # ------------------------------------------------------------------ setup per role
    def provider(self, role: str) -> ChatProvider:
        if role not in self._providers:
            rc = self.llm.role(role)
            self._providers[role] = load_provider(rc, key=f"llm.{role}.provider")
        return self._providers[role]

    def use_role(self, role: str, rc: RoleConfig) -> RoleConfig:
        """Point `role` at `rc` from the next call on (e.g. the student served for this round, under its own model
        name); its client and limiter are rebuilt. Returns the config it replaces."""
        old = self.llm.role(role)
        setattr(self.llm, role, rc)
        self._providers.pop(role, None)
        self._limiters.pop(role, None)
        return old

    def _limiter(self, role: str, rc: RoleConfig) -> RoleLimiter:
        if role not in self._limiters:
            self._limiters[role] = RoleLimiter(rc.rpm, rc.tpm, BURST_S)
        return self._limiters[role]

    def _price(self, model: str) -> tuple[float, float]:
        p = self.llm.prices.get(model)
        return (p.input, p.output) if p is not None else (0.0, 0.0)

    def _check_prices(self, role: str, rc: RoleConfig) -> None:
        if self.llm.budget_usd is not None and rc.model not in self.llm.prices:
            raise ConfigError(f"llm.prices: no price for model {rc.model!r} (llm.{role}.model); one is needed to "
                              f"enforce llm.budget_usd (add llm.prices.{rc.model}: {{input: ..., output: ...}}, "
                              "USD per million tokens)")

    def _item(self, rc: RoleConfig, provider: ChatProvider, req: ChatRequest | Any, index: int) -> _Item:
        try:
            request = req if isinstance(req, ChatRequest) else ChatRequest(messages=req)
        except ValueError as e:
            raise ValueError(f"request {index}: {e}") from None
        params = ResolvedParams(
            model=rc.model,
            temperature=rc.temperature if request.temperature is None else float(request.temperature),
            top_p=rc.top_p if request.top_p is None else float(request.top_p),
            max_tokens=rc.max_tokens if request.max_tokens is None else int(request.max_tokens),
            sample=request.sample,
            timeout_s=rc.timeout_s,
        )
        # llm.<role>.cache_namespace stands in for the endpoint (e.g. a local server on a random port)
        ident = f"{rc.provider}:ns={rc.cache_namespace}" if rc.cache_namespace else provider.identity
        blob = json.dumps({"provider": ident, **params.key_fields(),
                           "messages": [list(m) for m in request.messages]},
                          sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        key = hashlib.sha256(blob.encode("utf-8")).hexdigest()
        prompt = self.counter.prompt(request.messages)
        pin, pout = self._price(params.model)
        return _Item(request, params, key, prompt + params.max_tokens,
                     (prompt * pin + params.max_tokens * pout) / 1e6)

    # ------------------------------------------------------------------ public API
    def chat_many(self, role: str, phase: str, requests: Iterable[ChatRequest | list[dict[str, str]]],
                  desc: str = "") -> list[CallResult]:
        """Sync wrapper: runs its own event loop (in a helper thread if this thread already runs one)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.achat_many(role, phase, requests, desc))
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lion-gateway") as ex:
            return ex.submit(asyncio.run, self.achat_many(role, phase, requests, desc)).result()

    async def achat_many(self, role: str, phase: str, requests: Iterable[ChatRequest | list[dict[str, str]]],
                         desc: str = "") -> list[CallResult]:
        """Every request's result, in input order."""
        results: dict[int, CallResult] = {}
        await self._astream(role, phase, requests, desc, results.__setitem__)
        return [results[i] for i in sorted(results)]

    def chat_iter(self, role: str, phase: str, requests: Iterable[ChatRequest | list[dict[str, str]]],
                  desc: str = "", total: int | None = None) -> Iterator[tuple[int, CallResult]]:
        """(position in `requests`, result) as each call completes: `requests` is read lazily, only the calls in
        flight (`llm.<role>.max_in_flight`) and a short queue of results are held, so a million requests take
        the memory of a few hundred. The calls run on a helper thread's event loop; BudgetExceeded and fatal
        provider errors are raised here after the results before them were yielded."""
        out: queue.Queue[tuple[int, CallResult] | BaseException | None] = queue.Queue(maxsize=1024)
        closed = threading.Event()

        def emit(i: int, res: CallResult) -> None:
            while not closed.is_set():  # back-pressure: the loop waits while the consumer is behind
                try:
                    out.put((i, res), timeout=0.2)
                    return
                except queue.Full:
                    continue
            raise _Closed

        def run() -> None:
            try:
                asyncio.run(self._astream(role, phase, requests, desc, emit, total=total))
                item: BaseException | None = None
            except _Closed:
                item = None
            except BaseException as e:  # noqa: BLE001 - handed to the consumer's thread
                item = e
            while not closed.is_set():
                try:
                    out.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue

        worker = threading.Thread(target=run, name="lion-gateway-stream", daemon=True)
        worker.start()
        try:
            while True:
                got = out.get()
                if got is None:
                    return
                if isinstance(got, BaseException):
                    raise got
                yield got
        finally:
            closed.set()
            worker.join()

    async def _astream(self, role: str, phase: str, requests: Iterable[ChatRequest | list[dict[str, str]]],
                       desc: str, emit: Callable[[int, CallResult], None], total: int | None = None) -> None:
        """Send `requests` with at most `max_in_flight` calls at once, pulling the next request only when a worker
        is free; `emit(i, result)` as each completes (cache hits at once). Identical requests inside the window
        are sent once (a later identical one is a cache hit anyway)."""
        rc = self.llm.role(role)
        provider = self.provider(role)
        self._check_prices(role, rc)
        prepare = getattr(provider, "prepare", None)
        if callable(prepare):
            prepare()
        if total is None and isinstance(requests, Sized):
            total = len(requests)
        source = enumerate(requests)
        waiting: dict[str, list[int]] = {}  # key -> positions of the identical requests in flight
        replayed = 0  # cache hits and in-window duplicates: counted in the ledger as cached
        state = _BatchState()
        order = asyncio.Lock()
        limiter = self._limiter(role, rc)
        wait = _Wait(rc)
        bar = tqdm(total=total, desc=f"{role}/{phase}" + (f" {desc}" if desc else ""), unit="call",
                   disable=not self.progress, dynamic_ncols=True)

        def take() -> _Item | None:
            """The next request that needs a call (emitting cache hits on the way), or None when none is left."""
            nonlocal replayed
            for i, req in source:
                it = self._item(rc, provider, req, i)
                if it.key in waiting:  # same call twice in the window: send once
                    waiting[it.key].append(i)
                    replayed += 1
                    continue
                hit = self.store.get(it.key) if self.llm.cache else None
                if hit is not None:
                    replayed += 1
                    bar.update(1)
                    emit(i, CallResult(True, hit.text, None, hit.finish_reason, hit.prompt_tokens,
                                       hit.completion_tokens, cached=True, attempts=0))
                    continue
                waiting[it.key] = [i]
                return it
            return None

        async def worker() -> None:
            while state.stop is None:
                it = take()
                if it is None:
                    return
                if not self._budget.reserve(it.worst_usd, it.need_tokens):
                    state.stop = "budget"
                    return
                try:
                    res = await self._one(role, phase, rc, provider, limiter, order, wait, it, state)
                finally:
                    self._budget.release(it.worst_usd, it.need_tokens)
                if res is None:
                    return  # fatal: state.stop is set
                idxs = waiting.pop(it.key)
                for n, i in enumerate(idxs):
                    emit(i, res if n == 0 else CallResult(**{**res.__dict__, "cached": res.ok, "attempts": 0}))
                bar.update(len(idxs))
                bar.set_postfix_str(f"tok={state.tokens} ${state.usd:.4f} failed={state.failed}", refresh=False)

        try:
            await asyncio.gather(*(worker() for _ in range(rc.max_in_flight)))
        finally:
            bar.close()
            self.store.record_cached(role, rc.model, phase, replayed)
            aclose = getattr(provider, "aclose", None)
            if callable(aclose):
                try:
                    await aclose()
                except Exception:  # noqa: BLE001 - closing a client must not hide the batch's outcome
                    log.debug("closing the %s provider failed", role, exc_info=True)
            self._write_usage()
        self.stats.update(state.stats)
        if state.stop == "fatal" and state.fatal is not None:
            raise state.fatal
        if state.stop == "budget":
            raise BudgetExceeded(self._budget.message())

    async def _one(self, role: str, phase: str, rc: RoleConfig, provider: ChatProvider, limiter: RoleLimiter,
                   order: asyncio.Lock, wait: _Wait, it: _Item, state: _BatchState) -> CallResult | None:
        attempts = 0
        resp: ChatResponse | None = None
        error: str | None = None
        status: int | None = None
        try:
            retrying = AsyncRetrying(stop=stop_after_attempt(rc.max_attempts), wait=wait, reraise=True,
                                     retry=retry_if_exception_type(TransientError))
            async for attempt in retrying:
                with attempt:
                    if state.stop == "fatal":
                        return None
                    attempts += 1
                    state.stats["attempts"] += 1
                    if attempts > 1:
                        state.stats["retries"] += 1
                    await limiter.acquire(order, it.need_tokens)
                    try:
                        resp = await provider.chat(it.request, it.params)
                    except TransientError as e:
                        state.stats["rate_limited" if e.status == 429 else "transient_errors"] += 1
                        if e.status == 429:
                            limiter.cool_down(e.retry_after if e.retry_after is not None
                                              else min(rc.backoff_max_s, rc.backoff_initial_s * 2 ** attempts))
                        log.debug("%s call attempt %d failed: %s", role, attempts, e)
                        raise
        except TransientError as e:
            error, status = f"gave up after {attempts} attempts: {e}", e.status
        except PermanentError as e:
            status = e.status
            if status in HOPELESS:
                if state.stop != "fatal":
                    state.stop = "fatal"
                    state.fatal = ProviderError(self._hopeless_message(role, rc, provider, e))
                return None
            error = f"permanent error: {e}"
        except LionError as e:  # e.g. a plugin's ConfigError: the whole batch is hopeless
            state.stop, state.fatal = "fatal", e
            return None
        except Exception as e:  # noqa: BLE001 - a provider bug fails its item, with the reason, never as text
            error = f"{type(e).__name__}: {e}"
        key_fields = it.params.key_fields()
        if resp is None:
            error = redact(error or "no response", [])
            state.failed += 1
            state.stats["failed"] += 1
            self.store.record_failure(it.key, role=role, phase=phase, provider=provider.identity,
                                      model=it.params.model, error=error, status=status, attempts=attempts)
            return CallResult(False, None, error, None, 0, 0, cached=False, attempts=attempts)
        pin, pout = self._price(it.params.model)
        usd = (resp.prompt_tokens * pin + resp.completion_tokens * pout) / 1e6
        self.store.record_call(it.key, role=role, phase=phase, provider=provider.identity, model=it.params.model,
                               params=key_fields, messages=messages_as_dicts(it.request.messages), text=resp.text,
                               finish_reason=resp.finish_reason, prompt_tokens=resp.prompt_tokens,
                               completion_tokens=resp.completion_tokens, usd=usd, attempts=attempts,
                               cache=self.llm.cache)
        self._budget.spent_usd += usd
        self._budget.spent_tokens += resp.prompt_tokens + resp.completion_tokens
        state.tokens += resp.prompt_tokens + resp.completion_tokens
        state.usd += usd
        state.stats["completed"] += 1
        return CallResult(True, resp.text, None, resp.finish_reason, resp.prompt_tokens, resp.completion_tokens,
                          cached=False, attempts=attempts)

    def _hopeless_message(self, role: str, rc: RoleConfig, provider: ChatProvider, e: PermanentError) -> str:
        hint = {401: f"check the key in ${rc.api_key_env} (llm.{role}.api_key_env)",
                403: f"the key in ${rc.api_key_env} may not access this model or endpoint",
                404: f"check llm.{role}.model ({rc.model!r}) and llm.{role}.base_url"}.get(e.status or 0, "")
        where = rc.base_url or provider.identity
        return redact(f"llm.{role}: {where} answered {e} — {hint}; calls completed so far are cached", [])

    # ------------------------------------------------------------------ ledger
    def usage_summary(self) -> dict[str, Any]:
        rows = self.store.usage_rows()
        total: dict[str, Any] = {k: 0 for k in ("calls", "cached", "failed", "tokens_in", "tokens_out")}
        total["usd"] = 0.0
        for r in rows:
            for k in total:
                total[k] += r[k]
        total["usd"] = round(total["usd"], 6)
        if self.llm.budget_usd is not None:
            total["budget_usd"] = self.llm.budget_usd
        if self.llm.budget_tokens is not None:
            total["budget_tokens"] = self.llm.budget_tokens
        return {"by": rows, "total": total}

    def _write_usage(self) -> None:
        if self.layout is not None:
            from ..records import write_json

            write_json(self.layout.usage, self.usage_summary())

    def close(self) -> None:
        """Write RUN/usage.json and close the cache (idempotent)."""
        if not self._closed:
            self._closed = True
            self._write_usage()
            self.store.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
