"""The API's connection to RabbitMQ: feeds the outbox relay a publisher and runs the
consumer that records other services' events. The API serves requests without it; the
relay simply waits while it is down."""

from __future__ import annotations

from aio_pika.abc import AbstractConnection

from services.api.events import EventRecorder
from services.api.outbox import Relay
from services.api.settings import ApiSettings
from shared import broker
from shared.consumer import Consumer


class BrokerLink:
    def __init__(self, settings: ApiSettings, relay: Relay, recorder: EventRecorder) -> None:
        self.settings = settings
        self.relay = relay
        self.publisher = broker.Publisher()
        self.consumer = Consumer(
            broker.API_EVENTS, recorder, self.publisher, settings.retry_delays, emit_parked=False
        )

    @property
    def ready(self) -> bool:
        return self.publisher.attached

    async def run(self) -> None:
        await broker.stay_connected(
            self.settings.broker_urls,
            name="api",
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
        )

    async def _on_connect(self, connection: AbstractConnection) -> None:
        s = self.settings
        topology = await connection.channel()
        await broker.declare_topology(topology, s.retry_delays, s.delivery_limit)
        await topology.close()
        await self.publisher.attach(connection)
        await self.consumer.start(await connection.channel(), s.prefetch)
        self.relay.publisher = self.publisher
        self.relay.wake()

    def _on_disconnect(self) -> None:
        self.relay.publisher = None
        self.publisher.detach()

    async def stop_consuming(self) -> None:
        """Take no more events; those in hand get a few seconds to be recorded (the rest
        go back to the queue when the connection closes)."""
        await self.consumer.stop(grace=5)

    async def close(self) -> None:
        """Detach the publisher (after ``stop_consuming`` and the relay's last pass)."""
        self._on_disconnect()
