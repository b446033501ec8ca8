"""The scheduler: turns due alert groups into delivery rows (the outbox), advancing each
group's timers in the same transaction. Several notifier processes may run it at once:
``FOR UPDATE SKIP LOCKED`` hands each due group to exactly one of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import render
from services.notifier.channels import Channel, tenant_channels
from services.notifier.grouping import Timers
from shared.ids import new_id
from shared.models import AlertGroup, NotificationDelivery


@dataclass
class Scheduled:
    notifications: int = 0  # group notifications (one per group per tick at most)
    deliveries: int = 0  # delivery rows (one per channel)
    unrouted: int = 0  # notifications with no channel at all (logged by the caller)
    by_kind: dict[str, int] = field(default_factory=dict)


def _kind(group: AlertGroup) -> str:
    if group.status == "resolved":
        return "resolved"
    if group.notifications == 0:
        return "firing"
    return "digest" if group.pending_count > 0 else "repeat"


def outbox_row(
    channel_key: str, group_id: str | None, kind: str, doc: dict[str, Any], now: datetime
) -> NotificationDelivery:
    return NotificationDelivery(
        id=new_id("ntf"),
        group_id=group_id,
        channel_key=channel_key,
        kind=kind,
        payload=doc,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )


async def schedule_due(
    session: AsyncSession, timers: Timers, ops: list[Channel], now: datetime, *, batch: int = 200
) -> Scheduled:
    groups = list(
        await session.scalars(
            select(AlertGroup)
            .where(AlertGroup.next_notify_at <= now)
            .order_by(AlertGroup.next_notify_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    )
    done = Scheduled()
    routes = await tenant_channels(session, (g.tenant_id for g in groups))
    for group in groups:
        kind = _kind(group)
        doc = render.group_notification(group, kind, group.pending_count, now)
        channels = list(ops) + [
            c for c in routes.get(group.tenant_id or "", []) if c.wants(group.event_type)
        ]
        for channel in channels:
            session.add(outbox_row(channel.key, group.id, kind, doc, now))
        done.notifications += 1
        done.by_kind[kind] = done.by_kind.get(kind, 0) + 1
        done.deliveries += len(channels)
        done.unrouted += not channels
        group.notified_count += group.pending_count
        group.pending_count = 0
        group.notifications += 1
        group.last_notified_at = now
        group.next_notify_at = None if kind == "resolved" else now + timers.repeat_interval
    await session.flush()
    return done
