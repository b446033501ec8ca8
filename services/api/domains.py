"""Domains: what a tenant buys or brings, who may claim a name, and the status the DNS
service reports (``domain.*`` events). Functions here never commit: the request or the
event handler owns the transaction; work for other services goes through the outbox."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api import outbox
from services.api.identity import Principal
from services.api.schemas import (
    DomainCheckRead,
    DomainCreate,
    DomainFailure,
    DomainRead,
    DomainUpdate,
    PriceRead,
    VerificationRead,
)
from shared.domain_ownership import challenge_name, check_ownership, enclosing_names
from shared.domains import domain_skeleton, normalize_domain, registrable_domain
from shared.errors import Conflict, Invalid, NotFound
from shared.ids import new_id
from shared.messages import (
    DnsReconcileRequested,
    DnsRemovalRequested,
    DomainExpired,
    DomainFailed,
    DomainRegistered,
    DomainRegisterRequested,
    DomainRenewed,
    DomainVerified,
    JobParked,
)
from shared.models import Domain, Site
from shared.registrar import Registrar
from shared.settings import DomainSettings
from shared.timeutil import utcnow

# One message for every "someone else has it" case, so a 409 tells nothing about who.
UNAVAILABLE = "{name} is not available"
# A claimed name is another tenant's; several unproven (pending) claims may coexist.
CLAIMED = ("registering", "active")


def domain_read(domain: Domain, settings: DomainSettings) -> DomainRead:
    return DomainRead(
        name=domain.name,
        status=domain.status,
        registrar=domain.registrar,
        expires_at=domain.expires_at,
        verification=VerificationRead(
            txt_name=challenge_name(domain.name),
            txt_value=domain.txt_value,
            nameservers=list(settings.nameservers),
        ),
        verified_at=domain.verified_at,
        bring_your_own=domain.bring_your_own,
        auto_renew=domain.auto_renew,
        delegated=domain.delegated,
        checked_at=domain.checked_at,
        failure=DomainFailure(**domain.failure) if domain.failure else None,
        created_at=domain.created_at,
    )


def visible_domains(principal: Principal) -> Select[Domain]:
    query = select(Domain)
    if not principal.is_ops:
        query = query.where(Domain.tenant_id == principal.tenant_id)
    return query


def domain_name(raw: str) -> str:
    """A normalized name, or 422 on the ``name`` field."""
    return normalize_domain(raw, field="name")


async def check_domain(registrar: Registrar, raw: str) -> DomainCheckRead:
    name = registrable_name(domain_name(raw))
    availability = await registrar.check(name)
    price = availability.price
    return DomainCheckRead(
        name=name,
        available=availability.available,
        price=PriceRead(amount=price.amount, currency=price.currency) if price else None,
        reason=availability.reason,
    )


def registrable_name(name: str) -> str:
    """Only a name one label under its public suffix can be bought (``example.co.uk``,
    not ``www.example.co.uk``)."""
    if registrable_domain(name) != name:
        reason = "only a registrable domain (one label under its public suffix) can be bought"
        raise Invalid(
            f"{name!r} cannot be bought: {reason}",
            code="invalid_domain",
            details={"fields": [{"field": "name", "message": reason}]},
        )
    return name


async def get_domain(
    session: AsyncSession, principal: Principal, raw: str, *, for_update: bool = False
) -> Domain:
    try:
        name = normalize_domain(raw, field="name")
    except Invalid:
        name = raw  # a name that cannot exist is simply not found
    # An ops token sees every tenant's rows: the claimed one first.
    query = (
        visible_domains(principal)
        .where(Domain.name == name)
        .order_by(Domain.status.in_(CLAIMED).desc(), Domain.id)
        .limit(1)
    )
    if for_update:
        query = query.with_for_update()
    domain = await session.scalar(query)
    if domain is None:
        raise NotFound(f"domain {raw!r} not found", code="domain_not_found")
    return domain


async def refuse_foreign_claim(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    sites: bool = True,
    site_in_use: bool = False,
) -> None:
    """409 when ``name``, a domain it is under, or a name under it is claimed by another
    tenant (a domain being bought or active, or a site when ``sites``), or when it is a
    homograph of another tenant's claimed domain. Unproven claims (``pending_verification``)
    block nobody. The message never says whose. With ``site_in_use``, first 409
    ``domain_in_use`` when any site (of any tenant) already has ``name``. One query."""
    related = enclosing_names(name)
    under = f"%.{_escape_like(name)}"
    checks: dict[str, Select[Any]] = {}
    if site_in_use:
        checks["in_use"] = select(Site.id).where(Site.domain == name)
    checks["foreign_domain"] = select(Domain.id).where(
        Domain.tenant_id != tenant_id,
        Domain.status.in_(CLAIMED),
        or_(Domain.name.in_(related), Domain.name.like(under)),
    )
    if sites:
        checks["foreign_site"] = select(Site.id).where(
            Site.tenant_id != tenant_id,
            or_(Site.domain.in_(related), Site.domain.like(under)),
        )
    checks["look_alike"] = select(Domain.id).where(
        Domain.tenant_id != tenant_id,
        Domain.status.in_(CLAIMED),
        Domain.skeleton == domain_skeleton(name),
        Domain.name != name,
    )
    found = (
        (
            await session.execute(
                select(
                    *(query.limit(1).scalar_subquery().label(key) for key, query in checks.items())
                )
            )
        )
        .one()
        ._mapping
    )
    if found.get("in_use"):
        raise Conflict(f"domain {name!r} is already used by a site", code="domain_in_use")
    if found["foreign_domain"] or found.get("foreign_site"):
        raise Conflict(UNAVAILABLE.format(name=name), code="domain_unavailable")
    if found["look_alike"]:
        raise Conflict(
            f"{name} looks like a domain already used on Sitefleet (a possible homograph)",
            code="domain_confusable",
        )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def add_domain(
    session: AsyncSession, principal: Principal, registrar: Registrar, req: DomainCreate
) -> Domain:
    """Buy (``registering``, a job for the DNS service) or bring (``pending_verification``)."""
    name = domain_name(req.name)
    if not req.bring_your_own:
        name = registrable_name(name)
    mine = await session.scalar(
        select(Domain).where(Domain.name == name, Domain.tenant_id == principal.tenant_id)
    )
    if mine is not None and mine.status not in ("failed", "expired"):
        raise Conflict(f"{name} is already one of your domains", code="domain_exists")
    await refuse_foreign_claim(session, principal.tenant_id, name)
    if mine is not None:  # a failed purchase or a lapsed domain: start a new order
        await session.delete(mine)
        await session.flush()
    if not req.bring_your_own:
        availability = await registrar.check(name)
        if not availability.available:
            raise Conflict(
                f"{name} is not available for registration: {availability.reason}",
                code="domain_unavailable",
            )
    now = utcnow()
    domain = Domain(
        id=new_id("dom"),
        tenant_id=principal.tenant_id,
        name=name,
        skeleton=domain_skeleton(name),
        status="pending_verification" if req.bring_your_own else "registering",
        bring_your_own=req.bring_your_own,
        registrar=None if req.bring_your_own else registrar.name,
        years=None if req.bring_your_own else req.years,
        auto_renew=not req.bring_your_own,
        txt_value=secrets.token_urlsafe(24),
        created_at=now,
        updated_at=now,
    )
    session.add(domain)
    await session.flush()
    if not req.bring_your_own:
        outbox.enqueue(
            session,
            DomainRegisterRequested(
                domain_id=domain.id, tenant_id=domain.tenant_id, domain=name, years=req.years
            ),
        )
    return domain


async def update_domain(
    session: AsyncSession, principal: Principal, raw: str, req: DomainUpdate
) -> Domain:
    domain = await get_domain(session, principal, raw, for_update=True)
    if domain.bring_your_own and req.auto_renew:
        raise Invalid(
            "a brought domain is renewed where it is registered, not here",
            code="not_renewable",
            details={"fields": [{"field": "auto_renew", "message": "only for bought domains"}]},
        )
    domain.auto_renew = req.auto_renew
    domain.updated_at = utcnow()
    return domain


async def verify_domain(
    session: AsyncSession, principal: Principal, raw: str, settings: DomainSettings
) -> Domain:
    """Check a brought domain's challenge TXT record now; activate it when found."""
    domain = await get_domain(session, principal, raw, for_update=True)
    if not domain.bring_your_own or domain.status not in ("pending_verification", "active"):
        return domain
    result = await check_ownership(
        domain.name,
        txt_value=domain.txt_value,
        nameservers=settings.nameservers,
        resolver=settings.domain_resolver,
    )
    domain.checked_at = utcnow()
    domain.delegated = result.delegated
    if result.verified and await claimed_by_other(session, domain):
        domain.failure = {
            "code": "domain_unavailable",
            "message": UNAVAILABLE.format(name=domain.name),
        }
    elif result.verified:
        await activate(session, domain)
        domain.failure = (
            None if result.problem is None else {"code": "not_delegated", "message": result.problem}
        )
    else:
        domain.failure = {"code": "verification_failed", "message": result.problem or ""}
    domain.updated_at = utcnow()
    return domain


async def claimed_by_other(session: AsyncSession, domain: Domain) -> bool:
    """Whether another tenant proved or bought this name first."""
    found = await session.scalar(
        select(Domain.id)
        .where(
            Domain.name == domain.name,
            Domain.tenant_id != domain.tenant_id,
            Domain.status.in_(CLAIMED),
        )
        .with_for_update()
    )
    return found is not None


async def activate(session: AsyncSession, domain: Domain) -> None:
    """Mark the domain active and publish the DNS of the tenant's sites on it (held back
    until now when ownership is enforced)."""
    first = domain.status != "active"
    domain.status = "active"
    domain.verified_at = domain.verified_at or utcnow()
    domain.failure = None
    if not first:
        return
    for site_id, site_domain in await _sites_on(session, domain):
        outbox.enqueue(
            session,
            DnsReconcileRequested(tenant_id=domain.tenant_id, site_id=site_id, domain=site_domain),
        )


DomainEvent = (
    DomainRegistered | DomainVerified | DomainRenewed | DomainExpired | DomainFailed | JobParked
)


async def expire(session: AsyncSession, domain: Domain) -> None:
    """The registration lapsed: ``expired``, and the tenant's sites on it lose their DNS
    records (their files stay; records come back if the domain is active again)."""
    if domain.status == "expired":
        return
    domain.status = "expired"
    for site_id, site_domain in await _sites_on(session, domain):
        outbox.enqueue(
            session,
            DnsRemovalRequested(tenant_id=domain.tenant_id, site_id=site_id, domain=site_domain),
        )


async def _sites_on(session: AsyncSession, domain: Domain) -> list[tuple[str, str]]:
    rows = await session.execute(
        select(Site.id, Site.domain).where(
            Site.tenant_id == domain.tenant_id,
            Site.status != "deleting",
            or_(Site.domain == domain.name, Site.domain.like(f"%.{_escape_like(domain.name)}")),
        )
    )
    return [(site_id, site_domain) for site_id, site_domain in rows]


async def apply_domain_event(session: AsyncSession, event: DomainEvent) -> None:
    """What the DNS service reports about a purchase or a verification."""
    if isinstance(event, JobParked):
        domain_id = str(event.job.get("domain_id", ""))
    else:
        domain_id = event.domain_id
    domain = await session.scalar(select(Domain).where(Domain.id == domain_id).with_for_update())
    if domain is None:
        return
    domain.updated_at = utcnow()
    if isinstance(event, DomainRegistered):
        domain.expires_at = event.expires_at
        domain.delegated = True
        await activate(session, domain)
    elif isinstance(event, DomainRenewed):
        domain.expires_at = event.expires_at
    elif isinstance(event, DomainExpired):
        await expire(session, domain)
    elif isinstance(event, DomainVerified):
        domain.checked_at = event.checked_at
        domain.delegated = event.delegated
        if domain.status == "pending_verification":
            if await claimed_by_other(session, domain):
                domain.failure = {
                    "code": "domain_unavailable",
                    "message": UNAVAILABLE.format(name=domain.name),
                }
            else:
                await activate(session, domain)
    elif domain.status == "registering":  # failed or parked: only a purchase can fail
        domain.status = "failed"
        domain.failure = {"code": event.error.code, "message": event.error.message}
