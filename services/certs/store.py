"""The certs service's tables: ``certificates`` (one row per order of a site) and
``acme_accounts``. Functions take the caller's session; the caller owns the transaction.

A site's rows, newest last:
    installed   the certificate in use (the newest installed one; older ones superseded)
    requested   a job is on its way (the sweep or a deployment asked)
    ordering    a worker runs the order now (claimed under the site's advisory lock)
    issued      the CA issued it; the deployer is installing it on the hosts
    failed      the last attempt failed; ``next_attempt_at`` says when to try again
                (NULL: the retry ladder owns the retry)
    superseded  a newer certificate took over
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.certs.acme_client import Account, new_private_key_pem
from shared.models import AcmeAccount, Certificate

# Rows of an order still on its way (not installed, superseded or failed).
ACTIVE = ("requested", "ordering", "issued")


async def lock_site(session: AsyncSession, site_id: str) -> None:
    """Serialize decisions about one site's certificates across every certs worker (held
    until the transaction ends)."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"certs:{site_id}"},
    )


async def current_certificate(session: AsyncSession, site_id: str) -> Certificate | None:
    """The certificate the site's hosts serve: its newest installed one."""
    return await session.scalar(
        select(Certificate)
        .where(Certificate.site_id == site_id, Certificate.status == "installed")
        .order_by(Certificate.installed_at.desc().nulls_last(), Certificate.created_at.desc())
        .limit(1)
    )


async def pending_order(session: AsyncSession, site_id: str) -> Certificate | None:
    """The site's newest row that is neither installed nor superseded (an order on its way
    or the last failed one), if any."""
    return await session.scalar(
        select(Certificate)
        .where(Certificate.site_id == site_id, Certificate.status.in_((*ACTIVE, "failed")))
        .order_by(Certificate.created_at.desc())
        .limit(1)
    )


def renewal_due_at(cert: Certificate, fraction: float) -> datetime | None:
    """When ``fraction`` of the certificate's lifetime remains."""
    if cert.not_before is None or cert.not_after is None:
        return None
    return cert.not_after - (cert.not_after - cert.not_before) * fraction


def is_due(cert: Certificate, now: datetime, fraction: float) -> bool:
    due = renewal_due_at(cert, fraction)
    return due is None or now >= due


def in_flight(row: Certificate, now: datetime, stale_after: float) -> bool:
    """An order some worker (or a queued job) is on, and not given up for dead."""
    return row.status in ACTIVE and row.updated_at > now - timedelta(seconds=stale_after)


class RetryTimes(Protocol):
    cert_stale_after: float
    cert_retry_backoff: list[float]


def may_retry(row: Certificate, now: datetime, settings: RetryTimes) -> bool:
    """Whether a new attempt may start over the site's pending row: not while an order is
    on its way, not before the CA's / our backoff's ``next_attempt_at``, and while the retry
    ladder owns a failure (``next_attempt_at`` NULL) only once it surely gave up."""
    if row.status in ACTIVE:
        return not in_flight(row, now, settings.cert_stale_after)
    if row.status != "failed":
        return True
    if row.next_attempt_at is not None:
        return row.next_attempt_at <= now
    longest = max(settings.cert_retry_backoff, default=0.0)
    return row.updated_at <= now - timedelta(seconds=longest)


def backoff_delay(attempts: int, ladder: list[float]) -> float:
    """The wait before the next attempt after ``attempts`` failed ones (last step repeats)."""
    if not ladder:
        return 0.0
    return ladder[min(max(attempts, 1), len(ladder)) - 1]


@dataclass(frozen=True)
class Leaf:
    not_before: datetime
    not_after: datetime
    issuer: str
    der: bytes


def parse_leaf(fullchain_pem: str) -> Leaf:
    """The first certificate of a PEM chain: the site's own."""
    cert = x509.load_pem_x509_certificates(fullchain_pem.encode())[0]
    return Leaf(
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer=cert.issuer.rfc4514_string()[:500],
        der=cert.public_bytes(Encoding.DER),
    )


async def load_account(session: AsyncSession, directory_url: str, contact: str) -> Account:
    """The installation's account key at this CA directory, made on first use."""
    await session.execute(
        insert(AcmeAccount)
        .values(directory_url=directory_url, key_pem=new_private_key_pem(), contact=contact or None)
        .on_conflict_do_nothing(index_elements=["directory_url"])
    )
    row = await session.get(AcmeAccount, directory_url)
    assert row is not None
    return Account(key_pem=row.key_pem, url=row.account_url)


async def save_account_url(session: AsyncSession, directory_url: str, url: str) -> None:
    row = await session.get(AcmeAccount, directory_url, with_for_update=True)
    if row is not None and row.account_url != url:
        row.account_url = url
