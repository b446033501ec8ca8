"""Request-scoped dependencies, as ``Annotated`` aliases so routes read like prose."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.broker_link import BrokerLink
from services.api.identity import Principal, authenticate
from services.api.outbox import Relay
from services.api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from services.api.settings import ApiSettings
from shared.db import SessionMaker
from shared.template_packs import TemplateCatalog


@dataclass
class AppState:
    settings: ApiSettings
    sessionmaker: SessionMaker
    catalog: TemplateCatalog
    relay: Relay
    link: BrokerLink


def get_state(request: Request) -> AppState:
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
LimitDep = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
CursorDep = Annotated[str | None, Query(max_length=200)]
DEFAULT_PAGE = DEFAULT_LIMIT
