"""Template rollouts: upgrading every site of a template to another version, canary sites
first (wave 0), then waves of ``batch_size``. Each site upgrade is a normal deployment.

All state is in ``rollouts`` / ``rollout_sites``; ``advance`` moves one rollout as far as
it can go from what the database says (it is called by the request that changes a
rollout and by the driver loop, woken by deployment outcomes), so a restart of any service
loses nothing: the next pass carries on.

A site's upgrade: its params are migrated (the new version's declared ``param_migrations``,
then its schema; params that cannot be migrated make the site ``skipped`` with the
reason, untouched), its desired state moves to the new version and a deployment is
requested. A failed deployment never switched the site's ``current``, so the site kept
serving its old release; its desired state is put back on the old version and params, and
(if it had gone live) a rollback deployment re-activates that release, so the site's
latest deployment is live again. When a wave's failed / attempted ratio is above
``max_failure_ratio`` the rollout halts (``rollout.halted``); after the last wave it is
``completed`` (``rollout.completed``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.api import outbox
from services.api.deployments import TERMINAL
from services.api.schemas import RolloutCountsRead, RolloutCreate, RolloutRead
from services.api.sites import request_deployment
from services.api.template_registry import resolve_pack
from shared.broker import EVENTS_EXCHANGE
from shared.errors import Conflict, Invalid, NotFound
from shared.ids import new_id
from shared.messages import ErrorInfo, RolloutCompleted, RolloutCounts, RolloutHalted
from shared.models import Deployment, Rollout, RolloutSite, Site, TemplateVersion
from shared.template_packs import TemplateCatalog, TemplatePack, migrate_params
from shared.timeutil import utcnow

ACTIVE = ("running", "paused")


def _field_error(field: str, message: str, code: str) -> Invalid:
    return Invalid(message, code=code, details={"fields": [{"field": field, "message": message}]})


async def create_rollout(
    session: AsyncSession, catalog: TemplateCatalog, template: str, req: RolloutCreate
) -> Rollout:
    known = set(
        await session.scalars(
            select(TemplateVersion.version).where(TemplateVersion.name == template)
        )
    )
    if not known and not catalog.versions(template):
        raise NotFound(f"template {template!r} does not exist", code="template_not_found")
    try:
        await resolve_pack(session, catalog, template, req.to_version)
    except NotFound:
        raise _field_error(
            "to_version",
            f"template {template!r} has no version {req.to_version!r}",
            "template_version_not_found",
        ) from None
    if req.from_version is not None:
        if req.from_version not in known:
            raise _field_error(
                "from_version",
                f"template {template!r} has no version {req.from_version!r}",
                "template_version_not_found",
            )
        if req.from_version == req.to_version:
            raise _field_error(
                "from_version", "from_version and to_version are the same", "same_version"
            )
    now = utcnow()
    rollout = Rollout(
        id=new_id("rol"),
        template=template,
        from_version=req.from_version,
        to_version=req.to_version,
        canary=req.canary,
        batch_size=req.batch_size,
        max_failure_ratio=req.max_failure_ratio,
        status="running",
        wave=0,
        created_at=now,
        updated_at=now,
    )
    try:
        async with session.begin_nested():
            session.add(rollout)
            await session.flush()
    except IntegrityError:
        active = await session.scalar(
            select(Rollout.id).where(Rollout.template == template, Rollout.status.in_(ACTIVE))
        )
        raise Conflict(
            f"template {template!r} already has a rollout in progress ({active}); "
            "pause, abort or wait for it first",
            code="rollout_in_progress",
            details={"rollout_id": active},
        ) from None
    await _plan(session, rollout)
    await advance(session, catalog, rollout)
    return rollout


async def _plan(session: AsyncSession, rollout: Rollout) -> None:
    """Every site of the template on the versions rolled from, oldest site first: the
    first ``canary`` are wave 0, then waves 1, 2, ... of ``batch_size``."""
    query = select(Site.id, Site.domain).where(
        Site.template == rollout.template,
        Site.status != "deleting",
        Site.template_version != rollout.to_version,
    )
    if rollout.from_version is not None:
        query = query.where(Site.template_version == rollout.from_version)
    rows = (await session.execute(query.order_by(Site.created_at, Site.id))).all()
    now = utcnow()
    for n, (site_id, domain) in enumerate(rows):
        wave = 0 if n < rollout.canary else 1 + (n - rollout.canary) // rollout.batch_size
        session.add(
            RolloutSite(
                rollout_id=rollout.id,
                site_id=site_id,
                domain=domain,
                wave=wave,
                status="pending",
                updated_at=now,
            )
        )
    await session.flush()


async def get_rollout(
    session: AsyncSession, rollout_id: str, *, for_update: bool = False
) -> Rollout:
    query = select(Rollout).where(Rollout.id == rollout_id)
    if for_update:
        query = query.with_for_update()
    rollout = await session.scalar(query)
    if rollout is None:
        raise NotFound(f"rollout {rollout_id!r} not found", code="rollout_not_found")
    return rollout


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


async def rollout_read(session: AsyncSession, rollout: Rollout) -> RolloutRead:
    return RolloutRead(
        id=rollout.id,
        template=rollout.template,
        from_version=rollout.from_version,
        to_version=rollout.to_version,
        status=rollout.status,
        counts=RolloutCountsRead(**(await counts(session, rollout.id)).model_dump()),
        canary=rollout.canary,
        batch_size=rollout.batch_size,
        max_failure_ratio=rollout.max_failure_ratio,
        wave=rollout.wave,
        halt_reason=rollout.halt_reason,
        created_at=rollout.created_at,
        updated_at=rollout.updated_at,
        finished_at=rollout.finished_at,
    )


async def pause(session: AsyncSession, rollout_id: str) -> Rollout:
    """No new site starts; deployments already running finish and are recorded."""
    rollout = await get_rollout(session, rollout_id, for_update=True)
    if rollout.status not in ACTIVE:
        raise _finished(rollout)
    rollout.status = "paused"
    rollout.updated_at = utcnow()
    return rollout


async def resume(session: AsyncSession, catalog: TemplateCatalog, rollout_id: str) -> Rollout:
    rollout = await get_rollout(session, rollout_id, for_update=True)
    if rollout.status not in ACTIVE:
        raise _finished(rollout)
    rollout.status = "running"
    rollout.updated_at = utcnow()
    await advance(session, catalog, rollout)
    return rollout


async def abort(session: AsyncSession, rollout_id: str) -> Rollout:
    """Stops for good: sites not started stay as they are (``pending``), deployments
    already running finish, and any that fail are put back like in a running rollout."""
    rollout = await get_rollout(session, rollout_id, for_update=True)
    if rollout.status not in ACTIVE:
        raise _finished(rollout)
    now = utcnow()
    rollout.status = "aborted"
    rollout.updated_at = rollout.finished_at = now
    return rollout


def _finished(rollout: Rollout) -> Conflict:
    return Conflict(f"rollout {rollout.id!r} is {rollout.status}", code="rollout_finished")


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
