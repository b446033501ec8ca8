"""Where notifications go: ops channels from settings (everything) and the tenants'
channels (the event types they chose). A channel is addressed by a stable key."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import NotificationChannel


@dataclass(frozen=True)
class Channel:
    key: str
    type: str  # webhook | slack | email
    target: str
    secret: str | None
    # None: every event type (ops channels).
    events: frozenset[str] | None
    is_ops: bool

    def wants(self, event_type: str) -> bool:
        return self.events is None or "*" in self.events or event_type in self.events


def ops_key(url: str) -> str:
    return "ops:" + hashlib.sha256(url.encode()).hexdigest()[:32]


def ops_channels(urls: Iterable[str], secret: str) -> list[Channel]:
    return [
        Channel(ops_key(url), "webhook", url, secret or None, None, is_ops=True) for url in urls
    ]


def tenant_channel(row: NotificationChannel) -> Channel:
    return Channel(row.id, row.type, row.target, row.secret, frozenset(row.events), is_ops=False)


async def tenant_channels(
    session: AsyncSession, tenant_ids: Iterable[str | None]
) -> dict[str, list[Channel]]:
    wanted = {t for t in tenant_ids if t}
    if not wanted:
        return {}
    rows = await session.scalars(
        select(NotificationChannel).where(NotificationChannel.tenant_id.in_(wanted))
    )
    found: dict[str, list[Channel]] = {}
    for row in rows:
        found.setdefault(row.tenant_id, []).append(tenant_channel(row))
    return found


async def channel_by_key(
    session: AsyncSession, key: str, ops: dict[str, Channel]
) -> Channel | None:
    """None when the channel is gone (deleted by its tenant, or removed from settings)."""
    if key.startswith("ops:"):
        return ops.get(key)
    row = await session.get(NotificationChannel, key)
    return tenant_channel(row) if row is not None else None
