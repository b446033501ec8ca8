"""The notifier as it runs (``python -m services.notifier``) on real RabbitMQ and
PostgreSQL: bad events are parked with a reason; an event storm with a SIGKILL in the
middle still ends in digests that count every event exactly once, with no notification
delivered twice and at most one per group per group_interval."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aio_pika
import httpx
import pytest
from sqlalchemy import func, select

from cli.devstack import procs
from shared import broker
from shared.db import create_engine, create_sessionmaker
from shared.messages import Envelope
from shared.models import AlertGroup, NotificationDelivery
from shared.settings import PROJECT_ROOT
from tests.fixtures.isolation import create_database, create_vhost, drop_database, drop_vhost
from tests.fixtures.platform import wait_until
from tests.notifier.conftest import Receiver, failed

RETRY_DELAYS = [0.5, 1.0, 2.0]
GROUP_INTERVAL = 2.0
OPS_SECRET = "ops-secret"  # noqa: S105


@dataclass
class Service:
    env: dict[str, str]
    log: Path
    receiver: Receiver
    database_url: str
    amqp_url: str
    proc: subprocess.Popen[bytes] | None = None
    connection: aio_pika.abc.AbstractRobustConnection | None = None
    publisher: broker.Publisher | None = None
    tails: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.proc = procs.start(
            [sys.executable, "-m", "services.notifier"],
            log=self.log,
            env=self.env,
            cwd=PROJECT_ROOT,
        )

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    async def consuming(self) -> None:
        assert self.connection is not None

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError("notifier exited:\n" + self.log.read_text()[-3000:])
            channel = await self.connection.channel()  # type: ignore[union-attr]
            try:
                queue = await channel.declare_queue("notifier.events", passive=True)
                return bool(queue.declaration_result.consumer_count)
            finally:
                await channel.close()

        await wait_until(ready, timeout=30, what="the notifier to consume")

    async def publish(self, envelope: Envelope) -> None:
        assert self.publisher is not None
        await self.publisher.publish_envelope(broker.EVENTS_EXCHANGE, envelope)


@pytest.fixture(scope="module")
async def service() -> AsyncIterator[Service]:
    tag = uuid.uuid4().hex[:10]
    vhost, amqp_url = create_vhost(f"sitefleet-test-ntf-{tag}")
    db_name = f"sitefleet_test_ntfsvc_{tag}"
    database_url = await create_database(db_name)
    root = Path(tempfile.mkdtemp(prefix="sitefleet-notifier-"))
    receiver = Receiver(secret=OPS_SECRET)
    env = {
        "SITEFLEET_DATABASE_URL": database_url,
        "SITEFLEET_AMQP_URL": amqp_url,
        "SITEFLEET_OPS_WEBHOOK_URLS": json.dumps([receiver.url]),
        "SITEFLEET_OPS_WEBHOOK_SECRET": OPS_SECRET,
        "SITEFLEET_RETRY_DELAYS": json.dumps(RETRY_DELAYS),
        "SITEFLEET_GROUP_WAIT": "0.3",
        "SITEFLEET_GROUP_INTERVAL": str(GROUP_INTERVAL),
        "SITEFLEET_REPEAT_INTERVAL": "600",
        "SITEFLEET_POLL_INTERVAL": "0.05",
        "SITEFLEET_DELIVERY_POLL_INTERVAL": "0.2",
        "SITEFLEET_PREFETCH": "64",
        "SITEFLEET_DELIVERY_WORKERS": "8",
        "SITEFLEET_DELIVERY_BACKOFF": "[0.2, 0.5]",
        "SITEFLEET_CHANNEL_RATES": '{"webhook": 10000}',
        "SITEFLEET_CHANNEL_BURSTS": '{"webhook": 10000}',
        "SITEFLEET_WEBHOOK_TIMEOUT": "5",
        "SITEFLEET_LOG_LEVEL": "WARNING",
        "SITEFLEET_METRICS_PORT": str(procs.free_port()),
    }
    svc = Service(env, root / "notifier.log", receiver, database_url, amqp_url)
    svc.connection = await broker.connect(amqp_url, name="tests")
    topology = await svc.connection.channel()
    await broker.declare_topology(topology, RETRY_DELAYS, 10)
    await topology.close()
    svc.publisher = await broker.Publisher.open(svc.connection)
    svc.start()
    try:
        await svc.consuming()
        yield svc
    finally:
        if svc.proc is not None:
            procs.stop(svc.proc)
        await svc.connection.close()
        receiver.close()
        await drop_database(db_name)
        drop_vhost(vhost)
        shutil.rmtree(root, ignore_errors=True)


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
