"""The courier: sends pending deliveries, one row per transaction, and records the result.

Each delivery row is locked (``FOR UPDATE SKIP LOCKED``) while it is sent and marked
``sent`` in the same transaction right after the receiver's 2xx, so two couriers never send
the same row and a crash before the commit only ever leads to a resend with the same
``X-Sitefleet-Notification-Id`` (at-least-once; receivers dedupe on that id).
Failures are retried on the stored ``next_attempt_at`` ladder, never dropped; a channel
that fails ``unhealthy_after`` times in a row is reported to the (other) ops channels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import metrics, render
from services.notifier.channels import Channel, channel_by_key
from services.notifier.ratelimit import Buckets
from services.notifier.scheduler import outbox_row
from services.notifier.transports import DeliveryFailed, SmtpServer, send
from shared.db import SessionMaker
from shared.models import ChannelHealth, NotificationDelivery
from shared.timeutil import utcnow

log = logging.getLogger(__name__)


class Courier:
    def __init__(
        self,
        sessionmaker: SessionMaker,
        *,
        ops: list[Channel],
        client: httpx.AsyncClient,
        smtp: SmtpServer,
        buckets: Buckets,
        backoff: list[float],
        unhealthy_after: int,
        allow_private_targets: bool,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.ops = {c.key: c for c in ops}
        self.client = client
        self.smtp = smtp
        self.buckets = buckets
        self.backoff = backoff or [1.0]
        self.unhealthy_after = unhealthy_after
        self.allow_private_targets = allow_private_targets
        self.clock = clock

    async def deliver_next(self) -> bool:
        """Handle the most overdue pending delivery; False when none is due."""
        now = self.clock()
        async with self.sessionmaker.begin() as session:
            row = await session.scalar(
                select(NotificationDelivery)
                .where(
                    NotificationDelivery.status == "pending",
                    NotificationDelivery.next_attempt_at <= now,
                )
                .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if row is None:
                return False
            channel = await channel_by_key(session, row.channel_key, self.ops)
            if channel is None:
                row.status = "cancelled"
                row.last_error = "the channel no longer exists"
                return True
            bucket = self.buckets.of(channel.key, channel.type)
            wait = bucket.take(now.timestamp())
            if wait > 0:
                metrics.THROTTLED.labels(channel.type).inc()
                row.next_attempt_at = now + timedelta(seconds=wait)
                return True
            row.attempts += 1
            try:
                await send(
                    channel,
                    row.id,
                    row.payload,
                    now,
                    client=self.client,
                    smtp=self.smtp,
                    allow_private=self.allow_private_targets,
                )
            except DeliveryFailed as exc:
                await self._failed(session, row, channel, exc, now)
                return True
            row.status = "sent"
            row.sent_at = self.clock()
            row.last_error = None
            metrics.SENT.labels(channel.type).inc()
            await session.execute(
                update(ChannelHealth)
                .where(ChannelHealth.channel_key == channel.key)
                .where(ChannelHealth.consecutive_failures > 0)
                .values(consecutive_failures=0, unhealthy_since=None, updated_at=now)
            )
        return True

    async def _failed(
        self,
        session: AsyncSession,
        row: NotificationDelivery,
        channel: Channel,
        exc: DeliveryFailed,
        now: datetime,
    ) -> None:
        row.last_error = exc.message[:2000]
        if exc.throttled:
            seconds = exc.retry_after if exc.retry_after is not None else 1.0
            self.buckets.of(channel.key, channel.type).pause(now.timestamp(), seconds)
            row.next_attempt_at = now + timedelta(seconds=seconds)
            metrics.THROTTLED.labels(channel.type).inc()
            return
        metrics.FAILURES.labels(channel.type).inc()
        step = self.backoff[min(row.attempts - 1, len(self.backoff) - 1)]
        row.next_attempt_at = now + timedelta(seconds=step)
        log.warning(
            "delivery failed, will retry",
            extra={
                "delivery": row.id,
                "channel": channel.key,
                "attempt": row.attempts,
                "retry_in_s": step,
                "error": exc.message,
            },
        )
        failures, since = (
            await session.execute(
                insert(ChannelHealth)
                .values(
                    channel_key=channel.key,
                    consecutive_failures=1,
                    last_error=row.last_error,
                    updated_at=now,
                )
                .on_conflict_do_update(
                    index_elements=[ChannelHealth.channel_key],
                    set_={
                        "consecutive_failures": ChannelHealth.consecutive_failures + 1,
                        "last_error": row.last_error,
                        "updated_at": now,
                    },
                )
                .returning(ChannelHealth.consecutive_failures, ChannelHealth.unhealthy_since)
            )
        ).one()
        if failures < self.unhealthy_after or since is not None:
            return
        await session.execute(
            update(ChannelHealth)
            .where(ChannelHealth.channel_key == channel.key)
            .values(unhealthy_since=now)
        )
        metrics.UNHEALTHY.inc()
        doc = render.unhealthy_notification(channel.key, failures, exc.message, now)
        others = [c for c in self.ops.values() if c.key != channel.key]
        for ops in others:
            session.add(outbox_row(ops.key, None, "channel_unhealthy", doc, now))
        log.error(
            "notification channel unhealthy",
            extra={"channel": channel.key, "failures": failures, "reported_to": len(others)},
        )
