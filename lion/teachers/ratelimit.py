"""Client-side rate limiting for one role: RPM and TPM token buckets plus one shared 429 cool-down.

    from lion.teachers.ratelimit import RoleLimiter   # used by lion.teachers.gateway

Each bucket holds at most `burst_s` seconds of its rate and refills continuously. A request asks for 1 from
the RPM bucket and `need` (estimated prompt tokens + max_tokens, as OpenAI counts) from the TPM bucket. It
may start when each bucket holds min(need, capacity); the bucket may then go negative (debt), so requests
larger than the burst still pass at the right average rate. After a 429 the whole role waits out one
shared cool-down (the server's Retry-After) and the buckets restart empty, rather than every task hammering
the server on its own schedule. Waiters are served in arrival order (an asyncio.Lock, FIFO).
"""

from __future__ import annotations

import asyncio
import threading
import time


class TokenBucket:
    """`per_minute` units per minute, holding at most `burst_s` seconds of them (also used by the sim server)."""

    def __init__(self, per_minute: float, burst_s: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, need: float) -> float:
        """Seconds until `need` (capped at capacity) is available; 0 if now."""
        want = min(need, self.capacity)
        return 0.0 if self.tokens >= want else (want - self.tokens) / self.rate


class RoleLimiter:
    """Token buckets + cool-down for one role. Plain floats guarded by a thread lock, so one limiter can
    serve batches run on different event loops (each batch passes its own asyncio.Lock for FIFO order)."""

    def __init__(self, rpm: float, tpm: float, burst_s: float = 1.0) -> None:
        self.requests = TokenBucket(rpm, burst_s)
        self.tokens = TokenBucket(tpm, burst_s)
        self.cooldown_until = 0.0
        self.cooldowns = 0
        self._mutex = threading.Lock()

    def _try_take(self, need: float) -> float:
        with self._mutex:
            now = time.monotonic()
            if now < self.cooldown_until:
                return self.cooldown_until - now
            self.requests.refill(now)
            self.tokens.refill(now)
            wait = max(self.requests.wait_for(1.0), self.tokens.wait_for(need))
            if wait > 0:
                return wait
            self.requests.tokens -= 1.0
            self.tokens.tokens -= need
            return 0.0

    async def acquire(self, order: asyncio.Lock, need: float) -> None:
        async with order:
            while True:
                wait = self._try_take(need)
                if wait <= 0:
                    return
                await asyncio.sleep(wait)

    def cool_down(self, seconds: float) -> None:
        """Pause every request of this role for `seconds` (shared); buckets restart empty afterwards."""
        with self._mutex:
            until = time.monotonic() + max(0.0, seconds)
            if until > self.cooldown_until:
                self.cooldown_until = until
                self.cooldowns += 1
                for b in (self.requests, self.tokens):
                    b.refill(until)  # refill stamp moves to the end of the cool-down ...
                    b.tokens = min(b.tokens, 0.0)  # ... and the bucket starts empty there
                    b.stamp = until
