"""Tenants and API tokens. A token is 32 random bytes shown once; we keep its SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.errors import Conflict, NotFound, Unauthorized
from shared.ids import new_id
from shared.models import ApiToken, Tenant
from shared.timeutil import utcnow

TOKEN_PREFIX = "sft_"  # noqa: S105 - a prefix, not a secret
OPS_TENANT = "ops"


def hash_token(secret: str) -> str:
    # Tokens carry 256 bits of entropy, so a fast hash is enough (no stretching needed).
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant's token, or an ops token (reads every tenant)."""

    tenant: Tenant
    token: ApiToken

    @property
    def tenant_id(self) -> str:
        return self.tenant.id

    @property
    def is_ops(self) -> bool:
        return self.token.scope == "ops"


async def create_tenant(session: AsyncSession, name: str) -> Tenant:
    if await session.scalar(select(Tenant).where(Tenant.name == name)):
        raise Conflict(f"tenant {name!r} already exists", code="tenant_exists")
    tenant = Tenant(id=new_id("ten"), name=name)
    session.add(tenant)
    await session.flush()
    return tenant


async def get_tenant_by_name(session: AsyncSession, name: str) -> Tenant | None:
    return await session.scalar(select(Tenant).where(Tenant.name == name))


async def create_token(
    session: AsyncSession, tenant_id: str, name: str, *, scope: str = "tenant"
) -> tuple[ApiToken, str]:
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        id=new_id("tok"),
        tenant_id=tenant_id,
        name=name,
        token_hash=hash_token(secret),
        scope=scope,
        created_at=utcnow(),
    )
    session.add(token)
    await session.flush()
    return token, secret


async def create_ops_token(session: AsyncSession, name: str) -> tuple[ApiToken, str]:
    tenant = await get_tenant_by_name(session, OPS_TENANT) or await create_tenant(
        session, OPS_TENANT
    )
    return await create_token(session, tenant.id, name, scope="ops")


async def authenticate(session: AsyncSession, secret: str | None) -> Principal:
    if not secret:
        raise Unauthorized("missing bearer token", code="missing_token")
    row = (
        await session.execute(
            select(ApiToken, Tenant)
            .join(Tenant, Tenant.id == ApiToken.tenant_id)
            .where(ApiToken.token_hash == hash_token(secret), ApiToken.revoked_at.is_(None))
        )
    ).first()
    if row is None:
        raise Unauthorized("invalid or revoked token", code="invalid_token")
    return Principal(tenant=row[1], token=row[0])


async def list_tokens(session: AsyncSession, tenant_id: str) -> list[ApiToken]:
    rows = await session.scalars(
        select(ApiToken)
        .where(ApiToken.tenant_id == tenant_id, ApiToken.revoked_at.is_(None))
        .order_by(ApiToken.id)
    )
    return list(rows)


async def revoke_token(session: AsyncSession, tenant_id: str, token_id: str) -> None:
    result = await session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id, ApiToken.tenant_id == tenant_id, ApiToken.revoked_at.is_(None)
        )
        .values(revoked_at=utcnow())
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"token {token_id!r} not found")
