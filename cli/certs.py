"""`sitefleet certs list|renew`: the sites' certificates as the certs service keeps them,
and asking it for a new certificate now (``cert.requested`` with reason ``manual``: ordered
even when the one in use is valid and not due, and before a failure's backoff ends)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import aio_pika
from sqlalchemy import select

from shared import broker
from shared.db import create_engine, create_sessionmaker
from shared.errors import NotFound
from shared.messages import CertificateRequested
from shared.models import Certificate, Site
from shared.settings import CommonSettings


@dataclass
class CertificateLine:
    domain: str
    status: str
    not_after: datetime | None
    issuer: str | None
    attempts: int
    error: str | None
    next_attempt_at: datetime | None


async def list_certificates(
    settings: CommonSettings, domain: str | None = None
) -> list[CertificateLine]:
    """Per site: its newest certificate row that is not superseded."""
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            query = (
                select(Certificate)
                .where(Certificate.status != "superseded")
                .order_by(Certificate.domain, Certificate.created_at.desc())
            )
            if domain is not None:
                query = query.where(Certificate.domain == domain)
            rows = (await session.scalars(query)).all()
    finally:
        await engine.dispose()
    lines: list[CertificateLine] = []
    for row in rows:
        lines.append(
            CertificateLine(
                domain=row.domain,
                status=row.status,
                not_after=row.not_after,
                issuer=row.issuer,
                attempts=row.attempts,
                error=(row.error or {}).get("code"),
                next_attempt_at=row.next_attempt_at,
            )
        )
    return lines


async def request_renewal(settings: CommonSettings, domain: str) -> str:
    """Publish ``cert.requested`` (manual) for the site on ``domain``; returns its id."""
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            site = await session.scalar(select(Site).where(Site.domain == domain))
    finally:
        await engine.dispose()
    if site is None or site.status == "deleting":
        raise NotFound(f"no site on {domain!r}", code="site_not_found")
    connection = await aio_pika.connect(
        settings.broker_urls[0], client_properties={"connection_name": "cli"}
    )
    async with connection:
        publisher = await broker.Publisher.open(connection)
        await publisher.submit(
            CertificateRequested(
                tenant_id=site.tenant_id, site_id=site.id, domain=site.domain, reason="manual"
            )
        )
    return site.id
