"""Deployments: reading them, recording what the deployer reports about them, rollback,
cancel, and reaping the ones that never finish.

Reports can arrive twice or out of order; a deployment only moves forward, and a finished
deployment never changes again (except that a release the host really activated is
recorded as live even if a cancel lost the race against it).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.api import outbox
from services.api.identity import Principal
from services.api.schemas import DeploymentRead
from shared.broker import EVENTS_EXCHANGE
from shared.errors import Conflict, Invalid, NotFound
from shared.messages import (
    DeploymentCancelRequested,
    DeploymentFailed,
    DeploymentReport,
    ErrorInfo,
    JobParked,
    Phase,
)
from shared.models import Deployment, DeploymentLogLine, Site
from shared.timeutil import utcnow

TERMINAL = {"live", "failed", "superseded", "cancelled", "rolled_back"}
IN_FLIGHT = ("queued", "building", "uploading", "activating")
# Order of the in-flight statuses; a report may only move a deployment forward.
_RANK = {status: rank for rank, status in enumerate(IN_FLIGHT)}


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


async def get_deployment(
    session: AsyncSession, principal: Principal, dep_id: str, *, for_update: bool = False
) -> Deployment:
    query = select(Deployment).where(Deployment.id == dep_id)
    if not principal.is_ops:
        query = query.where(Deployment.tenant_id == principal.tenant_id)
    if for_update:
        query = query.with_for_update()
    dep = await session.scalar(query)
    if dep is None:
        raise NotFound(f"deployment {dep_id!r} not found", code="deployment_not_found")
    return dep


def _log(session: AsyncSession, dep: Deployment, at: datetime, level: str, message: str) -> None:
    session.add(DeploymentLogLine(deployment_id=dep.id, at=at, level=level, message=message))


def _log_phases(session: AsyncSession, dep: Deployment, phases: list[Phase]) -> None:
    """Log each phase start and end the first time a report shows it."""
    seen = {(p["name"], p["status"]) for p in dep.phases or []}
    for phase in phases:
        if (phase.name, "running") not in seen and (phase.name, phase.status) not in seen:
            _log(session, dep, phase.started_at, "info", f"{phase.name} started")
        if phase.finished_at is not None and (phase.name, phase.status) not in seen:
            ms = (phase.finished_at - phase.started_at).total_seconds() * 1000
            level = "info" if phase.status == "succeeded" else "error"
            _log(
                session,
                dep,
                phase.finished_at,
                level,
                f"{phase.name} {phase.status} in {ms:.0f} ms",
            )


async def apply_report(session: AsyncSession, report: DeploymentReport) -> None:
    dep = await session.scalar(
        select(Deployment).where(Deployment.id == report.deployment_id).with_for_update()
    )
    if dep is None:
        return  # the site was deleted meanwhile
    late_but_live = dep.status == "cancelled" and report.status == "live"
    if dep.status in TERMINAL and not late_but_live:
        return  # a duplicate or late report
    if report.status not in TERMINAL and _RANK[report.status] < _RANK.get(dep.status, 0):
        return
    _log_phases(session, dep, report.phases)
    for line in report.log:
        _log(session, dep, line.at, line.level, line.message[:4000])
    dep.status = report.status
    dep.phases = [p.model_dump(mode="json") for p in report.phases] or dep.phases
    if report.stats is not None:
        dep.stats = report.stats.model_dump()
    if dep.started_at is None and report.status != "queued":
        dep.started_at = report.phases[0].started_at if report.phases else report.at
    if report.error is not None:
        dep.error = report.error.model_dump()
    elif late_but_live:
        dep.error = None
    if report.status in TERMINAL:
        dep.finished_at = report.at
        outcome = (
            report.status
            if report.error is None
            else (f"{report.status}: {report.error.code}: {report.error.message}")
        )
        _log(
            session,
            dep,
            report.at,
            "error" if report.status == "failed" else "info",
            f"deployment {outcome}",
        )
    site = await session.scalar(select(Site).where(Site.id == dep.site_id).with_for_update())
    if site is None:
        return
    if report.status == "live":
        dep.went_live_at = report.at
        current = (
            await session.get(Deployment, site.live_deployment_id)
            if site.live_deployment_id
            else None
        )
        if current is not None and current.id != dep.id and current.generation > dep.generation:
            # Reports of two deployments can arrive out of order. Activations of a site are
            # serialized and fenced by generation, so the newer one is what is served.
            dep.status = "superseded"
            return
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


async def rollback_target(
    session: AsyncSession, site: Site, deployment_id: str | None
) -> Deployment:
    """The release to go back to: the given one, or the one live before the current."""
    query = select(Deployment).where(
        Deployment.site_id == site.id, Deployment.went_live_at.is_not(None)
    )
    if deployment_id is not None:
        target = await session.scalar(query.where(Deployment.id == deployment_id))
        if target is None:
            raise Invalid(
                f"deployment {deployment_id!r} of this site never went live",
                code="rollback_target_invalid",
                details={
                    "fields": [
                        {
                            "field": "deployment_id",
                            "message": "not a deployment of this site that went live",
                        }
                    ]
                },
            )
        return target
    target = await session.scalar(
        query.where(Deployment.id != site.live_deployment_id)
        .order_by(Deployment.went_live_at.desc())
        .limit(1)
    )
    if target is None:
        raise Conflict(
            "this site has no earlier release to roll back to", code="nothing_to_roll_back_to"
        )
    return target


async def cancel_deployment(session: AsyncSession, principal: Principal, dep_id: str) -> Deployment:
    """Marks an unfinished deployment cancelled and tells every deployer, so the one running
    it stops (killing its build). A deployer also checks the status before it uploads and
    right before it activates, so a cancelled release never goes live (unless activation had
    already begun: then the live report wins, see apply_report)."""
    dep = await get_deployment(session, principal, dep_id, for_update=True)
    if dep.status in TERMINAL:
        raise Conflict(
            f"deployment {dep_id!r} already finished ({dep.status})", code="deployment_finished"
        )
    now = utcnow()
    dep.status = "cancelled"
    dep.finished_at = now
    dep.error = {"code": "cancelled", "message": "cancelled by request"}
    _log(session, dep, now, "warning", "deployment cancelled by request")
    outbox.enqueue(
        session,
        DeploymentCancelRequested(deployment_id=dep.id, site_id=dep.site_id),
        exchange=EVENTS_EXCHANGE,
    )
    return dep


async def reap_stuck(session: AsyncSession, older_than: timedelta) -> int:
    """Deployments unfinished for too long are failed and announced, never left hanging."""
    stuck = list(
        await session.scalars(
            select(Deployment)
            .where(Deployment.status.in_(IN_FLIGHT), Deployment.created_at < utcnow() - older_than)
            .with_for_update(skip_locked=True)
            .limit(500)
        )
    )
    for dep in stuck:
        site = await session.get(Site, dep.site_id)
        error = ErrorInfo(
            code="deployment_timed_out",
            message=f"no outcome after {older_than.total_seconds():.0f} s "
            f"(last status {dep.status})",
        )
        report = DeploymentFailed(
            deployment_id=dep.id,
            tenant_id=dep.tenant_id,
            site_id=dep.site_id,
            domain=site.domain if site else "",
            generation=dep.generation,
            status="failed",
            error=error,
            phases=[Phase.model_validate(p) for p in dep.phases or []],
        )
        await apply_report(session, report)
        outbox.enqueue(session, report, exchange=EVENTS_EXCHANGE)
    return len(stuck)
