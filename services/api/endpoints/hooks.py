"""Deploy hooks: managed under /v1/sites/{id}/hooks, called at /hooks/{secret}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from services.api import hooks
from services.api.deps import PrincipalDep, SessionDep, StateDep
from services.api.schemas import (
    ErrorResponse,
    HookCreate,
    HookCreated,
    HookRead,
    HookTriggered,
    Page,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 422, 429)
}
router = APIRouter(tags=["deploy hooks"], responses=ERRORS)


def hook_read(hook: Any) -> HookRead:
    return HookRead(
        id=hook.id, name=hook.name, created_at=hook.created_at, last_used_at=hook.last_used_at
    )


@router.post("/v1/sites/{site_id}/hooks", status_code=status.HTTP_201_CREATED)
async def create_hook(
    site_id: str, body: HookCreate, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> HookCreated:
    hook, secret = await hooks.create_hook(
        session, principal, site_id, body.name, state.settings.hook_burst
    )
    return HookCreated(id=hook.id, name=hook.name, url=f"{state.settings.base_url}/hooks/{secret}")


@router.get("/v1/sites/{site_id}/hooks")
async def list_hooks(site_id: str, principal: PrincipalDep, session: SessionDep) -> Page[HookRead]:
    found = await hooks.list_hooks(session, principal, site_id)
    return Page(items=[hook_read(h) for h in found], next_cursor=None)


@router.get("/v1/sites/{site_id}/hooks/{hook_id}")
async def get_hook(
    site_id: str, hook_id: str, principal: PrincipalDep, session: SessionDep
) -> HookRead:
    return hook_read(await hooks.get_hook(session, principal, site_id, hook_id))


@router.delete("/v1/sites/{site_id}/hooks/{hook_id}", status_code=204)
async def delete_hook(
    site_id: str, hook_id: str, principal: PrincipalDep, session: SessionDep
) -> Response:
    await session.delete(await hooks.get_hook(session, principal, site_id, hook_id))
    return Response(status_code=204)


@router.post("/hooks/{secret}", status_code=status.HTTP_202_ACCEPTED)
async def call_hook(secret: str, session: SessionDep, state: StateDep) -> HookTriggered:
    """No Authorization header: the secret in the path is the credential."""
    deployment = await hooks.trigger(
        session, secret, burst=state.settings.hook_burst, per_minute=state.settings.hook_per_minute
    )
    return HookTriggered(deployment_id=deployment.id)
