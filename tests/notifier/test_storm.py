"""The storm of issue 5's acceptance: 10,000 failure events of one error across 500 sites,
published within 60 s (here within 15 s: the same storm, four times as dense), with a
SIGKILL of the notifier in the middle (timers shortened through settings, in proportion to
the window: the storm spans three group_intervals, as 60 s does with 20 s). Every event is
counted in exactly one digest, no notification is delivered twice, and each group gets at
most one notification per group_interval (so the total is bounded by the groups and the
storm's length). bench S10 paces a storm over the full 60 s."""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from datetime import datetime

import pytest
from sqlalchemy import func, select

from shared.db import create_engine, create_sessionmaker
from shared.models import AlertGroup, NotificationDelivery
from tests.fixtures.platform import wait_until
from tests.notifier.conftest import failed
from tests.notifier.process import running_notifier

pytestmark = pytest.mark.slow

EVENTS = 10_000
SITES = 500
BATCHES = 50  # 200 events a batch, about three batches a second
WINDOW = 15.0
GROUP_WAIT = 0.5
GROUP_INTERVAL = 5.0


async def test_ten_thousand_events_over_500_sites_with_a_sigkill() -> None:
    async with running_notifier(
        SITEFLEET_GROUP_WAIT=str(GROUP_WAIT),
        SITEFLEET_GROUP_INTERVAL=str(GROUP_INTERVAL),
        SITEFLEET_PREFETCH="200",
    ) as service:
        receiver = service.receiver
        engine = create_engine(service.database_url, application_name="tests", pool_size=2)
        sessionmaker = create_sessionmaker(engine)

        async def sends_on_record() -> bool:
            ids = [r["headers"]["X-Sitefleet-Notification-Id"] for r in receiver.accepted]
            async with sessionmaker() as session:
                unrecorded = await session.scalar(
                    select(func.count())
                    .select_from(NotificationDelivery)
                    .where(NotificationDelivery.id.in_(ids), NotificationDelivery.status != "sent")
                )
            return unrecorded == 0

        per_batch = EVENTS // BATCHES
        started = time.monotonic()
        for batch in range(BATCHES):
            # One error: the same code and message but for numbers (stripped by grouping).
            await asyncio.gather(
                *(
                    service.publish(
                        failed(
                            f"site_{(batch * per_batch + i) % SITES:03d}",
                            tenant_id="ten_storm",
                            message=f"upload to web-{i % 7} failed after {batch * 1000 + i} ms",
                        )
                    )
                    for i in range(per_batch)
                )
            )
            if batch == BATCHES // 2:
                # SIGKILL with deliveries in flight (held by the receiver); what it already
                # answered is on record as sent.
                receiver.hold()
                await wait_until(lambda: _true(receiver.held > 0), timeout=60, what="a held send")
                await wait_until(sends_on_record, timeout=60, what="sends on record")
                service.kill()
                receiver.release()
                service.start()
            # Pace the storm over the window (catch up if publishing ran slow).
            await asyncio.sleep(
                max(0.0, started + WINDOW * (batch + 1) / BATCHES - time.monotonic())
            )

        def counted() -> int:
            return sum(b["count_since_last"] for b in _unique(receiver.accepted).values())

        await wait_until(
            lambda: _true(counted() >= EVENTS), timeout=300, what="every event counted"
        )
        await asyncio.sleep(GROUP_INTERVAL + 2)  # a late duplicate would show by now
        async with sessionmaker() as session:
            total = await session.scalar(select(func.sum(AlertGroup.count)))
            groups = await session.scalar(select(func.count()).select_from(AlertGroup))
        await engine.dispose()

        ids = [r["headers"]["X-Sitefleet-Notification-Id"] for r in receiver.accepted]
        assert len(ids) == len(set(ids)), "a notification was delivered twice"
        assert counted() == total == EVENTS
        assert groups == SITES  # one error, one group per site
        by_group: dict[str, list[dict]] = defaultdict(list)
        for body in _unique(receiver.accepted).values():
            by_group[body["group_id"]].append(body)
        assert len(by_group) == SITES
        # From the first event to the last notification: first after group_wait, then one
        # per group_interval at most.
        span = time.monotonic() - started
        bound = 1 + math.ceil(span / GROUP_INTERVAL)
        for notes in by_group.values():
            notes.sort(key=lambda b: b["sequence"])
            assert [b["sequence"] for b in notes] == list(range(1, len(notes) + 1))
            assert notes[0]["kind"] == "firing"
            times = [datetime.fromisoformat(b["created_at"]) for b in notes]
            gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
            assert all(gap >= GROUP_INTERVAL for gap in gaps), gaps
            assert len(notes) <= bound
        assert len(ids) <= SITES * bound
        assert len(ids) < EVENTS / 3  # grouping, not one message per event


async def _true(value: bool) -> bool:
    return value


def _unique(requests: list[dict]) -> dict[str, dict]:
    return {r["headers"]["X-Sitefleet-Notification-Id"]: r["body"] for r in requests}
