"""Moving a rollout forward (the driver's work, also done by the request that starts or
resumes one): record finished upgrades, start the current wave's sites, evaluate a
finished wave, halt or go on to the next, complete.

A site's upgrade: its params are migrated (the new version's declared ``param_migrations``,
then its schema; params that cannot be migrated make the site ``skipped`` with the
reason, untouched), its desired state moves to the new version and a normal deployment is
requested. A failed deployment never switched the site's ``current``, so the site kept
serving its old release; its desired state is put back on the old version and params, and
(if it had gone live) a rollback deployment re-activates that release, so the site's
latest deployment is live again. When a wave's failed / attempted ratio is above
``max_failure_ratio`` the rollout halts (``rollout.halted``); after the last wave it is
``completed`` (``rollout.completed``).

Lock order: the rollout row, then site rows (by id); deployment events lock a deployment
then its site and never a rollout, so the two cannot deadlock.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api import outbox
from services.api.deployments import TERMINAL
from services.api.sites import request_deployment
from services.api.template_registry import resolve_pack
from shared.broker import EVENTS_EXCHANGE
from shared.errors import Conflict, Invalid, NotFound
from shared.messages import ErrorInfo, RolloutCompleted, RolloutCounts, RolloutHalted
from shared.models import Deployment, Rollout, RolloutSite, Site
from shared.template_packs import TemplateCatalog, TemplatePack, migrate_params
from shared.timeutil import utcnow


async def counts(session: AsyncSession, rollout_id: str) -> RolloutCounts:
    by_status: Counter[str] = Counter(
        dict(
            (
                await session.execute(
                    select(RolloutSite.status, func.count())
                    .where(RolloutSite.rollout_id == rollout_id)
                    .group_by(RolloutSite.status)
                )
            ).all()
        )
    )
    return RolloutCounts(
        total=sum(by_status.values()),
        pending=by_status["pending"] + by_status["deploying"],
        succeeded=by_status["succeeded"],
        failed=by_status["failed"],
        skipped=by_status["skipped"],
    )


async def rollouts_to_drive(session: AsyncSession) -> list[str]:
    """Rollouts with something to do: running ones, and any with deployments in flight
    (a paused, halted or aborted rollout still records their outcomes)."""
    deploying = select(RolloutSite.rollout_id).where(RolloutSite.status == "deploying")
    return list(
        await session.scalars(
            select(Rollout.id).where(or_(Rollout.status == "running", Rollout.id.in_(deploying)))
        )
    )


async def drive(session: AsyncSession, catalog: TemplateCatalog, rollout_id: str) -> bool:
    """One driver pass over one rollout; False if another process is driving it."""
    rollout = await session.scalar(
        select(Rollout).where(Rollout.id == rollout_id).with_for_update(skip_locked=True)
    )
    if rollout is None:
        return False
    await advance(session, catalog, rollout)
    return True


async def advance(session: AsyncSession, catalog: TemplateCatalog, rollout: Rollout) -> None:
    """Record finished deployments, then start, evaluate and move past waves as far as
    possible. The caller holds the rollout's row lock."""
    await _record_outcomes(session, rollout)
    while rollout.status == "running":
        rows = list(
            await session.scalars(
                select(RolloutSite).where(
                    RolloutSite.rollout_id == rollout.id, RolloutSite.wave == rollout.wave
                )
            )
        )
        pending = [r for r in rows if r.status == "pending"]
        if pending:
            await _start(session, catalog, rollout, pending)
            if rollout.status != "running":
                return  # halted: the new version cannot be used
        if any(r.status == "deploying" for r in rows):
            return
        failed = sum(r.status == "failed" for r in rows)
        attempted = failed + sum(r.status == "succeeded" for r in rows)
        if attempted and failed / attempted > rollout.max_failure_ratio:
            await _halt(
                session,
                rollout,
                f"wave {rollout.wave}: {failed} of {attempted} site upgrades failed "
                f"(ratio {failed / attempted:.2f} > {rollout.max_failure_ratio}); "
                f"the failed sites were put back on their old version",
            )
            return
        following = await session.scalar(
            select(func.min(RolloutSite.wave)).where(
                RolloutSite.rollout_id == rollout.id, RolloutSite.wave > rollout.wave
            )
        )
        if following is None:
            await _complete(session, rollout)
            return
        rollout.wave = following
        rollout.updated_at = utcnow()


async def _start(
    session: AsyncSession, catalog: TemplateCatalog, rollout: Rollout, rows: list[RolloutSite]
) -> None:
    try:
        pack = await resolve_pack(session, catalog, rollout.template, rollout.to_version)
    except (NotFound, Conflict) as exc:
        await _halt(session, rollout, f"version {rollout.to_version} is unusable: {exc.message}")
        return
    sites = {
        s.id: s
        for s in await session.scalars(
            select(Site)
            .where(Site.id.in_([r.site_id for r in rows]))
            .order_by(Site.id)
            .with_for_update()
        )
    }
    now = utcnow()
    for row in rows:
        row.updated_at = now
        site = sites.get(row.site_id)
        reason = _not_upgradable(rollout, site)
        if reason is None and site is not None:
            try:
                params = migrate_params(pack, site.template_version, site.params)
            except Invalid as exc:
                reason = _describe_invalid(site.template_version, pack, exc)
            else:
                await _upgrade(session, rollout, row, site, pack, params)
                continue
        row.status = "skipped"
        row.reason = reason


def _not_upgradable(rollout: Rollout, site: Site | None) -> str | None:
    if site is None or site.status == "deleting":
        return "the site was deleted"
    if site.template != rollout.template:
        return f"the site now uses template {site.template!r}"
    if site.template_version == rollout.to_version:
        return f"the site is already on {rollout.to_version}"
    if rollout.from_version is not None and site.template_version != rollout.from_version:
        return f"the site moved to {site.template_version} since the rollout began"
    return None


def _describe_invalid(from_version: str, pack: TemplatePack, exc: Invalid) -> str:
    fields = "; ".join(
        f"{f.get('field')}: {f.get('message')}" for f in exc.details.get("fields", [])[:5]
    )
    return f"params of {from_version} cannot be migrated to {pack.version}: {fields or exc.message}"


async def _upgrade(
    session: AsyncSession,
    rollout: Rollout,
    row: RolloutSite,
    site: Site,
    pack: TemplatePack,
    params: dict[str, Any],
) -> None:
    row.from_version = site.template_version
    row.from_params = site.params
    site.template_version = pack.version
    site.params = params
    site.updated_at = utcnow()
    dep = await request_deployment(
        session, site, reason=f"rollout {rollout.id}: {row.from_version} -> {pack.version}"
    )
    row.deployment_id = dep.id
    row.status = "deploying"


async def _record_outcomes(session: AsyncSession, rollout: Rollout) -> None:
    rows = (
        await session.execute(
            select(RolloutSite, Deployment)
            .outerjoin(Deployment, Deployment.id == RolloutSite.deployment_id)
            .where(RolloutSite.rollout_id == rollout.id, RolloutSite.status == "deploying")
        )
    ).all()
    now = utcnow()
    for row, dep in rows:
        if dep is None:
            row.status, row.reason = "skipped", "the site was deleted"
        elif dep.status not in TERMINAL:
            continue
        elif dep.status == "live" or dep.went_live_at is not None:
            row.status, row.reason = "succeeded", None
        elif dep.status == "superseded":
            row.status, row.reason = "skipped", "a newer change of the site replaced the upgrade"
        else:
            error = dep.error or {}
            row.status = "failed"
            row.reason = (
                f"deployment {dep.status}: {error.get('code', '')}: "
                + str(error.get("message", ""))[:1000]
            )
            await _restore(session, rollout, row)
        row.updated_at = now


async def _restore(session: AsyncSession, rollout: Rollout, row: RolloutSite) -> None:
    """Put a site whose upgrade failed back on its old version (unless it changed since)."""
    site = await session.scalar(select(Site).where(Site.id == row.site_id).with_for_update())
    if site is None or site.status == "deleting" or site.latest_deployment_id != row.deployment_id:
        return
    site.template_version = row.from_version or site.template_version
    site.params = row.from_params if row.from_params is not None else site.params
    site.updated_at = utcnow()
    if site.live_deployment_id is not None:
        dep = await request_deployment(
            session,
            site,
            reason=f"rollout {rollout.id}: back to {site.template_version}",
            rollback_to=site.live_deployment_id,
        )
        row.restore_deployment_id = dep.id


async def _halt(session: AsyncSession, rollout: Rollout, reason: str) -> None:
    now = utcnow()
    rollout.status = "halted"
    rollout.halt_reason = reason
    rollout.updated_at = rollout.finished_at = now
    await session.flush()
    outbox.enqueue(
        session,
        RolloutHalted(
            rollout_id=rollout.id,
            template=rollout.template,
            from_version=rollout.from_version,
            to_version=rollout.to_version,
            counts=await counts(session, rollout.id),
            error=ErrorInfo(
                code="rollout_halted",
                message=f"rollout of {rollout.template} to {rollout.to_version} halted: {reason}",
            ),
        ),
        exchange=EVENTS_EXCHANGE,
    )


async def _complete(session: AsyncSession, rollout: Rollout) -> None:
    now = utcnow()
    rollout.status = "completed"
    rollout.updated_at = rollout.finished_at = now
    await session.flush()
    outbox.enqueue(
        session,
        RolloutCompleted(
            rollout_id=rollout.id,
            template=rollout.template,
            from_version=rollout.from_version,
            to_version=rollout.to_version,
            counts=await counts(session, rollout.id),
        ),
        exchange=EVENTS_EXCHANGE,
    )
