"""Sites: the desired state a tenant asks for, and the jobs that make it real.

Every change here writes its jobs to the outbox in the caller's transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api import outbox
from services.api.deployments import rollback_target
from services.api.domains import refuse_foreign_claim
from services.api.identity import Principal
from services.api.schemas import SiteCreate, SiteRead, SiteUpdate, SiteUrls, TlsRead
from services.api.template_registry import resolve_pack
from shared.domains import normalize_domain
from shared.errors import Conflict, Invalid, NotFound
from shared.ids import new_id
from shared.messages import (
    DeploymentRequested,
    DnsReconcileRequested,
    DnsRemovalRequested,
    SiteRemovalRequested,
)
from shared.models import Deployment, Site
from shared.template_packs import TemplateCatalog, TemplatePack, validate_params
from shared.timeutil import utcnow


def site_read(site: Site, tls: TlsRead | None = None) -> SiteRead:
    """The site object; ``tls`` from services/api/tls.py (a new site has none: pending)."""
    return SiteRead(
        id=site.id,
        domain=site.domain,
        template=site.template,
        template_version=site.template_version,
        params=site.params,
        status=site.status,
        live_deployment_id=site.live_deployment_id,
        latest_deployment_id=site.latest_deployment_id,
        created_at=site.created_at,
        updated_at=site.updated_at,
        urls=SiteUrls(site=f"https://{site.domain}", origin=f"http://proxy.{site.domain}"),
        tls=tls or TlsRead(),
    )


def visible_sites(principal: Principal) -> Select[Site]:
    query = select(Site)
    if not principal.is_ops:
        query = query.where(Site.tenant_id == principal.tenant_id)
    return query


async def get_site(
    session: AsyncSession, principal: Principal, site_id: str, *, for_update: bool = False
) -> Site:
    query = visible_sites(principal).where(Site.id == site_id)
    if for_update:
        query = query.with_for_update()
    site = await session.scalar(query)
    if site is None:
        raise NotFound(f"site {site_id!r} not found", code="site_not_found")
    return site


async def create_site(
    session: AsyncSession, principal: Principal, catalog: TemplateCatalog, req: SiteCreate
) -> Site:
    domain = site_domain(req.domain)
    pack = await _pack(session, catalog, req.template, req.template_version)
    params = validate_params(pack, req.params)
    # A domain another tenant bought or brought is theirs, even before a site is on it.
    await refuse_foreign_claim(session, principal.tenant_id, domain, sites=False, site_in_use=True)
    now = utcnow()
    site = Site(
        id=new_id("site"),
        tenant_id=principal.tenant_id,
        domain=domain,
        template=pack.name,
        template_version=pack.version,
        params=params,
        status="pending",
        generation=0,
        created_at=now,
        updated_at=now,
    )
    # The site row goes in whole (its latest_deployment_id set before its INSERT, so no
    # UPDATE follows); its deployment and the outbox rows go in at the commit.
    deployment = _new_deployment(site, reason="site created", rollback_to=None)
    session.add(site)
    await session.flush()  # first: the deployment row refers to it
    _request(session, site, deployment)
    outbox.enqueue(
        session,
        DnsReconcileRequested(tenant_id=site.tenant_id, site_id=site.id, domain=site.domain),
    )
    return site


async def update_site(
    session: AsyncSession,
    principal: Principal,
    catalog: TemplateCatalog,
    site_id: str,
    req: SiteUpdate,
) -> Site:
    site = await get_site(session, principal, site_id, for_update=True)
    _refuse_if_deleting(site)
    version = req.template_version or site.template_version
    pack = await _pack(session, catalog, site.template, version)
    params = validate_params(pack, req.params if req.params is not None else site.params)
    site.template_version = pack.version
    site.params = params
    site.updated_at = utcnow()
    await request_deployment(session, site, reason="site updated")
    return site


async def delete_site(session: AsyncSession, principal: Principal, site_id: str) -> Site:
    site = await get_site(session, principal, site_id, for_update=True)
    if site.status != "deleting":
        site.status = "deleting"
        # Fences off any deploy job still queued or retrying: it must not bring files back.
        site.generation += 1
        site.updated_at = utcnow()
        ids: dict[str, Any] = {
            "tenant_id": site.tenant_id,
            "site_id": site.id,
            "domain": site.domain,
        }
        outbox.enqueue(session, SiteRemovalRequested(**ids))
        outbox.enqueue(session, DnsRemovalRequested(**ids))
    return site


async def rollback_site(
    session: AsyncSession, principal: Principal, site_id: str, deployment_id: str | None
) -> Deployment:
    """A new generation that re-activates a kept release, without rebuilding."""
    site = await get_site(session, principal, site_id, for_update=True)
    _refuse_if_deleting(site)
    target = await rollback_target(session, site, deployment_id)
    site.template_version = target.template_version
    site.params = target.params
    site.updated_at = utcnow()
    return await request_deployment(
        session, site, reason=f"rollback to {target.id}", rollback_to=target.id
    )


async def request_deployment(
    session: AsyncSession, site: Site, *, reason: str | None, rollback_to: str | None = None
) -> Deployment:
    """A new generation for the site; older queued jobs will be fenced off as superseded."""
    _refuse_if_deleting(site)
    deployment = _new_deployment(site, reason=reason, rollback_to=rollback_to)
    _request(session, site, deployment)
    return deployment


def _new_deployment(site: Site, *, reason: str | None, rollback_to: str | None) -> Deployment:
    site.generation += 1
    deployment = Deployment(
        id=new_id("dep"),
        site_id=site.id,
        tenant_id=site.tenant_id,
        generation=site.generation,
        status="queued",
        reason=reason,
        template_version=site.template_version,
        params=site.params,
        rollback_to=rollback_to,
        created_at=utcnow(),
        phases=[],
        stats={},
    )
    site.latest_deployment_id = deployment.id
    return deployment


def _request(session: AsyncSession, site: Site, deployment: Deployment) -> None:
    """The deployment row and its job in the outbox (written at the commit)."""
    session.add(deployment)
    outbox.enqueue(
        session,
        DeploymentRequested(
            deployment_id=deployment.id,
            tenant_id=site.tenant_id,
            site_id=site.id,
            domain=site.domain,
            generation=deployment.generation,
            template=site.template,
            template_version=deployment.template_version,
            params=deployment.params,
            rollback_to=deployment.rollback_to,
        ),
    )


# Host names we derive from a site's domain (served and published for it automatically).
DERIVED_PREFIXES = ("www.", "proxy.", "media.")


def site_domain(raw: str) -> str:
    domain = normalize_domain(raw)
    for prefix in DERIVED_PREFIXES:
        if domain.startswith(prefix):
            apex = domain[len(prefix) :]
            reason = f"use {apex!r}: {prefix}<domain> is created for every site automatically"
            raise Invalid(
                f"domain {domain!r} is reserved: {reason}",
                code="invalid_domain",
                details={"fields": [{"field": "domain", "message": reason}]},
            )
    return domain


async def _pack(
    session: AsyncSession, catalog: TemplateCatalog, name: str, version: str | None
) -> TemplatePack:
    """The pack a request names; a name or version we do not have is a 422 on that field."""
    try:
        return await resolve_pack(session, catalog, name, version)
    except NotFound as exc:
        field = "template_version" if exc.code == "template_version_not_found" else "template"
        raise Invalid(
            exc.message,
            code=exc.code,
            details={**exc.details, "fields": [{"field": field, "message": exc.message}]},
        ) from None


def _refuse_if_deleting(site: Site) -> None:
    if site.status == "deleting":
        raise Conflict(f"site {site.id!r} is being deleted", code="site_deleting")
