"""/v1/notification-channels (a tenant's alert channels) and /v1/alerts (its alert groups,
written by the notifier)."""

from __future__ import annotations

import functools
import ipaddress
import re
import secrets
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Response, status
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import delete, select

from services.api.deps import (
    DEFAULT_PAGE,
    CursorDep,
    LimitDep,
    OnceDep,
    PrincipalDep,
    SessionDep,
)
from services.api.pagination import page_of, paginate
from services.api.schemas import ErrorResponse, Page, Strict
from shared.errors import Invalid, NotFound
from shared.ids import new_id
from shared.models import AlertGroup, NotificationChannel

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 503)
}
router = APIRouter(prefix="/v1", tags=["notifications"], responses=ERRORS)

# Event types a channel may subscribe to ("*": all of them).
CHANNEL_EVENTS = (
    "*",
    "deployment.failed",
    "deployment.parked",
    "dns.failed",
    "dns.parked",
    "site.parked",
    "domain.failed",  # a purchase or renewal failed; a domain expiring or expired
    "domain.parked",
    "cert.failed",  # a certificate order failed (retried or not)
    "cert.expiring",  # the certificate in use runs out soon and renewal has not succeeded
    "cert.parked",
)
_EMAIL = re.compile(r"^[^@\s<>\"',;]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.[A-Za-z]{2,}$")


class ChannelPolicy(BaseSettings):
    """The API's view of the notifier's SSRF guard (same env variable)."""

    model_config = SettingsConfigDict(env_prefix="SITEFLEET_", extra="ignore")
    allow_private_targets: bool = False


@functools.cache
def _channel_policy() -> ChannelPolicy:
    return ChannelPolicy()


async def channel_policy() -> ChannelPolicy:  # async: no thread pool hop (deps.py)
    return _channel_policy()


PolicyDep = Annotated[ChannelPolicy, Depends(channel_policy)]


class NotificationChannelCreate(Strict):
    type: Literal["webhook", "slack", "email"]
    target: str = Field(min_length=1, max_length=2048)
    events: list[str] = Field(min_length=1, max_length=20)


class NotificationChannelRead(BaseModel):
    id: str
    type: str
    target: str
    events: list[str]
    created_at: datetime


class NotificationChannelCreated(NotificationChannelRead):
    # The webhook signing secret, shown once (null for slack and email).
    secret: str | None


class AlertRead(BaseModel):
    id: str
    fingerprint: str
    status: Literal["firing", "resolved"]
    count: int
    first_seen: datetime
    last_seen: datetime
    last_notified_at: datetime | None
    summary: str
    type: str
    site_id: str | None
    error_code: str
    resolved_at: datetime | None


def _bad(field: str, message: str, code: str = "validation_failed") -> Invalid:
    return Invalid(
        f"{field}: {message}", code=code, details={"fields": [{"field": field, "message": message}]}
    )


def _private_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: the notifier checks what it resolves to at each send
    return not ip.is_global


def validate_channel(body: NotificationChannelCreate, policy: ChannelPolicy) -> None:
    unknown = [e for e in body.events if e not in CHANNEL_EVENTS]
    if unknown:
        raise _bad("events", f"unknown event type(s) {unknown}; known: {list(CHANNEL_EVENTS)}")
    if body.type == "email":
        if len(body.target) > 254 or not _EMAIL.match(body.target):
            raise _bad("target", "not an email address")
        return
    parts = urlsplit(body.target)
    allowed = ("https",) if body.type == "slack" else ("http", "https")
    if parts.scheme not in allowed or not parts.hostname:
        raise _bad("target", f"must be an absolute {' or '.join(allowed)} URL")
    if not policy.allow_private_targets and _private_host(parts.hostname):
        raise _bad("target", "must not point at a loopback or private address", "target_forbidden")


def channel_read(row: NotificationChannel) -> NotificationChannelRead:
    return NotificationChannelRead(
        id=row.id, type=row.type, target=row.target, events=row.events, created_at=row.created_at
    )


@router.post("/notification-channels", status_code=status.HTTP_201_CREATED)
async def create_channel(
    body: NotificationChannelCreate,
    principal: PrincipalDep,
    session: SessionDep,
    policy: PolicyDep,
    once: OnceDep,
) -> NotificationChannelCreated:
    async def work() -> BaseModel:
        validate_channel(body, policy)
        row = NotificationChannel(
            id=new_id("nch"),
            tenant_id=principal.tenant_id,
            type=body.type,
            target=body.target,
            events=sorted(set(body.events)),
            secret=secrets.token_urlsafe(32) if body.type == "webhook" else None,
        )
        session.add(row)
        await session.flush()
        await session.refresh(row)
        return NotificationChannelCreated(**channel_read(row).model_dump(), secret=row.secret)

    return await once.run(body, 201, work)  # type: ignore[return-value]


@router.get("/notification-channels")
async def list_channels(
    principal: PrincipalDep,
    session: SessionDep,
    limit: LimitDep = DEFAULT_PAGE,
    cursor: CursorDep = None,
) -> Page[NotificationChannelRead]:
    query = select(NotificationChannel).where(NotificationChannel.tenant_id == principal.tenant_id)
    rows = list(await session.scalars(paginate(query, NotificationChannel.id, limit, cursor)))
    items, next_cursor = page_of(rows, limit, lambda c: c.id)
    return Page(items=[channel_read(c) for c in items], next_cursor=next_cursor)


@router.delete("/notification-channels/{channel_id}", status_code=204)
async def delete_channel(channel_id: str, principal: PrincipalDep, session: SessionDep) -> Response:
    result = await session.execute(
        delete(NotificationChannel).where(
            NotificationChannel.id == channel_id,
            NotificationChannel.tenant_id == principal.tenant_id,
        )
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"notification channel {channel_id!r} not found")
    return Response(status_code=204)


@router.get("/alerts")
async def list_alerts(
    principal: PrincipalDep,
    session: SessionDep,
    limit: LimitDep = DEFAULT_PAGE,
    cursor: CursorDep = None,
) -> Page[AlertRead]:
    """The tenant's alert groups, newest first (ops tokens see every tenant's)."""
    query = select(AlertGroup)
    if not principal.is_ops:
        query = query.where(AlertGroup.tenant_id == principal.tenant_id)
    rows = list(await session.scalars(paginate(query, AlertGroup.id, limit, cursor)))
    items, next_cursor = page_of(rows, limit, lambda g: g.id)
    return Page(
        items=[
            AlertRead(
                id=g.id,
                fingerprint=g.fingerprint,
                status="resolved" if g.status == "resolved" else "firing",
                count=g.count,
                first_seen=g.first_seen,
                last_seen=g.last_seen,
                last_notified_at=g.last_notified_at,
                summary=g.summary,
                type=g.event_type,
                site_id=g.site_id,
                error_code=g.error_code,
                resolved_at=g.resolved_at,
            )
            for g in items
        ],
        next_cursor=next_cursor,
    )
