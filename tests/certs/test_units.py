"""The pure parts of the certs service: how a CA's answers map onto the error tree and
the retry times, and when a certificate is due."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from acme import messages

from services.certs.acme_client import (
    CaRateLimited,
    CaRejected,
    parse_retry_after,
    problem_error,
)
from services.certs.orders import site_names
from services.certs.store import backoff_delay, is_due, may_retry, renewal_due_at
from shared.errors import Unavailable

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


def test_retry_after_as_seconds_or_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Fri, 27 Nov 2026 13:00:00 GMT", NOW) == 3600.0
    assert parse_retry_after("Fri, 27 Nov 2026 11:00:00 GMT", NOW) == 0.0  # already past
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_problem_documents_map_to_the_error_tree() -> None:
    limited = problem_error(
        messages.Error(typ="urn:ietf:params:acme:error:rateLimited", detail="too many"), 3600.0
    )
    assert isinstance(limited, CaRateLimited) and limited.retry_after == 3600.0
    assert limited.code == "acme_rate_limited" and "too many" in limited.message

    refused = problem_error(
        messages.Error(typ="urn:ietf:params:acme:error:rejectedIdentifier", detail="no"), None
    )
    assert isinstance(refused, CaRejected) and not isinstance(refused, CaRateLimited)
    assert refused.code == "acme_rejectedIdentifier"
    assert refused.details["problem"] == "urn:ietf:params:acme:error:rejectedIdentifier"

    down = problem_error(messages.Error(typ="urn:ietf:params:acme:error:serverInternal"), None)
    assert isinstance(down, Unavailable)  # the retry ladder, not a backoff


def test_backoff_steps_and_the_last_repeats() -> None:
    ladder = [300.0, 1800.0, 7200.0]
    assert [backoff_delay(n, ladder) for n in (1, 2, 3, 4, 10)] == [300, 1800, 7200, 7200, 7200]
    assert backoff_delay(0, ladder) == 300.0
    assert backoff_delay(3, []) == 0.0


def cert(days_valid: int, issued_days_ago: float) -> SimpleNamespace:
    start = NOW - dt.timedelta(days=issued_days_ago)
    return SimpleNamespace(not_before=start, not_after=start + dt.timedelta(days=days_valid))


def test_due_when_a_third_of_the_lifetime_remains() -> None:
    assert renewal_due_at(cert(90, 0), 1 / 3) == NOW + dt.timedelta(days=60)  # type: ignore[arg-type]
    assert not is_due(cert(90, 59), NOW, 1 / 3)  # type: ignore[arg-type]
    assert is_due(cert(90, 61), NOW, 1 / 3)  # type: ignore[arg-type]
    unknown = SimpleNamespace(not_before=None, not_after=None)
    assert is_due(unknown, NOW, 1 / 3)  # type: ignore[arg-type]


def test_when_a_new_attempt_may_start() -> None:
    settings = SimpleNamespace(cert_stale_after=900.0, cert_retry_backoff=[300.0, 3600.0])

    def row(status: str, *, updated_s: float, next_s: float | None = None) -> SimpleNamespace:
        return SimpleNamespace(
            status=status,
            updated_at=NOW - dt.timedelta(seconds=updated_s),
            next_attempt_at=None if next_s is None else NOW + dt.timedelta(seconds=next_s),
        )

    ok = lambda r: may_retry(r, NOW, settings)  # type: ignore[arg-type]  # noqa: E731
    assert not ok(row("ordering", updated_s=10))  # a worker is on it
    assert ok(row("ordering", updated_s=1000))  # ... a dead one
    assert not ok(row("failed", updated_s=10, next_s=60))  # the CA / backoff said wait
    assert ok(row("failed", updated_s=10, next_s=-1))
    assert not ok(row("failed", updated_s=10))  # the retry ladder owns it
    assert ok(row("failed", updated_s=3601))  # ... and surely gave up


def test_a_site_certificate_covers_apex_www_and_proxy() -> None:
    assert site_names("example.com") == ["example.com", "www.example.com", "proxy.example.com"]
