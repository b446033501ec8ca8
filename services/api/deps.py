"""Request-scoped dependencies, as ``Annotated`` aliases so routes read like prose."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.broker_link import BrokerLink
from services.api.idempotency import request_hash, run_once
from services.api.identity import Principal, authenticate
from services.api.outbox import Relay
from services.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from services.api.settings import ApiSettings
from shared.db import SessionMaker
from shared.registrar import Registrar
from shared.template_packs import TemplateCatalog


@dataclass
class AppState:
    settings: ApiSettings
    sessionmaker: SessionMaker
    catalog: TemplateCatalog
    relay: Relay
    link: BrokerLink
    # Read-only use here (availability and price); purchases run in the DNS service.
    registrar: Registrar


# Dependencies are ``async def`` even when they never await: FastAPI runs a plain ``def``
# dependency in its thread pool, a thread hop per request for nothing.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.sitefleet
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed before the response is sent
    (``scope="function"``), then the outbox relay is nudged."""
    async with state.sessionmaker.begin() as session:
        yield session
    state.relay.wake()


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_principal(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    secret = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            secret = value.strip()
    return await authenticate(session, secret)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
IdempotencyKeyDep = Annotated[str | None, Header(alias="Idempotency-Key")]


@dataclass
class Once:
    """A POST's ``Idempotency-Key`` handling, bound to its request, tenant and transaction."""

    session: AsyncSession
    tenant_id: str
    key: str | None
    path: str

    async def run(
        self, body: BaseModel, status_code: int, work: Callable[[], Awaitable[BaseModel]]
    ) -> BaseModel | JSONResponse:
        return await run_once(
            self.session,
            tenant_id=self.tenant_id,
            key=self.key,
            fingerprint=request_hash("POST", self.path, body),
            status_code=status_code,
            work=work,
        )


async def get_once(
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> Once:
    return Once(session, principal.tenant_id, idempotency_key, request.url.path)


OnceDep = Annotated[Once, Depends(get_once)]
LimitDep = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
CursorDep = Annotated[str | None, Query(max_length=200)]
DEFAULT_PAGE = DEFAULT_LIMIT
