"""The ``tls`` field of a site object, read from the certs service's ``certificates`` table
(the API only reads it; the certs service is its writer).

Two rows of a site decide it: the newest ``installed`` one (the certificate its hosts
serve: issuer and expiry) and the newest row of all (an order after it, in progress or
failed). Statuses (schemas.TlsStatus, README "HTTPS"):

    no certificate served, newest order failed        failed   (error: the order's)
    no certificate served otherwise                   pending
    the served one has expired                        expired  (error: a failed renewal's)
    served and valid, a newer order in progress/failed renewing (error when it failed)
    served and valid                                  active

One query for any number of sites (a page of the list): per site the two rows by
``DISTINCT ON``, twice, in one ``UNION ALL``. Key material is never read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import literal, select, tuple_, union_all
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.schemas import TlsError, TlsRead
from shared.models import Certificate, Site
from shared.timeutil import utcnow

# Certificate rows whose order has not reached the hosts yet (shared/models.py Certificate).
IN_PROGRESS = frozenset({"requested", "ordering", "issued"})


def _error(raw: Any) -> TlsError:
    """The failed order's ``error`` ({code, message}), whatever shape it was stored in."""
    raw = raw if isinstance(raw, dict) else {}
    return TlsError(
        code=str(raw.get("code") or "certificate_failed"),
        message=str(raw.get("message") or "the certificate order failed"),
    )


def tls_state(served: Any | None, newest: Any | None, now: datetime) -> TlsRead:
    """The ``tls`` object from the site's served certificate row and newest row (either
    may be None; rows carry ``id, status, issuer, not_after, error``)."""
    error = _error(newest.error) if newest is not None and newest.status == "failed" else None
    if served is None or served.not_after is None:
        return TlsRead(status="failed", error=error) if error else TlsRead(status="pending")
    if served.not_after <= now:
        status = "expired"
    elif (
        newest is not None
        and newest.id != served.id
        and (newest.status in IN_PROGRESS or newest.status == "failed")
    ):
        status = "renewing"
    else:
        status = "active"
    return TlsRead(status=status, expires_at=served.not_after, issuer=served.issuer, error=error)


async def tls_of(session: AsyncSession, sites: Sequence[Site]) -> dict[str, TlsRead]:
    """Per site id, its ``tls`` object, in one query. A certificate row only counts for the
    site's own tenant."""
    if not sites:
        return {}
    pairs = [(s.id, s.tenant_id) for s in sites]
    columns = (
        Certificate.id,
        Certificate.site_id,
        Certificate.status,
        Certificate.issuer,
        Certificate.not_after,
        Certificate.error,
    )
    mine = tuple_(Certificate.site_id, Certificate.tenant_id).in_(pairs)
    newest = (
        select(literal("newest").label("kind"), *columns)
        .where(mine)
        .ext(distinct_on(Certificate.site_id))
        .order_by(Certificate.site_id, Certificate.created_at.desc(), Certificate.id.desc())
        .subquery()
    )
    served = (
        select(literal("served").label("kind"), *columns)
        .where(mine, Certificate.status == "installed")
        .ext(distinct_on(Certificate.site_id))
        .order_by(
            Certificate.site_id,
            Certificate.installed_at.desc().nulls_last(),
            Certificate.created_at.desc(),
            Certificate.id.desc(),
        )
        .subquery()
    )
    rows = (await session.execute(union_all(select(newest), select(served)))).all()
    found: dict[tuple[str, str], Any] = {(r.kind, r.site_id): r for r in rows}
    now = utcnow()
    return {
        s.id: tls_state(found.get(("served", s.id)), found.get(("newest", s.id)), now)
        for s in sites
    }
