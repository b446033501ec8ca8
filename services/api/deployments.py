"""Deployments: reading them, and recording what the deployer reports about them.

Reports can arrive twice or out of order; a deployment only moves forward, and a
finished deployment never changes again.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.identity import Principal
from services.api.schemas import DeploymentRead
from shared.errors import NotFound
from shared.messages import DeploymentReport, JobParked
from shared.models import Deployment, Site
from shared.timeutil import utcnow

TERMINAL = {"live", "failed", "superseded", "cancelled", "rolled_back"}
# Order of the in-flight statuses; a report may only move a deployment forward.
_RANK = {"queued": 0, "building": 1, "uploading": 2, "activating": 3}


def deployment_read(dep: Deployment) -> DeploymentRead:
    return DeploymentRead.model_validate(
        {
            "id": dep.id,
            "site_id": dep.site_id,
            "generation": dep.generation,
            "status": dep.status,
            "reason": dep.reason,
            "template_version": dep.template_version,
            "created_at": dep.created_at,
            "started_at": dep.started_at,
            "finished_at": dep.finished_at,
            "error": dep.error,
            "phases": dep.phases or [],
            "stats": dep.stats or {},
        }
    )


async def get_deployment(session: AsyncSession, principal: Principal, dep_id: str) -> Deployment:
    query = select(Deployment).where(Deployment.id == dep_id)
    if not principal.is_ops:
        query = query.where(Deployment.tenant_id == principal.tenant_id)
    dep = await session.scalar(query)
    if dep is None:
        raise NotFound(f"deployment {dep_id!r} not found", code="deployment_not_found")
    return dep


async def apply_report(session: AsyncSession, report: DeploymentReport) -> None:
    dep = await session.scalar(
        select(Deployment).where(Deployment.id == report.deployment_id).with_for_update()
    )
    if dep is None or dep.status in TERMINAL:
        return  # site deleted meanwhile, or a duplicate/late report
    if report.status not in TERMINAL and _RANK[report.status] < _RANK.get(dep.status, 0):
        return
    dep.status = report.status
    dep.phases = [p.model_dump(mode="json") for p in report.phases] or dep.phases
    if report.stats is not None:
        dep.stats = report.stats.model_dump()
    if dep.started_at is None and report.status != "queued":
        dep.started_at = report.phases[0].started_at if report.phases else report.at
    if report.error is not None:
        dep.error = report.error.model_dump()
    if report.status in TERMINAL:
        dep.finished_at = report.at
    site = await session.scalar(select(Site).where(Site.id == dep.site_id).with_for_update())
    if site is None:
        return
    if report.status == "live":
        # Exactly one live deployment per site: the one it replaces is superseded.
        await session.execute(
            update(Deployment)
            .where(
                Deployment.site_id == site.id, Deployment.status == "live", Deployment.id != dep.id
            )
            .values(status="superseded")
        )
        site.live_deployment_id = dep.id
        if site.status != "deleting":
            site.status = "live"
        site.updated_at = utcnow()
    elif report.status == "failed" and site.live_deployment_id is None:
        if site.status == "pending" and site.latest_deployment_id == dep.id:
            site.status = "failed"
            site.updated_at = utcnow()


async def apply_parked(session: AsyncSession, parked: JobParked) -> None:
    """A deploy job that gave up is a failed deployment (the notifier alerts on it)."""
    dep_id = parked.job.get("deployment_id")
    if not isinstance(dep_id, str):
        return
    dep = await session.scalar(select(Deployment).where(Deployment.id == dep_id))
    if dep is None:
        return
    report = DeploymentReport(
        deployment_id=dep.id,
        tenant_id=dep.tenant_id,
        site_id=dep.site_id,
        domain="",
        generation=dep.generation,
        status="failed",
        error=parked.error,
        phases=[],
        stats=None,
    )
    await apply_report(session, report)
