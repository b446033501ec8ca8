"""The API's connection to RabbitMQ: feeds the outbox relay a publisher and runs the
consumer that records other services' events. The API serves requests without it."""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractRobustConnection

from services.api.events import EventRecorder
from services.api.outbox import Relay
from services.api.settings import ApiSettings
from shared import broker
from shared.consumer import Consumer

log = logging.getLogger(__name__)


class BrokerLink:
    def __init__(self, settings: ApiSettings, relay: Relay, recorder: EventRecorder) -> None:
        self.settings = settings
        self.relay = relay
        self.recorder = recorder
        self.connection: AbstractRobustConnection | None = None

    @property
    def ready(self) -> bool:
        return self.connection is not None and self.connection.connected.is_set()

    async def run(self) -> None:
        s = self.settings
        while True:
            try:
                self.connection = await broker.connect(s.amqp_url, name="api")
                topology = await self.connection.channel()
                await broker.declare_topology(topology, s.retry_delays, s.delivery_limit)
                await topology.close()
                publisher = await broker.Publisher.open(self.connection)
                consumer = Consumer(
                    broker.API_EVENTS, self.recorder, publisher, s.retry_delays, emit_parked=False
                )
                await consumer.start(await self.connection.channel(), s.prefetch)
                self.relay.publisher = publisher
                self.relay.wake()
                log.info("broker link up")
                return  # the robust connection restores channels and consumers by itself
            except Exception as exc:
                log.warning("broker link setup failed, retrying", extra={"error": repr(exc)})
                if self.connection is not None:
                    await self.connection.close()
                    self.connection = None
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        self.relay.publisher = None
        if self.connection is not None:
            await self.connection.close()
