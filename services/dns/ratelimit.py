"""Token buckets per provider account: every API call takes a token; a 429's
``Retry-After`` pauses the whole account, not just the call that got it.

Cloudflare allows 1,200 calls per 5 minutes per user (DESIGN.md §5): a bucket of that
capacity refilled at 4 calls/s never sends a call the provider would refuse for volume.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass
class TokenBucket:
    capacity: float
    # Tokens added per second.
    rate: float
    clock: Clock = time.monotonic
    tokens: float = field(init=False)
    updated: float = field(init=False)
    # Until when (clock time) nothing may be sent: set from a 429's Retry-After.
    paused_until: float = field(init=False, default=0.0)
    _lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.tokens = self.capacity
        self.updated = self.clock()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait_time(self) -> float:
        """Seconds until a token may be taken (0 = now)."""
        now = self.clock()
        self._refill(now)
        pause = max(0.0, self.paused_until - now)
        lack = max(0.0, 1.0 - self.tokens) / self.rate if self.rate > 0 else 0.0
        return max(pause, lack)

    async def acquire(self) -> None:
        """Take one token, waiting for it (callers queue in order on the lock)."""
        async with self._lock:
            # Not an Event: the wait is computed from the clock, and may grow while we
            # sleep (a 429 elsewhere pauses the account).
            while (wait := self.wait_time()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            self.tokens -= 1

    def pause(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (a 429's Retry-After) and start refilling after."""
        now = self.clock()
        self.paused_until = max(self.paused_until, now + seconds)
        self.tokens = min(self.tokens, 0.0)


_buckets: dict[str, TokenBucket] = {}


def bucket_for(account: str, *, calls: int, per_seconds: float) -> TokenBucket:
    """The process-wide bucket of one provider account (e.g. "cloudflare:<token hash>")."""
    bucket = _buckets.get(account)
    if bucket is None:
        bucket = _buckets[account] = TokenBucket(capacity=calls, rate=calls / per_seconds)
    return bucket
