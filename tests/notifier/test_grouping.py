"""Intake and the scheduler against a real database, on a steppable clock (no sleeping):
dedupe, fingerprints, Alertmanager timers, digests, recovery, routing."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select

from services.notifier.channels import ops_channels
from services.notifier.consumer import EventIntake
from services.notifier.fingerprint import interpret, normalize_message
from services.notifier.grouping import Outcome, Timers
from services.notifier.scheduler import schedule_due
from shared.db import SessionMaker, create_engine, create_sessionmaker
from shared.errors import Invalid
from shared.ids import new_id
from shared.messages import DeploymentProgressed, Envelope
from shared.models import AlertGroup, NotificationChannel, NotificationDelivery, Tenant
from tests.notifier.conftest import Clock, failed, succeeded

TIMERS = Timers.of_seconds(30, 300, 4 * 3600)
OPS = ops_channels(["http://ops.invalid/hook"], "")


async def deliveries(db: SessionMaker) -> list[NotificationDelivery]:
    async with db() as session:
        rows = await session.scalars(select(NotificationDelivery).order_by(NotificationDelivery.id))
        return list(rows)


async def tick(db: SessionMaker, clock: Clock) -> int:
    async with db.begin() as session:
        return (await schedule_due(session, TIMERS, OPS, clock())).notifications


def test_messages_are_normalized_without_ids_numbers_or_hex() -> None:
    a = normalize_message("Upload of dep_0193f1c2a4b7e5d1c2f3 to 10.0.0.7 failed after 3012 ms")
    b = normalize_message("upload of dep_0193f1c2ffffffffffff to 10.0.0.9 failed after 17 ms")
    assert a == b == "upload of <id> to <n>.<n>.<n>.<n> failed after <n> ms"
    assert normalize_message("object deadbeef42 missing") == "object <hex> missing"
    same = interpret(failed("site_1", message="timeout after 30 s"))
    other_number = interpret(failed("site_1", message="timeout after 31 s"))
    other_site = interpret(failed("site_2", message="timeout after 30 s"))
    other_code = interpret(failed("site_1", message="timeout after 30 s", code="build_failed"))
    assert same.fingerprint == other_number.fingerprint  # type: ignore[union-attr]
    assert same.fingerprint != other_site.fingerprint  # type: ignore[union-attr]
    assert same.fingerprint != other_code.fingerprint  # type: ignore[union-attr]


async def test_a_redelivered_event_never_counts_twice(database_url: str, clock: Clock) -> None:
    engine = create_engine(database_url, application_name="tests", pool_size=2)
    intake = EventIntake(create_sessionmaker(engine), TIMERS, clock)
    tenant = f"ten_{uuid.uuid4().hex[:12]}"
    first = failed("site_dup", tenant_id=tenant)
    assert await intake.take(first) is Outcome.OPENED
    assert await intake.take(first) is Outcome.DUPLICATE
    assert (
        await intake.take(Envelope.model_validate_json(first.model_dump_json()))
        is Outcome.DUPLICATE
    )
    assert await intake.take(failed("site_dup", tenant_id=tenant)) is Outcome.FOLDED
    async with create_sessionmaker(engine)() as session:
        group = await session.scalar(select(AlertGroup).where(AlertGroup.tenant_id == tenant))
    await engine.dispose()
    assert group is not None
    assert (group.count, group.pending_count) == (2, 2)


async def test_events_that_are_not_alerts_are_refused_with_a_reason(clock: Clock) -> None:
    intake = EventIntake(None, TIMERS, clock)  # type: ignore[arg-type]  # refused before any I/O
    progressed = DeploymentProgressed(
        deployment_id="dep_1",
        tenant_id="ten_a",
        site_id="site_1",
        domain="a.example",
        generation=1,
        status="building",
    ).envelope()
    with pytest.raises(Invalid) as refused:
        await intake.take(progressed)
    assert refused.value.code == "unknown_alert_event"
    no_error = failed("site_1").model_copy(update={"payload": {"site_id": "site_1"}})
    with pytest.raises(Invalid) as refused:
        await intake.take(no_error)
    assert "error" in refused.value.message


async def test_timers_digests_repeats_and_recovery(db: SessionMaker, clock: Clock) -> None:
    intake = EventIntake(db, TIMERS, clock)
    t0 = clock.now
    for _ in range(3):
        await intake.take(failed("site_1"))
    clock.advance(29)
    assert await tick(db, clock) == 0  # still in group_wait
    clock.advance(1)
    assert await tick(db, clock) == 1
    [first] = await deliveries(db)
    assert first.kind == "firing"
    assert first.payload["count_since_last"] == 3
    assert first.payload["count"] == 3

    # Two more occurrences: a digest, but not before group_interval after the first.
    await intake.take(failed("site_1", message="nginx answered 503"))
    await intake.take(failed("site_1"))
    clock.advance(150)
    assert await tick(db, clock) == 0
    clock.advance(150)
    assert await tick(db, clock) == 1
    digest = (await deliveries(db))[-1]
    assert (digest.kind, digest.payload["count_since_last"], digest.payload["count"]) == (
        "digest",
        2,
        5,
    )

    # No news: nothing after another group_interval, a reminder after repeat_interval.
    clock.advance(300)
    assert await tick(db, clock) == 0
    clock.advance(4 * 3600 - 300)
    assert await tick(db, clock) == 1
    repeat = (await deliveries(db))[-1]
    assert (repeat.kind, repeat.payload["count_since_last"]) == ("repeat", 0)

    # One more failure, then the site recovers: one "recovered" message carrying it.
    await intake.take(failed("site_1"))
    await intake.take(failed("site_other"))  # another site's group is not resolved
    assert await intake.take(succeeded("site_1")) is Outcome.RESOLVED
    clock.advance(299)
    assert await tick(db, clock) == 1  # site_other's first; site_1 waits out group_interval
    assert (await deliveries(db))[-1].payload["site_id"] == "site_other"
    clock.advance(1)
    assert await tick(db, clock) == 1
    resolved = (await deliveries(db))[-1]
    assert (resolved.kind, resolved.payload["status"]) == ("resolved", "resolved")
    assert resolved.payload["count_since_last"] == 1
    mine = [d for d in await deliveries(db) if d.payload["site_id"] == "site_1"]
    assert sum(d.payload["count_since_last"] for d in mine) == 6
    clock.advance(4 * 3600)
    assert await tick(db, clock) == 1  # site_other repeats; the resolved group is done

    # A new failure after recovery opens a new group.
    assert await intake.take(failed("site_1")) is Outcome.OPENED
    async with db() as session:
        groups = list(
            await session.scalars(select(AlertGroup).where(AlertGroup.site_id == "site_1"))
        )
    assert sorted(g.status for g in groups) == ["firing", "resolved"]
    assert min(g.first_seen for g in groups) >= t0


async def test_tenant_channels_get_only_the_event_types_they_chose(
    db: SessionMaker, clock: Clock
) -> None:
    async with db.begin() as session:
        session.add(Tenant(id="ten_a", name="a"))
        await session.flush()
        for events in (["deployment.failed"], ["dns.failed"], ["*"]):
            session.add(
                NotificationChannel(
                    id=new_id("nch"),
                    tenant_id="ten_a",
                    type="webhook",
                    target="https://hooks.example/x",
                    events=events,
                    secret="k",
                )
            )
    intake = EventIntake(db, TIMERS, clock)
    await intake.take(failed("site_1"))
    await intake.take(failed("site_2", tenant_id="ten_b"))
    clock.advance(30)
    assert await tick(db, clock) == 2
    rows = await deliveries(db)
    by_site: dict[str, int] = {}
    for row in rows:
        by_site[row.payload["site_id"]] = by_site.get(row.payload["site_id"], 0) + 1
    assert by_site == {"site_1": 3, "site_2": 1}  # ops + deployment.failed + "*"; ops only


async def test_concurrent_intake_and_scheduling_count_every_event_once(
    db: SessionMaker, clock: Clock
) -> None:
    intake = EventIntake(db, Timers.of_seconds(0, 0, 3600), clock)
    events = [failed(f"site_{i % 5}", message=f"upload failed after {i} ms") for i in range(200)]

    async def schedule_a_while() -> None:
        for _ in range(20):
            await tick(db, clock)
            await asyncio.sleep(0)

    await asyncio.gather(*(intake.take(e) for e in events), schedule_a_while())
    await asyncio.gather(*(intake.take(e) for e in events[:50]))  # redelivered
    clock.advance(3600)
    await tick(db, clock)
    async with db() as session:
        total = await session.scalar(select(func.sum(AlertGroup.count)))
        pending = await session.scalar(select(func.sum(AlertGroup.pending_count)))
    notified = sum(d.payload["count_since_last"] for d in await deliveries(db))
    assert total == 200
    assert notified + pending == 200
