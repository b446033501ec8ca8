"""The consumer helper against the real broker: ack after work, retry through the TTL wait
queues, park the rest (with a ``*.parked`` event), never lose a message."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from cli.devstack import procs
from shared import broker
from shared.consumer import Consumer
from shared.db import create_engine, is_unavailable
from shared.errors import Permanent, Transient
from shared.messages import DnsReconcileRequested, Envelope, JobParked, Message, parse_payload

DELAYS = [0.1, 0.2]


@dataclass
class Rig:
    connection: AbstractRobustConnection
    spec: broker.QueueSpec
    publisher: broker.Publisher
    events: aio_pika.abc.AbstractQueue

    async def send(self, body: bytes) -> None:
        await self.publisher.publish_raw("", self.spec.name, body, message_id=str(uuid.uuid4()))

    async def parked(self, timeout: float = 10) -> aio_pika.abc.AbstractIncomingMessage:
        channel = await self.connection.channel()
        queue = await channel.get_queue(self.spec.parked, ensure=False)
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            message = await queue.get(fail=False)
            if message is not None:
                await message.ack()
                return message
            await asyncio.sleep(0.05)
        raise AssertionError("nothing parked")


@pytest.fixture
async def rig(amqp_url: str) -> AsyncIterator[Rig]:
    connection = await broker.connect(amqp_url, name="tests")
    name = f"test-{uuid.uuid4().hex[:8]}"
    spec = broker.QueueSpec(name, broker.JOBS_EXCHANGE, (f"{name}.*",))
    channel = await connection.channel()
    await broker.declare_queue(channel, spec, DELAYS, delivery_limit=5)
    events = await channel.declare_queue(exclusive=True)
    await events.bind(
        await channel.declare_exchange(
            broker.EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        ),
        "dns.parked",
    )
    publisher = await broker.Publisher.open(connection)
    yield Rig(connection, spec, publisher, events)
    cleanup = await connection.channel()
    for queue in (spec.name, spec.parked, *(spec.wait_queue(d) for d in DELAYS)):
        await cleanup.queue_delete(queue)
    await connection.close()


def job() -> DnsReconcileRequested:
    return DnsReconcileRequested(tenant_id="ten_1", site_id="site_1", domain="a.example")


async def start(rig: Rig, handler) -> None:
    consumer = Consumer(rig.spec, handler, rig.publisher, DELAYS)
    await consumer.start(await rig.connection.channel(), prefetch=4)


async def test_transient_errors_retry_with_backoff_then_succeed(rig: Rig) -> None:
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(envelope: Envelope, payload: Message) -> None:
        seen.append(len(seen))
        if len(seen) < 3:
            raise Transient("provider busy")
        done.set()

    await start(rig, handler)
    await rig.send(job().envelope().model_dump_json().encode())
    await asyncio.wait_for(done.wait(), 10)
    assert seen == [0, 1, 2]  # two retries through the wait queues, then success


async def test_a_database_that_cannot_be_reached_is_retried_not_parked(rig: Rig) -> None:
    # A real connection failure from SQLAlchemy (nothing listens on the port): the job waits
    # for the database like any transient error instead of being parked as a bug.
    down = create_engine(
        f"postgresql+asyncpg://postgres@127.0.0.1:{procs.free_port()}/none",
        application_name="tests",
    )
    seen: list[str] = []
    done = asyncio.Event()

    async def handler(envelope: Envelope, payload: Message) -> None:
        if len(seen) < 2:
            seen.append("down")
            async with down.connect():
                pass
        seen.append("up")
        done.set()

    try:
        await start(rig, handler)
        await rig.send(job().envelope().model_dump_json().encode())
        await asyncio.wait_for(done.wait(), 20)
    finally:
        await down.dispose()
    assert seen == ["down", "down", "up"]
    assert not is_unavailable(ValueError("a bug")) and not is_unavailable(KeyError("x"))


async def test_retries_exhausted_park_the_job_and_announce_it(rig: Rig) -> None:
    calls = 0

    async def handler(envelope: Envelope, payload: Message) -> None:
        nonlocal calls
        calls += 1
        raise Transient("still down", code="provider_down")

    await start(rig, handler)
    envelope = job().envelope()
    await rig.send(envelope.model_dump_json().encode())
    parked = await rig.parked()
    assert calls == len(DELAYS) + 1
    assert parked.headers[broker.H_ERROR_CODE] == "provider_down"
    assert Envelope.model_validate_json(parked.body).message_id == envelope.message_id
    event = await rig.events.get(timeout=5)
    await event.ack()
    announced = Envelope.model_validate_json(event.body)
    assert announced.type == "dns.parked"
    payload = parse_payload(announced)
    assert isinstance(payload, JobParked)
    assert payload.job_message_id == envelope.message_id
    assert payload.site_id == "site_1"
    assert payload.error.code == "provider_down"


async def test_permanent_errors_and_crashes_park_at_once(rig: Rig) -> None:
    calls: list[str] = []

    async def handler(envelope: Envelope, payload: Message) -> None:
        calls.append(envelope.message_id)
        if len(calls) == 1:
            raise Permanent("bad zone", code="dns_provider_rejected")
        raise ZeroDivisionError("bug")

    await start(rig, handler)
    await rig.send(job().envelope().model_dump_json().encode())
    assert (await rig.parked()).headers[broker.H_ERROR_CODE] == "dns_provider_rejected"
    await rig.send(job().envelope().model_dump_json().encode())
    assert (await rig.parked()).headers[broker.H_ERROR_CODE] == "internal_error"
    assert len(calls) == 2


async def test_undecodable_messages_are_parked_not_lost(rig: Rig) -> None:
    async def handler(envelope: Envelope, payload: Message) -> None:
        raise AssertionError("must not be called")

    await start(rig, handler)
    await rig.send(b"{not an envelope")
    parked = await rig.parked()
    assert parked.body == b"{not an envelope"
    assert parked.headers[broker.H_ERROR_CODE] == "undecodable_message"


async def test_unroutable_publish_raises_instead_of_vanishing(rig: Rig) -> None:
    with pytest.raises(aio_pika.exceptions.PublishError):
        await rig.publisher.publish_raw(
            "", f"no-such-queue-{uuid.uuid4().hex}", b"{}", message_id="x"
        )


def test_delay_names_are_stable() -> None:
    assert [broker.format_delay(d) for d in (10, 60, 300, 1800, 7200, 0.5, 1.5)] == [
        "10s",
        "1m",
        "5m",
        "30m",
        "2h",
        "500ms",
        "1500ms",
    ]
