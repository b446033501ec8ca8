"""Run the DNS service: ``python -m services.dns``.

Consumes with prefetch 1 and must run as the only consumer of ``dns.jobs`` per PowerDNS
backend: its sqlite3 backend fails concurrent writers (DESIGN.md §5).
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from aio_pika.abc import AbstractConnection

from services.dns.cdn import open_cdn_provider
from services.dns.consumer import DnsJobHandler
from services.dns.domains import DomainPurchases, check_brought_domains_forever
from services.dns.local_cdn import ensure_local_cdn_zone
from services.dns.powerdns import PowerDnsClient
from services.dns.provider import open_dns_provider
from services.dns.purge import CdnPurgeHandler
from services.dns.renewals import renew_forever
from services.dns.settings import DnsSettings
from services.dns.sweep import sweep_forever
from shared import broker
from shared.consumer import Consumer
from shared.db import create_engine, create_sessionmaker
from shared.errors import SitefleetError
from shared.logs import configure_logging
from shared.metrics import serve_metrics
from shared.registrar import open_registrar
from shared.service import consume_until, stop_event

log = logging.getLogger("services.dns")

# Seconds a running job may take to finish after SIGTERM before we disconnect anyway.
DRAIN_TIMEOUT = 30.0


async def _ensure_cdn_zone(
    client: PowerDnsClient, settings: DnsSettings, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await ensure_local_cdn_zone(client, settings)
            return
        except SitefleetError as exc:  # dev/test only; never worth dying for: retry
            log.warning("PowerDNS not ready for the local CDN zone", extra={"error": exc.message})
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass


async def main() -> None:
    settings = DnsSettings()
    configure_logging("dns", settings.log_level)
    stop = stop_event()
    serve_metrics(settings.metrics_host, settings.metrics_port)
    engine = create_engine(
        settings.database_url,
        application_name="sitefleet-dns",
        pool_size=min(2, settings.db_pool_size),
    )
    try:
        async with httpx.AsyncClient() as http:
            client = open_dns_provider(http, settings)
            if settings.local_cdn_zone and isinstance(client, PowerDnsClient):
                await _ensure_cdn_zone(client, settings, stop)
            cdn = open_cdn_provider(http, settings)
            publisher = broker.Publisher()
            sessionmaker = create_sessionmaker(engine)
            registrar = open_registrar(settings, sessionmaker=sessionmaker, http=http)
            purchases = DomainPurchases(
                sessionmaker=sessionmaker,
                registrar=registrar,
                publisher=publisher,
                settings=settings,
            )
            handler = DnsJobHandler(
                sessionmaker=sessionmaker,
                client=client,
                publisher=publisher,
                settings=settings,
                cdn=cdn,
                purchases=purchases,
            )
            domain_loops = [
                asyncio.create_task(
                    check_brought_domains_forever(sessionmaker, publisher, settings)
                )
            ]
            if settings.domain_renew_interval > 0:
                domain_loops.append(
                    asyncio.create_task(renew_forever(sessionmaker, registrar, publisher, settings))
                )
            consumer = Consumer(broker.DNS_JOBS, handler, publisher, settings.retry_delays)
            purger = Consumer(
                broker.DNS_EVENTS, CdnPurgeHandler(cdn), publisher, settings.retry_delays
            )

            async def start_purger(connection: AbstractConnection) -> None:
                await purger.start(await connection.channel(), settings.prefetch)

            sweeper = (
                asyncio.create_task(
                    sweep_forever(create_sessionmaker(engine), client, publisher, settings, cdn)
                )
                if settings.drift_interval > 0
                else None
            )
            log.info("dns service consuming", extra={"queue": broker.DNS_JOBS.name})
            # prefetch 1: one job at a time, so one writer to PowerDNS.
            await consume_until(
                stop,
                settings,
                name="dns",
                consumer=consumer,
                prefetch=1,
                grace=DRAIN_TIMEOUT,
                also=start_purger,
            )
            await purger.stop(DRAIN_TIMEOUT)
            if sweeper is not None:
                sweeper.cancel()
            for loop in domain_loops:
                loop.cancel()
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
