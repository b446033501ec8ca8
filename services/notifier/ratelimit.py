"""Token buckets, one per channel, on the caller's clock (seconds)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # bucket size
    tokens: float = field(init=False)
    updated: float | None = field(default=None, init=False)
    # A receiver's 429 Retry-After: no token before this time.
    paused_until: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> float:
        """0 and one token spent, or the seconds to wait for the next token."""
        if now < self.paused_until:
            return self.paused_until - now
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def pause(self, now: float, seconds: float) -> None:
        self.paused_until = max(self.paused_until, now + seconds)
        self.tokens = 0.0
        self.updated = now


class Buckets:
    def __init__(self, rates: dict[str, float], bursts: dict[str, float]) -> None:
        self.rates = rates
        self.bursts = bursts
        self._buckets: dict[str, TokenBucket] = {}

    def of(self, key: str, channel_type: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            rate = self.rates.get(channel_type, 1.0)
            bucket = TokenBucket(rate, max(1.0, self.bursts.get(channel_type, 1.0)))
            self._buckets[key] = bucket
        return bucket
