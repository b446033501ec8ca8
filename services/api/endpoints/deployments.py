"""/v1/deployments/{id}."""

from __future__ import annotations

from fastapi import APIRouter

from services.api.deployments import deployment_read, get_deployment
from services.api.deps import PrincipalDep, SessionDep
from services.api.schemas import DeploymentRead

router = APIRouter(prefix="/v1/deployments", tags=["deployments"])


@router.get("/{deployment_id}")
async def get_one(
    deployment_id: str, principal: PrincipalDep, session: SessionDep
) -> DeploymentRead:
    return deployment_read(await get_deployment(session, principal, deployment_id))
