"""Run the certs service: ``python -m services.certs``.

Consumes ``certs.jobs`` (ACME orders; several at once, one per site at a time thanks to the
per-site advisory lock) and ``certs.events``, and sweeps for renewals, retries and expiry
warnings every ``SITEFLEET_CERT_SWEEP_INTERVAL`` seconds. With no
``SITEFLEET_ACME_DIRECTORY_URL`` it runs but orders nothing (the dev stack's default).
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from aio_pika.abc import AbstractConnection

from services.certs.consumer import CertEventHandler, CertJobHandler
from services.certs.lifecycle import CertLifecycle, sweep_forever
from services.certs.orders import CertOrders
from services.certs.settings import CertsSettings
from shared import broker
from shared.consumer import Consumer
from shared.db import create_engine, create_sessionmaker
from shared.logs import configure_logging
from shared.metrics import serve_metrics
from shared.service import consume_until, stop_event

log = logging.getLogger("services.certs")

# Seconds a running order may take to finish after SIGTERM (SITEFLEET_CERTS_SHUTDOWN_GRACE's
# default): an order cut short is handed back, its row ``requested``, and redelivered.
DRAIN_TIMEOUT = CertsSettings.model_fields["certs_shutdown_grace"].default


async def main() -> None:
    settings = CertsSettings()
    configure_logging("certs", settings.log_level)
    stop = stop_event()
    serve_metrics(settings.metrics_host, settings.metrics_port)
    engine = create_engine(
        settings.database_url,
        application_name="sitefleet-certs",
        pool_size=min(4, settings.db_pool_size),
    )
    try:
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
            publisher = broker.Publisher()
            sessionmaker = create_sessionmaker(engine)
            orders = CertOrders(
                sessionmaker=sessionmaker, publisher=publisher, settings=settings, http=http
            )
            lifecycle = CertLifecycle(
                sessionmaker=sessionmaker, publisher=publisher, settings=settings
            )
            jobs = Consumer(
                broker.CERTS_JOBS, CertJobHandler(orders), publisher, settings.retry_delays
            )
            events = Consumer(
                broker.CERTS_EVENTS, CertEventHandler(lifecycle), publisher, settings.retry_delays
            )

            async def start_events(connection: AbstractConnection) -> None:
                await events.start(await connection.channel(), settings.prefetch)

            sweeper = (
                asyncio.create_task(sweep_forever(lifecycle, settings.cert_sweep_interval))
                if settings.cert_sweep_interval > 0
                else None
            )
            if not orders.enabled:
                log.warning("ACME is off: set SITEFLEET_ACME_DIRECTORY_URL to issue certificates")
            log.info(
                "certs service consuming",
                extra={
                    "queue": broker.CERTS_JOBS.name,
                    "directory": settings.acme_directory_url or None,
                    "challenge": settings.challenge,
                },
            )
            await consume_until(
                stop,
                settings,
                name="certs",
                consumer=jobs,
                prefetch=settings.prefetch,
                grace=settings.certs_shutdown_grace,
                also=start_events,
            )
            await events.stop(settings.certs_shutdown_grace)
            if sweeper is not None:
                sweeper.cancel()
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
