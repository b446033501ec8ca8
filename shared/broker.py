"""RabbitMQ topology, connections and confirmed publishing.

Topology (declared idempotently by every process at start, so nothing published before a
consumer starts is unroutable):

    sitefleet.jobs   (topic)  --deployment.*, site.*-->  deployer.jobs
                              --dns.*, domain.*-->       dns.jobs
    sitefleet.events (topic)  --deployment.*, site.*, dns.*, domain.*, rollout.*-->  api.events
                              --*.failed, *.parked, *.succeeded, dns.drift,
                                dns.halted, rollout.halted, cert.expiring,
                                cert.issued-->                              notifier.events
                              --deployment.succeeded-->                    dns.events
                              --deployment.succeeded, cert.installed,
                                site.files_removed-->                      certs.events
    sitefleet.jobs            --cert.*-->                                  certs.jobs

Every work queue ``Q`` is a quorum queue with:
    Q.wait.<delay>  one TTL'd quorum queue per backoff step; expired messages dead-letter
                    (at-least-once) through the default exchange straight back to ``Q``
    Q.parked        where jobs go after the last retry or on a permanent error; also the
                    dead-letter target of ``Q`` once ``x-delivery-limit`` is exceeded
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractRobustConnection

from shared.errors import Unavailable
from shared.messages import Envelope, Message

log = logging.getLogger(__name__)

JOBS_EXCHANGE = "sitefleet.jobs"
EVENTS_EXCHANGE = "sitefleet.events"

# Headers we keep on every copy of a message (retries, parked copies).
H_EXCHANGE = "x-sitefleet-exchange"
H_ROUTING_KEY = "x-sitefleet-routing-key"
H_ATTEMPT = "x-sitefleet-attempt"
H_ERROR_CODE = "x-sitefleet-error-code"
H_ERROR_MESSAGE = "x-sitefleet-error-message"


@dataclass(frozen=True)
class QueueSpec:
    name: str
    exchange: str
    bindings: tuple[str, ...]

    @property
    def parked(self) -> str:
        return f"{self.name}.parked"

    def wait_queue(self, delay_seconds: float) -> str:
        return f"{self.name}.wait.{format_delay(delay_seconds)}"


DEPLOYER_JOBS = QueueSpec("deployer.jobs", JOBS_EXCHANGE, ("deployment.*", "site.*"))
DNS_JOBS = QueueSpec("dns.jobs", JOBS_EXCHANGE, ("dns.*", "domain.*"))
API_EVENTS = QueueSpec(
    "api.events", EVENTS_EXCHANGE, ("deployment.*", "site.*", "dns.*", "domain.*", "rollout.*")
)
NOTIFIER_EVENTS = QueueSpec(
    "notifier.events",
    EVENTS_EXCHANGE,
    (
        "*.failed",
        "*.parked",
        "*.succeeded",
        "dns.drift",
        "dns.halted",
        "rollout.halted",
        "cert.expiring",
        # A certificate issued resolves the site's open cert alerts, like *.succeeded.
        "cert.issued",
    ),
)
# The DNS/CDN service purges a site's CDN cache once a deployment is live.
DNS_EVENTS = QueueSpec("dns.events", EVENTS_EXCHANGE, ("deployment.succeeded",))
# The certs service: ACME orders (jobs), and what tells it a site went live, a certificate
# reached every host, or a site's files are gone (events).
CERTS_JOBS = QueueSpec("certs.jobs", JOBS_EXCHANGE, ("cert.*",))
CERTS_EVENTS = QueueSpec(
    "certs.events",
    EVENTS_EXCHANGE,
    ("deployment.succeeded", "cert.installed", "site.files_removed"),
)
ALL_QUEUES = (
    DEPLOYER_JOBS,
    DNS_JOBS,
    API_EVENTS,
    NOTIFIER_EVENTS,
    DNS_EVENTS,
    CERTS_JOBS,
    CERTS_EVENTS,
)


def format_delay(seconds: float) -> str:
    """10 -> '10s', 300 -> '5m', 7200 -> '2h', 0.5 -> '500ms' (queue names must be stable)."""
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def dead_letter_to(queue: str) -> dict[str, Any]:
    return {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        # at-least-once dead-lettering needs reject-publish overflow (RabbitMQ >= 3.10).
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


async def declare_topology(
    channel: AbstractChannel, retry_delays: list[float], delivery_limit: int
) -> None:
    for spec in ALL_QUEUES:
        await declare_queue(channel, spec, retry_delays, delivery_limit)


async def declare_queue(
    channel: AbstractChannel, spec: QueueSpec, retry_delays: list[float], delivery_limit: int
) -> None:
    """One work queue with its bindings, its wait queues and its parked queue."""
    exchange = await channel.declare_exchange(
        spec.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    quorum: dict[str, Any] = {"x-queue-type": "quorum"}
    await channel.declare_queue(spec.parked, durable=True, arguments=quorum)
    queue = await channel.declare_queue(
        spec.name,
        durable=True,
        arguments={**quorum, "x-delivery-limit": delivery_limit, **dead_letter_to(spec.parked)},
    )
    for key in spec.bindings:
        await queue.bind(exchange, routing_key=key)
    for delay in retry_delays:
        await channel.declare_queue(
            spec.wait_queue(delay),
            durable=True,
            arguments={
                **quorum,
                "x-message-ttl": round(delay * 1000),
                **dead_letter_to(spec.name),
            },
        )


async def connect(url: str, *, name: str, retry_every: float = 1.0) -> AbstractRobustConnection:
    """A robust connection, waiting for the broker if it is down (for tools and tests;
    services use ``stay_connected``)."""
    while True:
        try:
            return await aio_pika.connect_robust(url, client_properties={"connection_name": name})
        except (OSError, aio_pika.exceptions.AMQPError) as exc:
            log.warning("broker unreachable, retrying", extra={"error": str(exc)})
            await asyncio.sleep(retry_every)


async def stay_connected(
    url: str | Sequence[str],
    *,
    name: str,
    on_connect: Callable[[AbstractConnection], Awaitable[None]],
    on_disconnect: Callable[[], None] | None = None,
    retry_every: float = 1.0,
) -> None:
    """Keep one connection up for a service, forever (cancel the task to stop).

    Connect, let ``on_connect`` declare topology, attach publishers and start consumers,
    wait until the connection drops, let ``on_disconnect`` detach, and start over. Building
    everything afresh on each connection is easier to reason about than restoring channels
    and consumers in place, and unacked deliveries of the lost connection are redelivered
    by the broker anyway.

    ``url`` may list the nodes of a cluster: each attempt takes the next one, so a node
    that is down (or drops the connection) hands the service to another.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("no broker URL")
    attempt = 0
    while True:
        connection: AbstractConnection | None = None
        node = urls[attempt % len(urls)]
        attempt += 1
        try:
            connection = await aio_pika.connect(node, client_properties={"connection_name": name})
            lost = asyncio.Event()
            connection.close_callbacks.add(lambda *_, lost=lost: lost.set())
            await on_connect(connection)
            log.info("broker connected", extra={"connection": name})
            await lost.wait()
            log.warning("broker connection lost, reconnecting", extra={"connection": name})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("broker unreachable, retrying", extra={"error": repr(exc)})
        finally:
            if on_disconnect is not None:
                on_disconnect()
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
        await asyncio.sleep(retry_every)


class Publisher:
    """Persistent, confirmed, mandatory publishing: returns only once the broker has it.

    Long-lived: it is attached to a channel of each new connection and detached when the
    connection drops. Raises ``Unavailable`` while detached, and the broker's errors on a
    nack or an unroutable message (``on_return_raises``); callers decide whether to retry.
    """

    def __init__(self) -> None:
        self.channel: AbstractChannel | None = None
        self._exchanges: dict[str, aio_pika.abc.AbstractExchange] = {}

    @classmethod
    async def open(cls, connection: AbstractConnection) -> Publisher:
        publisher = cls()
        await publisher.attach(connection)
        return publisher

    async def attach(self, connection: AbstractConnection) -> None:
        self._exchanges = {}
        self.channel = await connection.channel(publisher_confirms=True, on_return_raises=True)

    def detach(self) -> None:
        self.channel = None

    @property
    def attached(self) -> bool:
        return self.channel is not None and not self.channel.is_closed

    def _channel(self) -> AbstractChannel:
        if self.channel is None or self.channel.is_closed:
            raise Unavailable("not connected to the broker", code="broker_unavailable")
        return self.channel

    async def close(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None and not channel.is_closed:
            await channel.close()

    async def _exchange(self, name: str) -> aio_pika.abc.AbstractExchange:
        channel = self._channel()
        if name == "":
            return channel.default_exchange
        if name not in self._exchanges:
            self._exchanges[name] = await channel.get_exchange(name)
        return self._exchanges[name]

    async def publish_raw(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            correlation_id=correlation_id,
            headers=headers or {},
        )
        ex = await self._exchange(exchange)
        await ex.publish(message, routing_key=routing_key, mandatory=True)

    async def publish_envelope(self, exchange: str, envelope: Envelope) -> None:
        await self.publish_raw(
            exchange,
            envelope.type,
            envelope.model_dump_json().encode(),
            message_id=envelope.message_id,
            correlation_id=envelope.correlation_id,
            headers={H_EXCHANGE: exchange, H_ROUTING_KEY: envelope.type},
        )

    async def emit(self, event: Message) -> None:
        """Publish an event (deployer/dns/notifier report their outcomes this way)."""
        await self.publish_envelope(EVENTS_EXCHANGE, event.envelope())

    async def submit(self, job: Message) -> None:
        await self.publish_envelope(JOBS_EXCHANGE, job.envelope())
