"""/v1/deployments/{id}: read, cancel, and the live log (JSON or Server-Sent Events)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, status
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from services.api import deployments
from services.api.deps import PrincipalDep, SessionDep, StateDep
from services.api.schemas import DeploymentLogs, DeploymentRead, ErrorResponse, LogLineRead
from shared.db import SessionMaker
from shared.models import Deployment, DeploymentLogLine

router = APIRouter(
    prefix="/v1/deployments",
    tags=["deployments"],
    responses={code: {"model": ErrorResponse} for code in (401, 404, 409)},
)

SSE_POLL_SECONDS = 0.25
SSE_KEEPALIVE_SECONDS = 15.0


@router.get("/{deployment_id}")
async def get_one(
    deployment_id: str, principal: PrincipalDep, session: SessionDep
) -> DeploymentRead:
    return deployments.deployment_read(
        await deployments.get_deployment(session, principal, deployment_id)
    )


@router.post("/{deployment_id}/cancel", status_code=status.HTTP_202_ACCEPTED)
async def cancel(
    deployment_id: str, principal: PrincipalDep, session: SessionDep
) -> DeploymentRead:
    dep = await deployments.cancel_deployment(session, principal, deployment_id)
    return deployments.deployment_read(dep)


@router.get(
    "/{deployment_id}/logs",
    response_model=DeploymentLogs,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def logs(
    deployment_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    state: StateDep,
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    dep = await deployments.get_deployment(session, principal, deployment_id)
    if accept and "text/event-stream" in accept:
        return StreamingResponse(
            _stream(state.sessionmaker, dep.id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    rows = await session.scalars(
        select(DeploymentLogLine)
        .where(DeploymentLogLine.deployment_id == dep.id)
        .order_by(DeploymentLogLine.id)
    )
    return DeploymentLogs(lines=[LogLineRead.model_validate(r, from_attributes=True) for r in rows])


async def _stream(sessionmaker: SessionMaker, deployment_id: str) -> AsyncIterator[str]:
    """Every log line as an SSE ``log`` event, then one ``end`` event once the deployment
    has finished and its last lines were sent. Each poll is its own short transaction."""
    last_id = 0
    idle = 0.0
    while True:
        async with sessionmaker() as session:
            rows = list(
                await session.scalars(
                    select(DeploymentLogLine)
                    .where(
                        DeploymentLogLine.deployment_id == deployment_id,
                        DeploymentLogLine.id > last_id,
                    )
                    .order_by(DeploymentLogLine.id)
                )
            )
            dep_status = await session.scalar(
                select(Deployment.status).where(Deployment.id == deployment_id)
            )
        for row in rows:
            last_id = row.id
            line = LogLineRead.model_validate(row, from_attributes=True)
            yield f"id: {row.id}\nevent: log\ndata: {line.model_dump_json()}\n\n"
        if dep_status is None or (not rows and dep_status in deployments.TERMINAL):
            yield f"event: end\ndata: {json.dumps({'status': dep_status})}\n\n"
            return
        idle = 0.0 if rows else idle + SSE_POLL_SECONDS
        if idle >= SSE_KEEPALIVE_SECONDS:
            idle = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(SSE_POLL_SECONDS)
