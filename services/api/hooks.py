"""Deploy hooks: a secret URL per hook that a customer's CI POSTs to for a new deployment.

The secret is the credential (no Authorization header), shown once and stored hashed. Each
hook has a token bucket kept on its row (``burst`` requests, refilled at ``per_minute``),
so a CI loop cannot flood the deployer; the bucket is updated under the row lock.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.identity import Principal, hash_token
from services.api.sites import get_site, request_deployment
from shared.errors import NotFound, RateLimited
from shared.ids import new_id
from shared.models import DeployHook, Deployment, Site
from shared.timeutil import utcnow

HOOK_PREFIX = "sfh_"


async def create_hook(
    session: AsyncSession, principal: Principal, site_id: str, name: str, burst: int
) -> tuple[DeployHook, str]:
    site = await get_site(session, principal, site_id)
    secret = HOOK_PREFIX + secrets.token_urlsafe(32)
    hook = DeployHook(
        id=new_id("hook"),
        site_id=site.id,
        tenant_id=site.tenant_id,
        name=name,
        secret_hash=hash_token(secret),
        tokens=float(burst),
        created_at=utcnow(),
        refilled_at=utcnow(),
    )
    session.add(hook)
    await session.flush()
    return hook, secret


async def list_hooks(session: AsyncSession, principal: Principal, site_id: str) -> list[DeployHook]:
    site = await get_site(session, principal, site_id)
    return list(
        await session.scalars(
            select(DeployHook).where(DeployHook.site_id == site.id).order_by(DeployHook.id)
        )
    )


async def get_hook(
    session: AsyncSession, principal: Principal, site_id: str, hook_id: str
) -> DeployHook:
    site = await get_site(session, principal, site_id)
    hook = await session.scalar(
        select(DeployHook).where(DeployHook.id == hook_id, DeployHook.site_id == site.id)
    )
    if hook is None:
        raise NotFound(f"hook {hook_id!r} not found", code="hook_not_found")
    return hook


def _take_token(hook: DeployHook, now: datetime, burst: int, per_minute: float) -> None:
    elapsed = max(0.0, (now - hook.refilled_at).total_seconds())
    tokens = min(float(burst), hook.tokens + elapsed * per_minute / 60)
    hook.refilled_at = now
    if tokens < 1:
        hook.tokens = tokens
        raise RateLimited(
            "this deploy hook is called too often; try again later",
            retry_after=(1 - tokens) * 60 / per_minute,
        )
    hook.tokens = tokens - 1


async def trigger(
    session: AsyncSession, secret: str, *, burst: int, per_minute: float
) -> Deployment:
    hook = await session.scalar(
        select(DeployHook).where(DeployHook.secret_hash == hash_token(secret)).with_for_update()
    )
    if hook is None:
        raise NotFound("no such deploy hook", code="hook_not_found")
    now = utcnow()
    _take_token(hook, now, burst, per_minute)
    hook.last_used_at = now
    site = await session.scalar(select(Site).where(Site.id == hook.site_id).with_for_update())
    assert site is not None  # the hook row is deleted with its site
    return await request_deployment(session, site, reason=f"deploy hook {hook.name!r}")
