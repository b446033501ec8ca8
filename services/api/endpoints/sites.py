"""/v1/sites, their deployments and their DNS records."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api import outbox, sites
from services.api.deployments import deployment_read
from services.api.deps import (
    DEFAULT_PAGE,
    CursorDep,
    LimitDep,
    OnceDep,
    PrincipalDep,
    SessionDep,
    StateDep,
)
from services.api.pagination import page_of, paginate
from services.api.schemas import (
    DeploymentCreate,
    DeploymentRead,
    DnsRead,
    DnsRecordRead,
    ErrorResponse,
    Page,
    RollbackCreate,
    SiteCreate,
    SiteRead,
    SiteUpdate,
)
from services.api.tls import tls_of
from shared.messages import DnsReconcileRequested
from shared.models import Deployment, DnsRecord, Site

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 503)
}
router = APIRouter(prefix="/v1/sites", tags=["sites"], responses=ERRORS)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SiteRead)
async def create_site(
    body: SiteCreate,
    principal: PrincipalDep,
    session: SessionDep,
    state: StateDep,
    once: OnceDep,
) -> Any:
    async def work() -> BaseModel:
        site = await sites.create_site(session, principal, state.catalog, body)
        return sites.site_read(site)

    return await once.run(body, 201, work)


@router.get("")
async def list_sites(
    principal: PrincipalDep,
    session: SessionDep,
    limit: LimitDep = DEFAULT_PAGE,
    cursor: CursorDep = None,
) -> Page[SiteRead]:
    rows = list(
        await session.scalars(paginate(sites.visible_sites(principal), Site.id, limit, cursor))
    )
    items, next_cursor = page_of(rows, limit, lambda s: s.id)
    tls = await tls_of(session, items)  # one query for the whole page
    return Page(items=[sites.site_read(s, tls[s.id]) for s in items], next_cursor=next_cursor)


async def _read(session: AsyncSession, site: Site) -> SiteRead:
    return sites.site_read(site, (await tls_of(session, [site]))[site.id])


@router.get("/{site_id}")
async def get_site(site_id: str, principal: PrincipalDep, session: SessionDep) -> SiteRead:
    return await _read(session, await sites.get_site(session, principal, site_id))


@router.patch("/{site_id}")
async def update_site(
    site_id: str,
    body: SiteUpdate,
    principal: PrincipalDep,
    session: SessionDep,
    state: StateDep,
) -> SiteRead:
    site = await sites.update_site(session, principal, state.catalog, site_id, body)
    return await _read(session, site)


@router.delete("/{site_id}", status_code=status.HTTP_202_ACCEPTED)
async def delete_site(site_id: str, principal: PrincipalDep, session: SessionDep) -> SiteRead:
    return await _read(session, await sites.delete_site(session, principal, site_id))


@router.post(
    "/{site_id}/deployments", status_code=status.HTTP_202_ACCEPTED, response_model=DeploymentRead
)
async def create_deployment(
    site_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    once: OnceDep,
    body: DeploymentCreate | None = None,
) -> Any:
    body = body or DeploymentCreate()

    async def work() -> BaseModel:
        site = await sites.get_site(session, principal, site_id, for_update=True)
        dep = await sites.request_deployment(session, site, reason=body.reason or "manual")
        return deployment_read(dep)

    return await once.run(body, 202, work)


@router.get("/{site_id}/deployments")
async def list_deployments(
    site_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    limit: LimitDep = DEFAULT_PAGE,
    cursor: CursorDep = None,
) -> Page[DeploymentRead]:
    site = await sites.get_site(session, principal, site_id)
    query = paginate(
        select(Deployment).where(Deployment.site_id == site.id), Deployment.id, limit, cursor
    )
    items, next_cursor = page_of(list(await session.scalars(query)), limit, lambda d: d.id)
    return Page(items=[deployment_read(d) for d in items], next_cursor=next_cursor)


@router.post(
    "/{site_id}/rollback", status_code=status.HTTP_202_ACCEPTED, response_model=DeploymentRead
)
async def rollback(
    site_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    once: OnceDep,
    body: RollbackCreate | None = None,
) -> Any:
    body = body or RollbackCreate()

    async def work() -> BaseModel:
        dep = await sites.rollback_site(session, principal, site_id, body.deployment_id)
        return deployment_read(dep)

    return await once.run(body, 202, work)


@router.get("/{site_id}/dns")
async def get_dns(site_id: str, principal: PrincipalDep, session: SessionDep) -> DnsRead:
    site = await sites.get_site(session, principal, site_id)
    rows = await session.scalars(
        select(DnsRecord)
        .where(DnsRecord.site_id == site.id)
        .order_by(DnsRecord.name, DnsRecord.type, DnsRecord.content)
    )
    return DnsRead(
        zone=f"{site.domain}.",
        records=[DnsRecordRead.model_validate(r, from_attributes=True) for r in rows],
    )


@router.post("/{site_id}/dns/reconcile", status_code=status.HTTP_202_ACCEPTED)
async def reconcile_dns(
    site_id: str, principal: PrincipalDep, session: SessionDep
) -> dict[str, str]:
    site = await sites.get_site(session, principal, site_id)
    outbox.enqueue(
        session,
        DnsReconcileRequested(tenant_id=site.tenant_id, site_id=site.id, domain=site.domain),
    )
    return {"status": "accepted"}
