"""The courier against real receivers: signed webhooks, Slack, email over a real SMTP
server; 500s, timeouts, redirects, 429s, SMTP down, the SSRF guard, unhealthy channels."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest
from sqlalchemy import select

from services.notifier.channels import ops_channels
from services.notifier.courier import Courier
from services.notifier.ratelimit import Buckets
from services.notifier.scheduler import outbox_row
from services.notifier.transports import SmtpServer
from shared.db import SessionMaker
from shared.ids import new_id
from shared.models import ChannelHealth, NotificationChannel, NotificationDelivery, Tenant
from tests.notifier.conftest import Clock, Mailbox, Receiver, Reply, free_port, start_smtp

DOC = {
    "kind": "firing",
    "status": "firing",
    "summary": "deployment.failed a.example: [health_check_failed] nginx answered 502",
    "count_since_last": 3,
    "count": 3,
    "first_seen": "2026-01-01T00:00:00+00:00",
    "last_seen": "2026-01-01T00:00:01+00:00",
    "site_id": "site_1",
}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=0.5) as client:
        yield client


def courier(
    db: SessionMaker,
    http: httpx.AsyncClient,
    clock: Clock,
    *,
    ops: list[str] = (),  # type: ignore[assignment]
    allow_private: bool = True,
    smtp_port: int = 1,
    rates: dict[str, float] | None = None,
    unhealthy_after: int = 3,
) -> Courier:
    return Courier(
        db,
        ops=ops_channels(ops, "ops-secret"),
        client=http,
        smtp=SmtpServer("127.0.0.1", smtp_port, "alerts@sitefleet.test", 2.0),
        buckets=Buckets(rates or {"webhook": 100, "slack": 1, "email": 100}, {"webhook": 100}),
        backoff=[5, 60],
        unhealthy_after=unhealthy_after,
        allow_private_targets=allow_private,
        clock=clock,
    )


async def add_channel(db: SessionMaker, kind: str, target: str, secret: str | None = None) -> str:
    channel_id = new_id("nch")
    async with db.begin() as session:
        if await session.get(Tenant, "ten_a") is None:
            session.add(Tenant(id="ten_a", name="a"))
            await session.flush()
        session.add(
            NotificationChannel(
                id=channel_id,
                tenant_id="ten_a",
                type=kind,
                target=target,
                events=["*"],
                secret=secret,
            )
        )
    return channel_id


async def enqueue(db: SessionMaker, channel_key: str, now: datetime) -> str:
    async with db.begin() as session:
        row = outbox_row(channel_key, None, "firing", DOC, now)
        session.add(row)
    return row.id


async def delivery(db: SessionMaker, delivery_id: str) -> NotificationDelivery:
    async with db() as session:
        row = await session.get(NotificationDelivery, delivery_id)
        assert row is not None
        return row


async def test_webhook_is_signed_and_carries_its_notification_id(
    db: SessionMaker, http: httpx.AsyncClient, clock: Clock, receiver: Receiver
) -> None:
    channel = await add_channel(db, "webhook", receiver.url, secret="s3cret")
    sent = await enqueue(db, channel, clock())
    assert await courier(db, http, clock).deliver_next()
    [request] = receiver.accepted
    assert receiver.verify(request)
    assert request["headers"]["X-Sitefleet-Notification-Id"] == sent
    assert request["body"]["notification_id"] == sent
    assert request["body"]["count_since_last"] == 3
    tampered = {**request, "raw": request["raw"].replace(b'"count":3', b'"count":4')}
    assert not receiver.verify(tampered)
    assert (await delivery(db, sent)).status == "sent"
    assert not await courier(db, http, clock).deliver_next()  # nothing more is due


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(status=500), "answered 500"),
        (Reply(delay=1.0), "unreachable"),  # the client gives up after 0.5 s
        (Reply(status=302, headers={"Location": "http://elsewhere.example/"}), "not followed"),
    ],
    ids=["500", "timeout", "redirect"],
)
async def test_a_failed_webhook_is_retried_with_backoff_until_it_succeeds(
    db: SessionMaker,
    http: httpx.AsyncClient,
    clock: Clock,
    receiver: Receiver,
    reply: Reply,
    error: str,
) -> None:
    channel = await add_channel(db, "webhook", receiver.url, secret="s3cret")
    sent = await enqueue(db, channel, clock())
    receiver.replies = [reply]
    c = courier(db, http, clock)
    assert await c.deliver_next()
    failed = await delivery(db, sent)
    assert failed.status == "pending"
    assert error in (failed.last_error or "")
    assert receiver.accepted == []
    assert not await c.deliver_next()  # not before its backoff
    clock.advance(5)
    assert await c.deliver_next()
    assert (await delivery(db, sent)).status == "sent"
    assert [r["headers"]["X-Sitefleet-Notification-Id"] for r in receiver.accepted] == [sent]


async def test_429_retry_after_is_honoured(
    db: SessionMaker, http: httpx.AsyncClient, clock: Clock, receiver: Receiver
) -> None:
    channel = await add_channel(db, "webhook", receiver.url)
    first = await enqueue(db, channel, clock())
    second = await enqueue(db, channel, clock())
    receiver.replies = [Reply(status=429, headers={"Retry-After": "20"})]
    c = courier(db, http, clock)
    assert await c.deliver_next()
    assert await c.deliver_next()  # the other one waits for the same channel
    clock.advance(19)
    assert not await c.deliver_next()
    clock.advance(1)
    while await c.deliver_next():
        pass
    assert {(await delivery(db, d)).status for d in (first, second)} == {"sent"}
    async with db() as session:  # a 429 is not the channel failing
        assert await session.get(ChannelHealth, channel) is None


async def test_slack_channels_are_rate_limited_to_their_bucket(
    db: SessionMaker, http: httpx.AsyncClient, clock: Clock, receiver: Receiver
) -> None:
    channel = await add_channel(db, "slack", receiver.url)
    for _ in range(3):
        await enqueue(db, channel, clock())
    c = courier(db, http, clock)
    while await c.deliver_next():
        pass
    assert len(receiver.accepted) == 1  # 1 message/s, burst 1
    assert receiver.accepted[0]["body"] == {"text": receiver.accepted[0]["body"]["text"]}
    assert "FIRING" in receiver.accepted[0]["body"]["text"]
    for _ in range(2):
        clock.advance(1)
        while await c.deliver_next():
            pass
    assert len(receiver.accepted) == 3


async def test_ssrf_guard_refuses_private_targets_of_tenant_channels(
    db: SessionMaker, http: httpx.AsyncClient, clock: Clock, receiver: Receiver
) -> None:
    channel = await add_channel(db, "webhook", receiver.url)
    link_local = await add_channel(db, "webhook", "http://169.254.169.254/latest/meta-data")
    refused = [await enqueue(db, key, clock()) for key in (channel, link_local)]
    guarded = courier(db, http, clock, allow_private=False)
    while await guarded.deliver_next():
        pass
    for delivery_id in refused:
        row = await delivery(db, delivery_id)
        assert row.status == "pending"  # kept and retried, never silently dropped
        assert "non-public address" in (row.last_error or "")
    assert receiver.attempts == 0
    # Ops channels come from the operator's settings: the guard does not apply to them.
    ops = courier(db, http, clock, ops=[receiver.url], allow_private=False)
    await enqueue(db, ops.ops and next(iter(ops.ops)), clock())
    assert await ops.deliver_next()
    assert len(receiver.accepted) == 1


async def test_a_channel_failing_repeatedly_is_reported_to_ops(
    db: SessionMaker, http: httpx.AsyncClient, clock: Clock, receiver: Receiver
) -> None:
    broken = Receiver()
    try:
        channel = await add_channel(db, "webhook", broken.url)
        broken.replies = [Reply(status=500)] * 10
        sent = await enqueue(db, channel, clock())
        c = courier(db, http, clock, ops=[receiver.url], unhealthy_after=3)
        for _ in range(3):
            assert await c.deliver_next()
            clock.advance(60)
        while await c.deliver_next():  # the ops report goes out
            pass
        reports = [b for b in receiver.bodies() if b["kind"] == "channel_unhealthy"]
        assert len(reports) == 1
        assert channel in reports[0]["summary"]
        async with db() as session:
            health = await session.get(ChannelHealth, channel)
            assert health is not None and health.unhealthy_since is not None
        broken.replies = []
        clock.advance(60)
        while await c.deliver_next():
            pass
        assert (await delivery(db, sent)).status == "sent"
        async with db() as session:
            health = await session.get(ChannelHealth, channel)
            assert health is not None and health.unhealthy_since is None
    finally:
        broken.close()


async def test_email_goes_through_smtp_and_is_retried_while_smtp_is_down(
    db: SessionMaker, http: httpx.AsyncClient, clock: Clock
) -> None:
    port = free_port()
    channel = await add_channel(db, "email", "owner@example.org")
    sent = await enqueue(db, channel, clock())
    c = courier(db, http, clock, smtp_port=port)
    assert await c.deliver_next()  # nothing listens on the port yet
    row = await delivery(db, sent)
    assert row.status == "pending"
    assert "smtp" in (row.last_error or "")
    mailbox = Mailbox()
    smtp = start_smtp(port, mailbox)
    try:
        clock.advance(5)
        assert await c.deliver_next()
    finally:
        smtp.stop()
    assert (await delivery(db, sent)).status == "sent"
    [mail] = mailbox.messages
    assert mail["to"] == ["owner@example.org"]
    assert "FIRING" in mail["data"]
    assert f"X-Sitefleet-Notification-Id: {sent}" in mail["data"]


async def test_deliveries_of_a_deleted_channel_are_cancelled(
    db: SessionMaker, http: httpx.AsyncClient, clock: Clock
) -> None:
    channel = await add_channel(db, "webhook", "https://hooks.example/x")
    sent = await enqueue(db, channel, clock())
    async with db.begin() as session:
        await session.delete(await session.get(NotificationChannel, channel))
    assert await courier(db, http, clock).deliver_next()
    assert (await delivery(db, sent)).status == "cancelled"
    async with db() as session:
        assert (await session.scalars(select(NotificationDelivery))).all()
