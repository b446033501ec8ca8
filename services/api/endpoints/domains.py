"""/v1/domains: check, buy or bring a domain, and verify a brought one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.api import domains
from services.api.deps import (
    DEFAULT_PAGE,
    CursorDep,
    LimitDep,
    OnceDep,
    PrincipalDep,
    SessionDep,
    StateDep,
)
from services.api.pagination import page_of, paginate
from services.api.schemas import (
    DomainCheckRead,
    DomainCreate,
    DomainRead,
    DomainUpdate,
    ErrorResponse,
    Page,
)
from shared.models import Domain

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 503)
}
router = APIRouter(prefix="/v1/domains", tags=["domains"], responses=ERRORS)


@router.get("/check")
async def check_domain(
    name: Annotated[str, Query(min_length=1, max_length=253)],
    principal: PrincipalDep,
    state: StateDep,
) -> DomainCheckRead:
    return await domains.check_domain(state.registrar, name)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DomainRead,
    responses={201: {"model": DomainRead, "description": "brought (bring_your_own)"}},
)
async def add_domain(
    body: DomainCreate,
    principal: PrincipalDep,
    session: SessionDep,
    state: StateDep,
    once: OnceDep,
) -> Any:
    """202 for a purchase (registration runs in the background), 201 for a brought domain."""
    code = 201 if body.bring_your_own else 202

    async def work() -> BaseModel:
        domain = await domains.add_domain(session, principal, state.registrar, body)
        return domains.domain_read(domain, state.settings)

    result = await once.run(body, code, work)
    if isinstance(result, JSONResponse):
        return result
    return JSONResponse(result.model_dump(mode="json"), status_code=code)


@router.get("")
async def list_domains(
    principal: PrincipalDep,
    session: SessionDep,
    state: StateDep,
    limit: LimitDep = DEFAULT_PAGE,
    cursor: CursorDep = None,
) -> Page[DomainRead]:
    query = paginate(domains.visible_domains(principal), Domain.id, limit, cursor)
    items, next_cursor = page_of(list(await session.scalars(query)), limit, lambda d: d.id)
    return Page(
        items=[domains.domain_read(d, state.settings) for d in items], next_cursor=next_cursor
    )


@router.get("/{name}")
async def get_domain(
    name: str, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> DomainRead:
    return domains.domain_read(await domains.get_domain(session, principal, name), state.settings)


@router.patch("/{name}")
async def update_domain(
    name: str, body: DomainUpdate, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> DomainRead:
    """Turn auto-renewal of a bought domain on or off (an addition to API.md)."""
    domain = await domains.update_domain(session, principal, name, body)
    return domains.domain_read(domain, state.settings)


@router.post("/{name}/verify")
async def verify_domain(
    name: str, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> DomainRead:
    domain = await domains.verify_domain(session, principal, name, state.settings)
    return domains.domain_read(domain, state.settings)
