"""Template rollouts as ops ask for them: start one (planned over every tenant's sites of
the template: canary sites are wave 0, then waves of ``batch_size``), read it, pause,
resume, abort. Moving it forward is ``rollout_waves``' work.

All state is in ``rollouts`` / ``rollout_sites``; ``advance`` moves a rollout as far as it
can go from what the database says (called by the request that starts or resumes it and
by the driver loop, woken by deployment outcomes), so a restart of any service loses
nothing: the next pass carries on.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.rollout_waves import advance, counts
from services.api.schemas import RolloutCountsRead, RolloutCreate, RolloutRead
from services.api.template_registry import resolve_pack
from shared.errors import Conflict, Invalid, NotFound
from shared.ids import new_id
from shared.models import Rollout, RolloutSite, Site, TemplateVersion
from shared.template_packs import TemplateCatalog
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
