"""Template rollouts (ops scope): start one over every tenant's sites of a template, watch
it, pause / resume / abort it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel
from sqlalchemy import select

from services.api import rollouts
from services.api.deps import (
    DEFAULT_PAGE,
    CursorDep,
    LimitDep,
    OnceDep,
    PrincipalDep,
    SessionDep,
    StateDep,
)
from services.api.identity import Principal
from services.api.pagination import decode_cursor, encode_cursor
from services.api.schemas import (
    ErrorResponse,
    Page,
    RolloutCreate,
    RolloutRead,
    RolloutSiteRead,
)
from shared.errors import Forbidden
from shared.models import RolloutSite


async def require_ops(principal: PrincipalDep) -> Principal:
    if not principal.is_ops:
        raise Forbidden(
            "rollouts need an ops token (sitefleet token create --ops)", code="ops_scope_required"
        )
    return principal


router = APIRouter(
    prefix="/v1",
    tags=["rollouts"],
    dependencies=[Depends(require_ops)],
    responses={code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422)},
)


@router.post(
    "/templates/{name}/rollouts", status_code=status.HTTP_202_ACCEPTED, response_model=RolloutRead
)
async def create(
    name: str, body: RolloutCreate, session: SessionDep, state: StateDep, once: OnceDep
) -> Any:
    async def work() -> BaseModel:
        rollout = await rollouts.create_rollout(session, state.catalog, name, body)
        return await rollouts.rollout_read(session, rollout)

    return await once.run(body, status.HTTP_202_ACCEPTED, work)


@router.get("/rollouts/{rollout_id}")
async def get_one(rollout_id: str, session: SessionDep) -> RolloutRead:
    return await rollouts.rollout_read(session, await rollouts.get_rollout(session, rollout_id))


@router.get("/rollouts/{rollout_id}/sites")
async def list_sites(
    rollout_id: str,
    session: SessionDep,
    limit: LimitDep = DEFAULT_PAGE,
    cursor: CursorDep = None,
) -> Page[RolloutSiteRead]:
    """Each site of the rollout, its wave, status and (when failed or skipped) why."""
    await rollouts.get_rollout(session, rollout_id)
    query = select(RolloutSite).where(RolloutSite.rollout_id == rollout_id)
    if cursor is not None:
        query = query.where(RolloutSite.site_id > decode_cursor(cursor))
    rows = list(await session.scalars(query.order_by(RolloutSite.site_id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[RolloutSiteRead](
        items=[
            RolloutSiteRead(
                site_id=r.site_id,
                domain=r.domain,
                wave=r.wave,
                status=r.status,
                from_version=r.from_version,
                deployment_id=r.deployment_id,
                restore_deployment_id=r.restore_deployment_id,
                reason=r.reason,
            )
            for r in rows
        ],
        next_cursor=encode_cursor(rows[-1].site_id) if more and rows else None,
    )


@router.post("/rollouts/{rollout_id}/pause", status_code=status.HTTP_202_ACCEPTED)
async def pause(rollout_id: str, session: SessionDep) -> RolloutRead:
    return await rollouts.rollout_read(session, await rollouts.pause(session, rollout_id))


@router.post("/rollouts/{rollout_id}/resume", status_code=status.HTTP_202_ACCEPTED)
async def resume(rollout_id: str, session: SessionDep, state: StateDep) -> RolloutRead:
    rollout = await rollouts.resume(session, state.catalog, rollout_id)
    return await rollouts.rollout_read(session, rollout)


@router.post("/rollouts/{rollout_id}/abort", status_code=status.HTTP_202_ACCEPTED)
async def abort(rollout_id: str, session: SessionDep) -> RolloutRead:
    return await rollouts.rollout_read(session, await rollouts.abort(session, rollout_id))
