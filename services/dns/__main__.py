"""Run the DNS service: ``python -m services.dns``.

Consumes with prefetch 1 and must run as the only consumer of ``dns.jobs`` per PowerDNS
backend: its sqlite3 backend fails concurrent writers (DESIGN.md §5).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable
from typing import TypeVar

import httpx

from services.dns.consumer import DnsJobHandler
from services.dns.local_cdn import ensure_local_cdn_zone
from services.dns.powerdns import PowerDnsClient
from services.dns.settings import DnsSettings
from shared import broker
from shared.consumer import Consumer
from shared.db import create_engine, create_sessionmaker
from shared.errors import Transient
from shared.logs import configure_logging

log = logging.getLogger("services.dns")

T = TypeVar("T")

# Seconds a running job may take to finish after SIGTERM before we disconnect anyway.
DRAIN_TIMEOUT = 30.0


async def _ensure_cdn_zone(
    client: PowerDnsClient, settings: DnsSettings, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await ensure_local_cdn_zone(client, settings)
            return
        except Transient as exc:
            log.warning("PowerDNS not ready for the local CDN zone", extra={"error": exc.message})
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass


async def _until_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None if a stop signal comes first (e.g. broker still down)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():
        task.cancel()
        return None
    return task.result()


async def main() -> None:
    settings = DnsSettings()
    configure_logging("dns", settings.log_level)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)

    engine = create_engine(settings.database_url, application_name="sitefleet-dns", pool_size=2)
    try:
        connection = await _until_stopped(broker.connect(settings.amqp_url, name="dns"), stop)
        if connection is None:
            return
        async with connection, httpx.AsyncClient() as http:
            channel = await connection.channel()
            await broker.declare_topology(channel, settings.retry_delays, settings.delivery_limit)
            publisher = await broker.Publisher.open(connection)
            client = PowerDnsClient.from_settings(http, settings)
            if settings.local_cdn_zone:
                await _ensure_cdn_zone(client, settings, stop)
            handler = DnsJobHandler(
                sessionmaker=create_sessionmaker(engine),
                client=client,
                publisher=publisher,
                settings=settings,
            )
            consumer = Consumer(broker.DNS_JOBS, handler, publisher, settings.retry_delays)
            # prefetch 1: one job at a time, so one writer to PowerDNS.
            await consumer.start(await connection.channel(), prefetch=1)
            log.info("dns service consuming", extra={"queue": broker.DNS_JOBS.name})
            await stop.wait()
            log.info("stopping: waiting for the running job")
            await consumer.stop(DRAIN_TIMEOUT)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
