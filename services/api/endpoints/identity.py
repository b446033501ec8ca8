"""/v1/me and /v1/tokens."""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.api import identity
from services.api.deps import PrincipalDep, SessionDep
from services.api.schemas import MeRead, Page, TenantRead, TokenCreate, TokenCreated, TokenRead

router = APIRouter(prefix="/v1", tags=["identity"])


@router.get("/me")
async def me(principal: PrincipalDep) -> MeRead:
    return MeRead(
        tenant=TenantRead(id=principal.tenant.id, name=principal.tenant.name),
        token=TokenRead(
            id=principal.token.id, name=principal.token.name, created_at=principal.token.created_at
        ),
    )


@router.post("/tokens", status_code=201)
async def create_token(
    body: TokenCreate, principal: PrincipalDep, session: SessionDep
) -> TokenCreated:
    token, secret = await identity.create_token(session, principal.tenant_id, body.name)
    return TokenCreated(id=token.id, name=token.name, token=secret)


@router.get("/tokens")
async def list_tokens(principal: PrincipalDep, session: SessionDep) -> Page[TokenRead]:
    tokens = await identity.list_tokens(session, principal.tenant_id)
    return Page(
        items=[TokenRead(id=t.id, name=t.name, created_at=t.created_at) for t in tokens],
        next_cursor=None,
    )


@router.delete("/tokens/{token_id}", status_code=204)
async def delete_token(token_id: str, principal: PrincipalDep, session: SessionDep) -> Response:
    await identity.revoke_token(session, principal.tenant_id, token_id)
    return Response(status_code=204)
