"""Domains in the DNS service: buying them at the registrar (``domain.register_requested``
jobs), checking brought domains for their challenge record, and holding back a site's
records until its domain is proven to be its tenant's.

A purchase is a small state machine kept in ``registrar_orders`` (this service is its only
writer), committed before and after every registrar call, because a registrar's charge
cannot be rolled back with our transaction:

    new --register--> submitted --answer--> registered --set NS--> active
    submitted (answer lost: timeout, crash) --retry: registrar.get says ours--> registered
    any step --registrar refuses--> failed (domain.failed, an alert)

The order id is the API's domain id and is sent as the registrar's idempotency key, so
neither a retried job nor a duplicate message buys a domain twice.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from sqlalchemy import select

from shared.broker import Publisher
from shared.db import SessionMaker
from shared.domain_ownership import check_ownership, domain_active_for
from shared.errors import SitefleetError, Transient
from shared.messages import (
    DomainFailed,
    DomainRegistered,
    DomainRegisterRequested,
    DomainVerified,
    ErrorInfo,
)
from shared.models import Domain, RegistrarOrder
from shared.registrar import Registrar, Registration
from shared.settings import DomainSettings
from shared.timeutil import utcnow

log = logging.getLogger(__name__)


class DomainPurchases:
    def __init__(
        self,
        *,
        sessionmaker: SessionMaker,
        registrar: Registrar,
        publisher: Publisher,
        settings: DomainSettings,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.registrar = registrar
        self.publisher = publisher
        self.settings = settings

    async def register(self, job: DomainRegisterRequested) -> None:
        """Run (or resume) the purchase of ``job.domain``; Transient errors propagate so the
        consumer retries the job, and the retry resumes where this attempt stopped."""
        order = await self._order(job)
        if order.status == "failed":
            return  # announced when it failed; a duplicate job changes nothing
        try:
            if order.status in ("new", "submitted"):
                registration = await self._buy(job, order)
                await self._update(
                    job.domain_id,
                    status="registered",
                    expires_at=registration.expires_at,
                    registrar_order_id=registration.registrar_order_id,
                )
                order.expires_at = registration.expires_at
            if order.status != "active":
                await self.registrar.set_nameservers(job.domain, list(self.settings.nameservers))
                await self._update(job.domain_id, status="active")
        except Transient:
            raise
        except SitefleetError as exc:
            log.warning(
                "domain registration failed", extra={"domain": job.domain, "error": exc.message}
            )
            error = ErrorInfo(code=exc.code, message=exc.message)
            await self._update(job.domain_id, status="failed", error=error.model_dump())
            await self.publisher.emit(
                DomainFailed(
                    domain_id=job.domain_id,
                    tenant_id=job.tenant_id,
                    domain=job.domain,
                    registrar=self.registrar.name,
                    error=error,
                )
            )
            return
        await self.publisher.emit(
            DomainRegistered(
                domain_id=job.domain_id,
                tenant_id=job.tenant_id,
                domain=job.domain,
                registrar=self.registrar.name,
                expires_at=order.expires_at,
            )
        )

    async def _buy(self, job: DomainRegisterRequested, order: RegistrarOrder) -> Registration:
        if order.status == "submitted":
            # An earlier attempt sent the order and lost the answer: it may have been charged.
            owned = await self.registrar.get(job.domain)
            if owned is not None:
                log.info(
                    "domain already bought by an earlier attempt", extra={"domain": job.domain}
                )
                return owned
        await self._update(job.domain_id, status="submitted", attempt=True)
        return await self.registrar.register(
            job.domain,
            years=job.years,
            contact=dict(self.settings.registrar_contact),
            order_id=job.domain_id,
        )

    async def _order(self, job: DomainRegisterRequested) -> RegistrarOrder:
        async with self.sessionmaker.begin() as session:
            order = await session.get(RegistrarOrder, job.domain_id, with_for_update=True)
            if order is None:
                order = RegistrarOrder(
                    id=job.domain_id,
                    tenant_id=job.tenant_id,
                    name=job.domain,
                    registrar=self.registrar.name,
                    years=job.years,
                    status="new",
                    attempts=0,
                )
                session.add(order)
                await session.flush()
            session.expunge(order)
        return order

    async def _update(
        self,
        order_id: str,
        *,
        status: str,
        attempt: bool = False,
        expires_at: datetime | None = None,
        registrar_order_id: str | None = None,
        error: dict[str, str] | None = None,
    ) -> None:
        async with self.sessionmaker.begin() as session:
            order = await session.get(RegistrarOrder, order_id, with_for_update=True)
            assert order is not None
            order.status = status
            order.updated_at = utcnow()
            if attempt:
                order.attempts += 1
            if expires_at is not None:
                order.expires_at = expires_at
            if registrar_order_id is not None:
                order.registrar_order_id = registrar_order_id
            if error is not None:
                order.error = error


async def publication_allowed(
    sessionmaker: SessionMaker, settings: DomainSettings, *, tenant_id: str, domain: str
) -> bool:
    """Whether a site's records may be published: always when ownership is ``off``, else
    only once its domain is active for the site's tenant."""
    if settings.domain_ownership == "off":
        return True
    async with sessionmaker() as session:
        return await domain_active_for(session, tenant_id, domain)


async def check_brought_domains(
    sessionmaker: SessionMaker, publisher: Publisher, settings: DomainSettings
) -> int:
    """One pass over brought domains awaiting verification; announces the verified ones
    (the API activates them). Returns how many were verified."""
    async with sessionmaker() as session:
        pending = (
            await session.execute(
                select(Domain.id, Domain.tenant_id, Domain.name, Domain.txt_value).where(
                    Domain.bring_your_own.is_(True), Domain.status == "pending_verification"
                )
            )
        ).all()
    verified = 0
    for domain_id, tenant_id, name, txt_value in pending:
        result = await check_ownership(
            name,
            txt_value=txt_value,
            nameservers=settings.nameservers,
            resolver=settings.domain_resolver,
        )
        if not result.verified:
            continue
        verified += 1
        await publisher.emit(
            DomainVerified(
                domain_id=domain_id, tenant_id=tenant_id, domain=name, delegated=result.delegated
            )
        )
    return verified


async def check_brought_domains_forever(
    sessionmaker: SessionMaker, publisher: Publisher, settings: DomainSettings
) -> None:
    while True:
        await asyncio.sleep(settings.domain_check_interval)
        try:
            await check_brought_domains(sessionmaker, publisher, settings)
        except Transient as exc:  # the broker is down: next round
            log.warning("domain check skipped", extra={"error": exc.message})
        except Exception:
            log.exception("domain check failed")
