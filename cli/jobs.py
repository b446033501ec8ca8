"""Parked jobs: list what gave up, and replay one after the cause is fixed.

Listing takes each parked message without acknowledging it and hands them all back when
the channel closes, so nothing is lost by looking. Replaying republishes the original body
to the exchange and routing key it first went to (attempts start again), waits for the
broker's confirm, and only then removes the parked copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shared import broker
from shared.errors import NotFound

SKIP_ON_REPLAY = {
    broker.H_ATTEMPT,
    broker.H_ERROR_CODE,
    broker.H_ERROR_MESSAGE,
    "x-delivery-count",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
}


@dataclass(frozen=True)
class ParkedJob:
    queue: str
    message_id: str
    routing_key: str
    error_code: str
    error_message: str


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _describe(queue: str, message: AbstractIncomingMessage) -> ParkedJob:
    headers = message.headers or {}
    return ParkedJob(
        queue=queue,
        message_id=message.message_id or "",
        routing_key=_text(headers.get(broker.H_ROUTING_KEY)) or queue.removesuffix(".parked"),
        # Jobs dead-lettered by x-delivery-limit carry no error of ours: they crash-looped.
        error_code=_text(headers.get(broker.H_ERROR_CODE)) or "delivery_limit_exceeded",
        error_message=_text(headers.get(broker.H_ERROR_MESSAGE)),
    )


@contextlib.asynccontextmanager
async def _channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(amqp_url, client_properties={"connection_name": "cli"})
    async with connection:
        yield await connection.channel(publisher_confirms=True, on_return_raises=True)


async def _drain(channel: AbstractChannel, queue_name: str) -> list[AbstractIncomingMessage]:
    queue = await channel.get_queue(queue_name, ensure=False)
    held = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        held.append(message)
    return held


async def list_parked(amqp_url: str) -> list[ParkedJob]:
    jobs: list[ParkedJob] = []
    async with _channel(amqp_url) as channel:
        for spec in broker.ALL_QUEUES:
            jobs += [_describe(spec.parked, m) for m in await _drain(channel, spec.parked)]
        # Leaving the block closes the channel: every held message goes back to its queue.
    return jobs


async def replay(amqp_url: str, message_id: str) -> ParkedJob:
    async with _channel(amqp_url) as channel:
        for spec in broker.ALL_QUEUES:
            for message in await _drain(channel, spec.parked):
                if message.message_id != message_id:
                    continue
                job = _describe(spec.parked, message)
                headers = {
                    k: v for k, v in (message.headers or {}).items() if k not in SKIP_ON_REPLAY
                }
                exchange_name = _text(headers.get(broker.H_EXCHANGE))
                exchange = (
                    await channel.get_exchange(exchange_name)
                    if exchange_name
                    else channel.default_exchange
                )
                routing_key = job.routing_key if exchange_name else spec.name
                await exchange.publish(
                    aio_pika.Message(
                        message.body,
                        headers=headers,
                        message_id=message.message_id,
                        correlation_id=message.correlation_id,
                        content_type=message.content_type,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=routing_key,
                    mandatory=True,
                )
                await message.ack()
                return job
    raise NotFound(f"no parked job with id {message_id!r}", code="parked_job_not_found")
