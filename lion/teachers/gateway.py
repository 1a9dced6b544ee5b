"""The teacher gateway: every LLM call of every phase goes through here.

    from lion.teachers.gateway import Gateway
    gw = Gateway(cfg.llm, run_dir)                       # RUN/calls.sqlite (None: in memory)
    results = gw.chat_many("teacher", "imitation", [[{"role": "user", "content": "Hi"}], ...])
    gw.usage_summary(); gw.close()

What it guarantees, for any provider (lion.teachers.base):
- no paid call twice: a completed call is committed to the SQLite cache before the next one is counted, under
  hash(provider identity, model, messages, sampling params, sample index) — not the mode, so online and batch
  results replay each other. With `llm.<role>.cache_namespace` set, "<provider>:ns=<namespace>" replaces the
  identity (which holds the base_url), so a local server on a new port, or a move to another endpoint serving
  the same model, replays. Identical requests inside one batch are sent once. Failures are recorded apart and
  never served as answers.
- two paths, one per `llm.<role>.mode`: online (below) and batch (lion.teachers.batch: the provider's batch API,
  every batch id recorded before waiting, re-polled on resume, never resubmitted).
- online: rate limits per role (RPM and TPM token buckets, max in flight), one shared cool-down after a 429 that
  honours Retry-After, tenacity retries with exponential backoff + jitter for transient errors (the SDK's own
  retries are off). An item gives up after `max_attempts` unless the whole role is failing (no successful call
  since the item's first failure: an outage), where it keeps backing off for up to `outage_s`.
- permanent errors fail fast: auth (401/403), unknown model (404), exhausted quota and a refused request
  parameter stop the batch at once with ProviderError naming the role and the key to change; any other 400
  (e.g. context too long) fails only its item.
- failures you can see: after every batch of calls with failures, one line (failures by reason, the tokens
  billed for them, one redacted example) is printed on stderr, logged, and appended to RUN/gateway.log.
- every billed token is counted: a reply that carries usage but no text (a reasoning model that spent its whole
  max_tokens on reasoning, a thinking budget used up, an empty choices list) or a refusal is charged to the
  ledger and the budget and fails its call at once with its reason (no_text, refused), never retried (a retry
  would pay again for the same outcome); online and in batch mode alike. A reply with neither usage nor text is
  malformed: transient, retried.
- a usage ledger (tokens in/out, prompt-cache tokens read/written, USD, calls, cached replays per role, model,
  phase and mode; RUN/usage.json) and a budget cap: before each call the worst case (estimated prompt +
  max_tokens at the model's price, batch discount applied) is reserved; a call that could push spend over
  `llm.budget_usd` / `llm.budget_tokens` is not started, the calls in flight finish, and BudgetExceeded is
  raised. Raise the cap and re-run: the cache replays the rest.
- results come back in input order; a progress bar shows done/total, rate, tokens and spend. `chat_iter` takes
  any iterable of requests and sends it a window at a time (yielding (position, result)), so a million-request
  phase holds one window, not the million.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import itertools
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter
from tqdm import tqdm

from ..config import LLMConfig, RoleConfig
from ..errors import BudgetExceeded, ConfigError, LionError, ProviderError
from ..layout import RunLayout
from ..logs import heartbeat
from .base import (
    NO_TEXT,
    ChatProvider,
    ChatRequest,
    ChatResponse,
    PermanentError,
    ResolvedParams,
    TransientError,
    failure_reason,
    messages_as_dicts,
    redact,
    resolve_token_param,
)
from .calls import BatchState, CallItem, CallResult, permanent_message
from .plugins import load_provider
from .pricing import price_usd
from .ratelimit import RoleLimiter
from .store import CachedCall, CallStore
from .tokens import TokenCounter

__all__ = ["CallResult", "Gateway", "load_provider"]

log = logging.getLogger("lion.teachers")

BURST_S = 1.0  # client token buckets hold one second of their rate
HOPELESS = (401, 403, 404)  # auth / unknown model: every call of the batch would fail the same way
FATAL_KINDS = ("auth", "quota", "model", "param")  # PermanentError kinds that stop the run at once


def _call_key(ident: str, fields: dict[str, Any], messages: Any) -> str:
    """The call-cache key: hash(provider identity, the fields that change the answer, messages)."""
    blob = json.dumps({"provider": ident, **fields, "messages": [list(m) for m in messages]},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


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


def param_hint(role: str, rc: RoleConfig, param: str | None) -> str:
    """Which config key to change when a server refuses request parameter `param`."""
    k = f"llm.{role}"
    if param in ("max_tokens", "max_completion_tokens"):
        other = "max_completion_tokens" if param == "max_tokens" else "max_tokens"
        return f"set {k}.token_param: {other} (now {rc.token_param!r}; auto picks max_completion_tokens only for " \
               "the o-series and gpt-5 families)"
    also = " (discrimination.referee_retry_temperature sets the referee's retries)" if role == "referee" else ""
    if param == "temperature+top_p":
        return f"set only one of {k}.temperature and {k}.top_p, the other to null (not sent){also}"
    if param in ("temperature", "top_p"):
        return f"set {k}.{param}: null (not sent: the model's default; now {getattr(rc, param)!r}){also}"
    if param == "reasoning_effort":
        return f"change or unset {k}.reasoning_effort (now {rc.reasoning_effort!r})"
    if param in ("top_logprobs", "logprobs"):
        return (f"set {k}.top_logprobs: 0 (now {rc.top_logprobs}: this model or server does not return that many "
                "logprobs, or none) and student.objective: sft, or use a model that returns them")
    if param:
        return f"remove {param!r} from {k}.extra_body / {k}.options"
    return f"check the request parameters of {k} (temperature, top_p, token_param, reasoning_effort, extra_body)"


class _Progress:
    """The progress bar and the heartbeat (shown when bars are off) moving together."""

    def __init__(self, bar: Any, beat: Any) -> None:
        self.bar, self.beat = bar, beat

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.beat.update(n)

    def close(self) -> None:
        self.bar.close()
        self.beat.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bar, name)


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
        self._last_ok: dict[str, float] = {}  # role -> monotonic time of its last successful call (outages)
        self.stats: collections.Counter[str] = collections.Counter()  # attempts, retries, rate_limited, ...
        self.last_failures: dict[tuple[str, str], collections.Counter[str]] = {}  # (role, phase) -> by reason
        self._snapshots: dict[tuple[str, str], set[str]] = {}  # (role, configured model) -> served snapshots seen
        self._closed = False

    # ------------------------------------------------------------------ setup per role
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

    def usd(self, model: str, resp: ChatResponse, mode: str = "online") -> float:
        return price_usd(self.llm.prices.get(model), resp, mode, model)

    def reserve(self, usd: float, tokens: int) -> bool:
        """Hold a call's (or a batch's) worst case against the budget; False when it could exceed the cap."""
        return self._budget.reserve(usd, tokens)

    def release(self, usd: float, tokens: int) -> None:
        self._budget.release(usd, tokens)

    def batch_factor(self, model: str) -> float:
        p = self.llm.prices.get(model)
        return p.batch_discount if p is not None else 0.5

    def _check_prices(self, role: str, rc: RoleConfig) -> None:
        if self.llm.budget_usd is not None and rc.model not in self.llm.prices:
            raise ConfigError(f"llm.prices: no price for model {rc.model!r} (llm.{role}.model); one is needed to "
                              f"enforce llm.budget_usd (add llm.prices.{rc.model}: {{input: ..., output: ...}}, "
                              "USD per million tokens)")

    def resolve(self, rc: RoleConfig, request: ChatRequest) -> ResolvedParams:
        """The parameters one request is sent with: its own values over the role's; None = not sent."""
        return ResolvedParams(
            model=rc.model,
            temperature=rc.temperature if request.temperature is None else float(request.temperature),
            top_p=rc.top_p if request.top_p is None else float(request.top_p),
            max_tokens=rc.max_tokens if request.max_tokens is None else int(request.max_tokens),
            sample=request.sample,
            timeout_s=rc.timeout_s,
            token_param=resolve_token_param(rc.token_param, rc.model),
            reasoning_effort=rc.reasoning_effort,
            extra={**rc.options, **rc.extra_body} if rc.provider in ("openai", "anthropic") else dict(rc.extra_body),
            top_logprobs=rc.top_logprobs,
        )

    def _item(self, rc: RoleConfig, provider: ChatProvider, req: ChatRequest | Any, index: int) -> CallItem:
        try:
            request = req if isinstance(req, ChatRequest) else ChatRequest(messages=req)
        except ValueError as e:
            raise ValueError(f"request {index}: {e}") from None
        params = self.resolve(rc, request)
        # llm.<role>.cache_namespace stands in for the endpoint (e.g. a local server on a random port)
        ident = f"{rc.provider}:ns={rc.cache_namespace}" if rc.cache_namespace else provider.identity
        prompt = self.counter.prompt(request.messages)
        pin, pout = self._price(params.model)
        return CallItem(request, params, _call_key(ident, params.key_fields(), request.messages),
                     prompt + params.max_tokens, (prompt * pin + params.max_tokens * pout) / 1e6, ident)

    def _cached(self, it: CallItem) -> CachedCall | None:
        """The item's call from the cache; on a miss, under the key a run directory from before 2026-12 gave it
        (ResolvedParams.legacy_key_fields), so such a run replays its calls instead of buying them again."""
        hit = self.store.get(it.key)
        if hit is None and (legacy := it.params.legacy_key_fields()) is not None:
            hit = self.store.get(_call_key(it.ident, legacy, it.request.messages))
        return hit

    # ------------------------------------------------------------------ public API
    def chat_many(self, role: str, phase: str, requests: Iterable[ChatRequest | list[dict[str, str]]],
                  desc: str = "") -> list[CallResult]:
        """Sync wrapper: runs its own event loop (in a helper thread if this thread already runs one)."""
        requests = requests if isinstance(requests, Sequence) else list(requests)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.achat_many(role, phase, requests, desc))
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lion-gateway") as ex:
            return ex.submit(asyncio.run, self.achat_many(role, phase, requests, desc)).result()

    def chat_iter(self, role: str, phase: str, requests: Iterable[ChatRequest | list[dict[str, str]]],
                  desc: str = "", total: int | None = None, window: int | None = None,
                  ) -> Iterator[tuple[int, CallResult]]:
        """(position in `requests`, result) for every request, window by window: `requests` is read lazily,
        `window` at a time (default: 16 x max_in_flight, at least 2048; batch mode: batch_max_items or 50,000),
        and each window goes through `chat_many` (cache, limits, batch mode, failure lines all apply), so a
        million requests take the memory of one window. BudgetExceeded and fatal errors are raised after the
        results of the windows before were handed out; a consumer that stops reading stops the calls."""
        rc = self.llm.role(role)
        if window is None:
            window = (rc.batch_max_items or 50_000) if rc.mode == "batch" else max(16 * rc.max_in_flight, 2048)
        it = iter(requests)
        start, n_windows = 0, None if total is None else max(1, -(-total // window))
        for k in itertools.count():
            chunk = list(itertools.islice(it, window))
            if not chunk:
                return
            label = desc if n_windows == 1 else f"{desc} [{k + 1}/{n_windows or '?'}]".strip()
            for i, res in enumerate(self.chat_many(role, phase, chunk, label)):
                yield start + i, res
            start += len(chunk)

    async def achat_many(self, role: str, phase: str, requests: Sequence[ChatRequest | list[dict[str, str]]],
                         desc: str = "") -> list[CallResult]:
        rc = self.llm.role(role)
        provider = self.provider(role)
        self._check_prices(role, rc)
        batch_api = self._batch_api(role, rc, provider) if rc.mode == "batch" else None
        prepare = getattr(provider, "prepare", None)
        if callable(prepare):
            prepare()
        items = [self._item(rc, provider, r, i) for i, r in enumerate(requests)]
        results: list[CallResult | None] = [None] * len(items)
        pending: dict[str, list[int]] = {}
        n_cached = 0
        for i, it in enumerate(items):
            if it.key in pending:  # same call twice in one batch: send once
                pending[it.key].append(i)
                continue
            hit = self._cached(it) if self.llm.cache else None
            if hit is not None:
                results[i] = CallResult(True, hit.text, None, hit.finish_reason, hit.prompt_tokens,
                                        hit.completion_tokens, cached=True, attempts=0, logprobs=hit.logprobs,
                                        served_model=hit.served_model, fingerprint=hit.fingerprint)
                n_cached += 1
            else:
                pending[it.key] = [i]
        self.store.record_cached(role, rc.model, phase, n_cached + sum(len(v) - 1 for v in pending.values()),
                                 mode=rc.mode)
        if pending and rc.on_model_change == "stop":
            self._refuse_mixed_snapshots(role, rc)

        state = BatchState()
        bar = tqdm(total=len(items), initial=len(items) - sum(len(v) for v in pending.values()),
                   desc=f"{role}/{phase}" + (f" {desc}" if desc else ""), unit="call",
                   disable=not self.progress, dynamic_ncols=True)
        beat = heartbeat(f"{role}/{phase}" + (f" {desc}" if desc else ""), len(items), progress=self.progress,
                         done=bar.n, spend=lambda: self._budget.spent_usd, unit=" calls").start()
        bar = _Progress(bar, beat)
        try:
            if batch_api is not None and pending:
                from .batch import BatchRunner

                await BatchRunner(self, role, phase, rc, provider, batch_api, items, pending, results, bar,
                                  state).run()
            else:
                await self.run_online(role, phase, rc, provider, items, pending, list(pending), results, bar, state)
        finally:
            bar.close()
            aclose = getattr(provider, "aclose", None)
            if callable(aclose):
                try:
                    await aclose()
                except Exception:  # noqa: BLE001 - closing a client must not hide the batch's outcome
                    log.debug("closing the %s provider failed", role, exc_info=True)
            self._write_usage()
        self.stats.update(state.stats)
        self._report_failures(role, phase, rc, items, results)
        if state.stop == "fatal" and state.fatal is not None:
            self.note(f"stopped: {state.fatal}")
            raise state.fatal
        if state.stop == "budget":
            raise BudgetExceeded(self._budget.message())
        return [r for r in results if r is not None]

    def _batch_api(self, role: str, rc: RoleConfig, provider: ChatProvider) -> Any:
        make = getattr(provider, "batch_api", None)
        if not callable(make):
            raise ConfigError(f"llm.{role}.mode: batch needs a provider with a batch API (openai, anthropic); "
                              f"{rc.provider!r} has none: set llm.{role}.mode: online")
        return make()

    # ------------------------------------------------------------------ the online path
    async def run_online(self, role: str, phase: str, rc: RoleConfig, provider: ChatProvider, items: list[CallItem],
                         pending: dict[str, list[int]], keys: list[str], results: list[CallResult | None],
                         bar: Any, state: BatchState) -> None:
        """Send the calls of `keys` one HTTP request each (max_in_flight workers), filling `results`."""
        queue = collections.deque(keys)
        order = asyncio.Lock()
        limiter = self._limiter(role, rc)
        wait = _Wait(rc)

        async def worker() -> None:
            while queue and state.stop is None:
                key = queue.popleft()
                idxs = pending[key]
                it = items[idxs[0]]
                if not self._budget.reserve(it.worst_usd, it.need_tokens):
                    state.stop = "budget"
                    return
                try:
                    res = await self._one(role, phase, rc, provider, limiter, order, wait, it, state)
                finally:
                    self._budget.release(it.worst_usd, it.need_tokens)
                if res is None:
                    return  # fatal: state.stop is set
                self.fill(results, idxs, res)
                bar.update(len(idxs))
                bar.set_postfix_str(f"tok={state.tokens} ${state.usd:.4f} failed={state.failed}", refresh=False)

        n_workers = min(rc.max_in_flight, len(queue))
        await asyncio.gather(*(worker() for _ in range(n_workers)))

    @staticmethod
    def fill(results: list[CallResult | None], idxs: list[int], res: CallResult) -> None:
        """One call's result for every request that asked for it (the duplicates count as cached)."""
        for n, i in enumerate(idxs):
            results[i] = res if n == 0 else CallResult(**{**res.__dict__, "cached": res.ok, "attempts": 0})

    async def _one(self, role: str, phase: str, rc: RoleConfig, provider: ChatProvider, limiter: RoleLimiter,
                   order: asyncio.Lock, wait: _Wait, it: CallItem, state: BatchState) -> CallResult | None:
        attempts = 0
        resp: ChatResponse | None = None
        first_failure: float | None = None

        def give_up(rs: RetryCallState) -> bool:
            """After max_attempts, unless the role is in an outage (no success since this item first failed):
            then keep backing off until outage_s of continuous failure."""
            if rs.attempt_number < rc.max_attempts:
                return False
            if first_failure is None or self._last_ok.get(role, float("-inf")) > first_failure:
                return True
            if time.monotonic() - first_failure >= rc.outage_s:
                return True
            state.stats["outage_retries"] += 1
            return False

        try:
            retrying = AsyncRetrying(stop=give_up, wait=wait, reraise=True,
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
                        if first_failure is None:
                            first_failure = time.monotonic()
                        state.stats["rate_limited" if e.status == 429 else "transient_errors"] += 1
                        if e.status == 429:
                            limiter.cool_down(e.retry_after if e.retry_after is not None
                                              else min(rc.backoff_max_s, rc.backoff_initial_s * 2 ** attempts))
                        log.debug("%s call attempt %d failed: %s", role, attempts, e)
                        raise
        except TransientError as e:
            return self.record_failure(role, phase, provider, it, f"gave up after {attempts} attempts: {e}",
                                       e.status, attempts, failure_reason(e), state)
        except PermanentError as e:
            if self.is_fatal(e):
                self.set_fatal(state, role, rc, provider, e)
                return None
            return self.record_failure(role, phase, provider, it, permanent_message(e), e.status, attempts,
                                       failure_reason(e), state, billed=e.billed)
        except LionError as e:  # e.g. a plugin's ConfigError: the whole batch is hopeless
            state.stop, state.fatal = "fatal", e
            return None
        except Exception as e:  # noqa: BLE001 - a provider bug fails its item, with the reason, never as text
            return self.record_failure(role, phase, provider, it, f"{type(e).__name__}: {e}", None, attempts,
                                       "provider_bug", state)
        assert resp is not None
        return self.record_success(role, phase, provider, it.key, it.params.model, it.params.key_fields(),
                                   messages_as_dicts(it.request.messages), resp, attempts, "online", state)

    # ------------------------------------------------------------------ outcomes (both paths)
    @staticmethod
    def is_fatal(e: PermanentError) -> bool:
        return e.status in HOPELESS or e.kind in FATAL_KINDS

    def set_fatal(self, state: BatchState, role: str, rc: RoleConfig, provider: ChatProvider,
                  e: PermanentError) -> None:
        if state.stop != "fatal":
            state.stop = "fatal"
            state.fatal = ProviderError(self._hopeless_message(role, rc, provider, e))

    def record_success(self, role: str, phase: str, provider: ChatProvider, key: str, model: str,
                       key_fields: dict[str, Any], messages: list[dict[str, str]], resp: ChatResponse, attempts: int,
                       mode: str, state: BatchState) -> CallResult:
        """A paid reply: into the cache (unless it lacks the logprobs it was asked for: then the ledger only, and
        the run stops naming llm.<role>.top_logprobs), the ledger, the budget and the role's served snapshots."""
        usd = self.usd(model, resp, mode)
        wanted = int(key_fields.get("top_logprobs") or 0)
        missing = bool(wanted) and resp.logprobs is None
        blob = resp.logprobs.encode() if resp.logprobs is not None and wanted else None
        self.store.record_call(key, role=role, phase=phase, provider=provider.identity, model=model,
                               params=key_fields, messages=messages, text=resp.text,
                               finish_reason=resp.finish_reason, prompt_tokens=resp.prompt_tokens,
                               completion_tokens=resp.completion_tokens, usd=usd, attempts=attempts,
                               cache=self.llm.cache and not missing, mode=mode, cached_tokens=resp.cached_tokens,
                               cache_write_tokens=resp.cache_write_tokens, logprobs=blob,
                               served_model=resp.served_model, fingerprint=resp.fingerprint)
        self._last_ok[role] = time.monotonic()
        self._budget.spent_usd += usd
        self._budget.spent_tokens += resp.prompt_tokens + resp.completion_tokens
        state.tokens += resp.prompt_tokens + resp.completion_tokens
        state.usd += usd
        if missing:
            state.failed += 1
            state.stats["failed"] += 1
            if state.stop != "fatal":
                rc = self.llm.role(role)
                state.stop, state.fatal = "fatal", ProviderError(
                    f"llm.{role}: {rc.base_url or provider.identity} ({model}) answered without the logprobs asked for "
                    f"(llm.{role}.top_logprobs: {wanted}); this server or model does not return them — set "
                    f"llm.{role}.top_logprobs: 0 (and student.objective: sft), or use a server that does (vLLM, "
                    "SGLang, OpenAI's non-reasoning models); calls completed so far are cached")
            return CallResult(False, None, "no logprobs in the reply", None, resp.prompt_tokens,
                              resp.completion_tokens, cached=False, attempts=attempts, reason="no_logprobs")
        state.stats["completed"] += 1
        self._watch_snapshot(role, model, resp.served_model, state)
        return CallResult(True, resp.text, None, resp.finish_reason, resp.prompt_tokens, resp.completion_tokens,
                          cached=False, attempts=attempts, logprobs=blob, served_model=resp.served_model,
                          fingerprint=resp.fingerprint)

    def _refuse_mixed_snapshots(self, role: str, rc: RoleConfig) -> None:
        """on_model_change: stop, and this run directory already holds answers of two snapshots of the role's
        model (a run stopped on it, then started again unchanged): stop before paying for another call."""
        rows = self.store.snapshots(role, rc.model)
        if len({r["served"] for r in rows if r["served"]}) > 1:
            from ..snapshots import change_line

            raise ProviderError(change_line(role, rc.model, rows, "stop"))

    def _watch_snapshot(self, role: str, model: str, served: str | None, state: BatchState) -> None:
        """A served snapshot the role's configured model has not answered with before in this run directory, after
        another one did: one line with the calls per snapshot, then llm.<role>.on_model_change (warn | stop)."""
        if not served:
            return
        seen = self._snapshots.get((role, model))
        if seen is None:
            seen = self._snapshots[(role, model)] = {r["served"] for r in self.store.snapshots(role, model)
                                                     if r["served"]} - {served}
        if served in seen:
            return
        seen.add(served)
        if len(seen) < 2:
            return
        from ..snapshots import change_line

        rc = self.llm.role(role)
        line = change_line(role, model, self.store.snapshots(role, model), rc.on_model_change)
        if rc.on_model_change == "stop":
            if state.stop != "fatal":
                state.stop, state.fatal = "fatal", ProviderError(line)
            return
        self.say(line)

    def record_failure(self, role: str, phase: str, provider: ChatProvider, it: CallItem, error: str,
                       status: int | None, attempts: int, reason: str, state: BatchState,
                       mode: str = "online", billed: ChatResponse | None = None) -> CallResult:
        """A call that ended without an answer. `billed`: the usage of a reply the service charged for anyway (no
        text, a refusal): it goes to the ledger and the budget with the failure, in one transaction."""
        error = redact(error or "no response", [])
        state.failed += 1
        state.stats["failed"] += 1
        usd = self.charge(role, billed, it.params.model, mode, state) if billed is not None else 0.0
        self.store.record_failure(it.key, role=role, phase=phase, provider=provider.identity,
                                  model=it.params.model, error=error, status=status, attempts=attempts, mode=mode,
                                  billed=billed, usd=usd)
        pt, ct = (billed.prompt_tokens, billed.completion_tokens) if billed is not None else (0, 0)
        return CallResult(False, None, error, None, pt, ct, cached=False, attempts=attempts, reason=reason)

    def charge(self, role: str, resp: ChatResponse, model: str, mode: str, state: BatchState) -> float:
        """Count a billed reply that is no answer against the budget and the batch's spend; its USD (the caller
        writes it to the ledger)."""
        usd = self.usd(model, resp, mode)
        self._budget.spent_usd += usd
        self._budget.spent_tokens += resp.prompt_tokens + resp.completion_tokens
        state.tokens += resp.prompt_tokens + resp.completion_tokens
        state.usd += usd
        state.stats["billed_failures"] += 1
        return usd

    def _hopeless_message(self, role: str, rc: RoleConfig, provider: ChatProvider, e: PermanentError) -> str:
        env = rc.api_key_env or getattr(provider, "key_env", None) or "the key variable"
        kind = e.kind or {401: "auth", 403: "auth", 404: "model"}.get(e.status or 0)
        hint = {
            "auth": f"check the key in ${env} (llm.{role}.api_key_env); it may not access this model or endpoint",
            "model": f"check llm.{role}.model ({rc.model!r}) and llm.{role}.base_url",
            "quota": f"the account behind ${env} has no quota or credit left: add some at the provider, or point "
                     f"llm.{role}.api_key_env at another key",
            "param": param_hint(role, rc, e.param),
        }.get(kind or "", "")
        where = rc.base_url or provider.identity
        return redact(f"llm.{role}: {where} answered {e} — {hint}; calls completed so far are cached, so re-running "
                      "after the fix pays for none of them again", [])

    # ------------------------------------------------------------------ failures you can see
    def note(self, line: str) -> None:
        """Log a gateway line (level info) and append it to RUN/gateway.log."""
        log.info("%s", line)
        if self.layout is not None:
            self.layout.root.mkdir(parents=True, exist_ok=True)
            with open(self.layout.gateway_log, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")

    def say(self, line: str) -> None:
        """Print a gateway line on stderr (above any progress bar) and note it."""
        tqdm.write(line, file=sys.stderr)
        self.note(line)

    def _report_failures(self, role: str, phase: str, rc: RoleConfig, items: list[CallItem],
                         results: list[CallResult | None]) -> None:
        failed = [r for r in results if r is not None and not r.ok]
        self.last_failures[(role, phase)] = collections.Counter(r.reason or "unknown" for r in failed)
        if not failed:
            return
        by = self.last_failures[(role, phase)]
        reasons = ", ".join(f"{n} {reason}" for reason, n in by.most_common())
        first = next((r for r in failed if r.reason == NO_TEXT), failed[0])
        example = redact((first.error or "")[:300], [])
        paid = sum(r.prompt_tokens + r.completion_tokens for r in failed)
        billed = f"; {paid:,} tokens billed for them (in the ledger and the budget)" if paid else ""
        hint = (f" (no_text: billed replies without any text, e.g. a reasoning model that spent llm.{role}.max_tokens "
                f"= {rc.max_tokens} on reasoning: raise it, or lower llm.{role}.reasoning_effort)") if NO_TEXT in by else ""
        self.say(f"llm.{role} ({phase}, {rc.model}, {rc.mode}): {len(failed)} of {len(items)} calls failed — "
                 f"{reasons}{billed}; e.g. {example}{hint}")

    # ------------------------------------------------------------------ ledger
    def usage_summary(self) -> dict[str, Any]:
        rows = self.store.usage_rows()
        total: dict[str, Any] = {k: 0 for k in ("calls", "cached", "failed", "tokens_in", "tokens_out",
                                                "tokens_cache_read", "tokens_cache_write")}
        total["usd"] = 0.0
        for r in rows:
            for k in total:
                total[k] += r[k]
        total["usd"] = round(total["usd"], 6)
        total["batch_calls"] = sum(r["calls"] for r in rows if r["mode"] == "batch")
        total["cached_share"] = round(total["tokens_cache_read"] / total["tokens_in"], 4) if total["tokens_in"] else 0.0
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
