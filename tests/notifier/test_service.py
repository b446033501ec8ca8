"""The notifier as it runs (``python -m services.notifier``) on real RabbitMQ and
PostgreSQL: bad events are parked with a reason; an event storm with a SIGKILL in the
middle still ends in digests that count every event exactly once, with no notification
delivered twice and at most one per group per group_interval."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import httpx
import pytest
from sqlalchemy import func, select

from shared import broker
from shared.db import create_engine, create_sessionmaker
from shared.messages import Envelope
from shared.models import AlertGroup, NotificationDelivery
from tests.fixtures.platform import wait_until
from tests.notifier.conftest import failed
from tests.notifier.process import Service, running_notifier

GROUP_INTERVAL = 1.0


@pytest.fixture(scope="module")
async def service() -> AsyncIterator[Service]:
    async with running_notifier(
        SITEFLEET_GROUP_WAIT="0.3", SITEFLEET_GROUP_INTERVAL=str(GROUP_INTERVAL)
    ) as svc:
        yield svc


async def test_unknown_or_incomplete_events_are_parked_with_a_reason(service: Service) -> None:
    incomplete = failed("site_x")
    incomplete = incomplete.model_copy(
        update={"payload": {k: v for k, v in incomplete.payload.items() if k != "site_id"}}
    )
    unknown = failed("site_x").model_copy(update={"type": "bogus.failed"})
    for envelope in (incomplete, unknown):
        await service.publish(envelope)
    assert service.connection is not None
    channel = await service.connection.channel()
    parked: dict[str, str] = {}

    async def both_parked() -> bool:
        queue = await channel.get_queue("notifier.events.parked")
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            parked[json.loads(message.body)["message_id"]] = str(
                (message.headers or {}).get(broker.H_ERROR_MESSAGE)
            )
        return len(parked) == 2

    await wait_until(both_parked, timeout=20, what="both events to be parked")
    await channel.close()
    assert "site_id" in parked[incomplete.message_id]
    assert "bogus.failed" in parked[unknown.message_id]
    assert service.proc is not None and service.proc.poll() is None  # still running


def storm() -> Iterator[list[Envelope]]:
    """2,000 failures over 50 sites, in 20 batches; messages differ only in numbers."""
    for batch in range(20):
        yield [
            failed(
                f"site_{i % 50:02d}",
                tenant_id="ten_storm",
                message=f"upload to web-{i % 7} failed after {batch * 100 + i} ms",
            )
            for i in range(100)
        ]


async def test_a_storm_with_a_sigkill_counts_every_event_once(service: Service) -> None:
    receiver = service.receiver
    engine = create_engine(service.database_url, application_name="tests", pool_size=2)
    sessionmaker = create_sessionmaker(engine)

    async def accepted_recorded_as_sent() -> bool:
        ids = [r["headers"]["X-Sitefleet-Notification-Id"] for r in receiver.accepted]
        async with sessionmaker() as session:
            unrecorded = await session.scalar(
                select(func.count())
                .select_from(NotificationDelivery)
                .where(NotificationDelivery.id.in_(ids), NotificationDelivery.status != "sent")
            )
        return unrecorded == 0

    for number, batch in enumerate(storm()):
        await asyncio.gather(*(service.publish(e) for e in batch))
        await asyncio.sleep(0.15)
        if number == 9:
            # Kill it with deliveries in flight: the receiver holds the requests that
            # arrive from now on; what it already answered is on record as sent.
            receiver.hold()
            await wait_until(lambda: _true(receiver.held > 0), timeout=20, what="a held request")
            await wait_until(accepted_recorded_as_sent, timeout=20, what="sends on record")
            service.kill()
            receiver.release()
            service.start()

    def counted() -> int:
        return sum(b["count_since_last"] for b in _unique(receiver.accepted).values())

    await wait_until(lambda: _true(counted() >= 2000), timeout=60, what="every event counted")
    await asyncio.sleep(GROUP_INTERVAL * 2)  # late duplicates would show up by now
    async with sessionmaker() as session:
        total = await session.scalar(select(func.sum(AlertGroup.count)))
    await engine.dispose()

    ids = [r["headers"]["X-Sitefleet-Notification-Id"] for r in receiver.accepted]
    assert len(ids) == len(set(ids)), "a notification was delivered twice"
    assert counted() == total == 2000
    assert receiver.aborted > 0  # the kill did catch deliveries in flight
    assert all(receiver.verify(r) for r in receiver.accepted)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for body in receiver.bodies():
        by_group[body["group_id"]].append(body)
    assert len(by_group) == 50
    for notes in by_group.values():
        notes.sort(key=lambda b: b["sequence"])
        assert [b["sequence"] for b in notes] == list(range(1, len(notes) + 1))  # none lost
        assert notes[0]["kind"] == "firing"
        times = [datetime.fromisoformat(b["created_at"]) for b in notes]
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
        assert all(gap >= GROUP_INTERVAL for gap in gaps), gaps

    # The restarted process counts what it did since its start.
    async with httpx.AsyncClient() as client:
        metrics = (
            await client.get(f"http://127.0.0.1:{service.env['SITEFLEET_METRICS_PORT']}/metrics")
        ).text
    assert _metric(metrics, 'sitefleet_notifier_deliveries_sent_total{channel_type="webhook"}') > 0
    assert _metric(metrics, 'sitefleet_notifier_events_total{outcome="folded"}') > 0
    assert _metric(metrics, "sitefleet_notifier_suppressed_total") > 0


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


async def _true(value: bool) -> bool:
    return value


def _unique(requests: list[dict]) -> dict[str, dict]:
    return {r["headers"]["X-Sitefleet-Notification-Id"]: r["body"] for r in requests}
