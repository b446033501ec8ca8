"""``python -m services.notifier`` stopped with SIGTERM in the middle of an event stream, with
events in hand and a delivery in flight: it records the events it took, finishes the
delivery (the ops webhook gets its answer read, none is cut off), exits 0, and after a
restart every event is counted in exactly one delivered notification; nothing is parked,
nothing delivered twice."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from shared.db import create_engine, create_sessionmaker
from shared.messages import Envelope
from shared.models import AlertGroup, NotificationDelivery
from tests.fixtures.platform import wait_until
from tests.notifier.conftest import failed
from tests.notifier.process import running_notifier

pytestmark = pytest.mark.slow

GROUP_INTERVAL = 1.0
BATCHES = 10
PER_BATCH = 100
SITES = 20
SIGTERM_AFTER = 4  # batches published before the SIGTERM


def stream() -> Iterator[list[Envelope]]:
    for batch in range(BATCHES):
        yield [
            failed(
                f"site_{i % SITES:02d}",
                tenant_id="ten_sigterm",
                message=f"upload to web-{i % 3} failed after {batch * 1000 + i} ms",
            )
            for i in range(PER_BATCH)
        ]


async def test_sigterm_mid_stream_loses_no_event_and_cuts_no_delivery() -> None:
    async with running_notifier(
        SITEFLEET_GROUP_WAIT="0.3", SITEFLEET_GROUP_INTERVAL=str(GROUP_INTERVAL)
    ) as service:
        receiver = service.receiver
        assert service.connection is not None and service.proc is not None
        engine = create_engine(service.database_url, application_name="tests", pool_size=2)
        sessionmaker = create_sessionmaker(engine)
        try:
            for number, batch in enumerate(stream()):
                if number == SIGTERM_AFTER:
                    # A delivery in flight (the receiver holds it), then a batch published
                    # without waiting, so events are in hand too when the signal lands.
                    receiver.hold()
                    await wait_until(
                        lambda: _true(receiver.held > 0), timeout=30, what="a held delivery"
                    )
                    publishing = asyncio.gather(*(service.publish(e) for e in batch))
                    proc = service.proc
                    proc.send_signal(signal.SIGTERM)
                    await publishing
                    await asyncio.sleep(0.5)  # the delivery is still held while it drains
                    receiver.release()
                    code = await asyncio.to_thread(proc.wait, 60)
                    assert code == 0, service.log.read_text()[-3000:]
                    assert "still in hand" not in service.log.read_text()
                    service.start()
                    await service.consuming()
                    continue
                await asyncio.gather(*(service.publish(e) for e in batch))
                await asyncio.sleep(0.1)

            def counted() -> int:
                return sum(b["count_since_last"] for b in _unique(receiver.accepted).values())

            total_events = BATCHES * PER_BATCH
            await wait_until(
                lambda: _true(counted() >= total_events), timeout=90, what="every event counted"
            )
            await asyncio.sleep(GROUP_INTERVAL * 2)  # late duplicates would show up by now
            async with sessionmaker() as session:
                recorded = await session.scalar(select(func.sum(AlertGroup.count)))
                unsent = await session.scalar(
                    select(func.count())
                    .select_from(NotificationDelivery)
                    .where(NotificationDelivery.status != "sent")
                )
        finally:
            await engine.dispose()

        ids = [r["headers"]["X-Sitefleet-Notification-Id"] for r in receiver.accepted]
        assert len(ids) == len(set(ids)), "a notification was delivered twice"
        assert counted() == recorded == total_events
        assert unsent == 0
        assert receiver.aborted == 0  # the delivery in flight was finished, not cut off
        channel = await service.connection.channel()
        parked = await channel.declare_queue("notifier.events.parked", passive=True)
        assert parked.declaration_result.message_count == 0
        await channel.close()


async def _true(value: bool) -> bool:
    return value


def _unique(requests: list[dict]) -> dict[str, dict]:
    return {r["headers"]["X-Sitefleet-Notification-Id"]: r["body"] for r in requests}
