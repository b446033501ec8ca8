"""The renewal pass over bought domains (daily by default): renew those with auto-renew
on before they expire, warn before an expiry nobody renews, and announce lapsed ones.

It works from ``registrar_orders`` (this service's table: the expiry the registrar last
told us) joined with the API's ``domains`` (auto-renew, status). Each renewal carries an
order id derived from the expiry it extends, so a pass that renews and then crashes before
recording it renews once, not twice, at a registrar honouring the id.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from shared.broker import Publisher
from shared.db import SessionMaker
from shared.errors import SitefleetError, Transient
from shared.messages import DomainExpired, DomainFailed, DomainRenewed, ErrorInfo
from shared.models import Domain, RegistrarOrder
from shared.registrar import Registrar
from shared.settings import DomainSettings
from shared.timeutil import utcnow

log = logging.getLogger(__name__)


@dataclass
class RenewalPass:
    renewed: int = 0
    warned: int = 0
    expired: int = 0
    failed: int = 0


async def renew_due_domains(
    sessionmaker: SessionMaker,
    registrar: Registrar,
    publisher: Publisher,
    settings: DomainSettings,
    now: datetime | None = None,
) -> RenewalPass:
    now = now or utcnow()
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(RegistrarOrder, Domain.auto_renew)
                .join(Domain, Domain.id == RegistrarOrder.id)
                .where(
                    RegistrarOrder.status == "active",
                    RegistrarOrder.registrar == registrar.name,
                    RegistrarOrder.expires_at.is_not(None),
                    Domain.status == "active",
                )
                .order_by(RegistrarOrder.expires_at)
            )
        ).all()
    result = RenewalPass()
    for order, auto_renew in rows:
        assert order.expires_at is not None
        left = order.expires_at - now
        if left <= timedelta(0):
            await _expire(sessionmaker, publisher, order)
            result.expired += 1
            continue
        if auto_renew and left <= timedelta(days=settings.domain_renew_before_days):
            try:
                renewal = await registrar.renew(
                    order.name,
                    years=1,
                    order_id=f"{order.id}-renew-{order.expires_at:%Y%m%d}",
                )
            except Transient as exc:  # the registrar is down: the next pass tries again
                log.warning("renewal deferred", extra={"domain": order.name, "error": exc.message})
            except SitefleetError as exc:
                result.failed += 1
                await _alert(publisher, order, "renewal_failed", f"renewal failed: {exc.message}")
            else:
                await _update(sessionmaker, order.id, expires_at=renewal.expires_at, warned=None)
                await publisher.emit(
                    DomainRenewed(
                        domain_id=order.id,
                        tenant_id=order.tenant_id,
                        domain=order.name,
                        expires_at=renewal.expires_at,
                    )
                )
                result.renewed += 1
                continue
        threshold = min((d for d in settings.domain_warn_days if left.days < d), default=None)
        if threshold is not None and (order.warned_days is None or threshold < order.warned_days):
            state = "auto-renew is off" if not auto_renew else "it could not be renewed"
            await _alert(
                publisher,
                order,
                "domain_expiring",
                f"{order.name} expires on {order.expires_at:%Y-%m-%d} "
                f"(in less than {threshold} days); {state}",
            )
            await _update(sessionmaker, order.id, expires_at=None, warned=threshold)
            result.warned += 1
    return result


async def _expire(sessionmaker: SessionMaker, publisher: Publisher, order: RegistrarOrder) -> None:
    async with sessionmaker.begin() as session:
        row = await session.get(RegistrarOrder, order.id, with_for_update=True)
        if row is not None:
            row.status = "expired"
            row.updated_at = utcnow()
    await publisher.emit(
        DomainExpired(domain_id=order.id, tenant_id=order.tenant_id, domain=order.name)
    )
    expired_on = f"{order.expires_at:%Y-%m-%d}" if order.expires_at else "?"
    await _alert(
        publisher,
        order,
        "domain_expired",
        f"{order.name} expired on {expired_on}; the DNS of its sites is taken down",
    )


async def _alert(publisher: Publisher, order: RegistrarOrder, code: str, message: str) -> None:
    await publisher.emit(
        DomainFailed(
            domain_id=order.id,
            tenant_id=order.tenant_id,
            domain=order.name,
            registrar=order.registrar,
            error=ErrorInfo(code=code, message=message),
        )
    )


async def _update(
    sessionmaker: SessionMaker, order_id: str, *, expires_at: datetime | None, warned: int | None
) -> None:
    async with sessionmaker.begin() as session:
        row = await session.get(RegistrarOrder, order_id, with_for_update=True)
        if row is None:
            return
        if expires_at is not None:
            row.expires_at = expires_at
        row.warned_days = warned
        row.updated_at = utcnow()


async def renew_forever(
    sessionmaker: SessionMaker, registrar: Registrar, publisher: Publisher, settings: DomainSettings
) -> None:
    while True:
        try:
            await renew_due_domains(sessionmaker, registrar, publisher, settings)
        except Transient as exc:  # the broker is down: next round
            log.warning("renewal pass skipped", extra={"error": exc.message})
        except Exception:
            log.exception("renewal pass failed")
        await asyncio.sleep(settings.domain_renew_interval)
