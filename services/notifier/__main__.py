"""Run the notifier: ``python -m services.notifier``."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client import start_http_server

from services.notifier.channels import ops_channels
from services.notifier.consumer import EventIntake
from services.notifier.courier import Courier
from services.notifier.grouping import Timers
from services.notifier.loops import run_courier, run_scheduler
from services.notifier.ratelimit import Buckets
from services.notifier.settings import NotifierSettings
from services.notifier.transports import SmtpServer
from shared import broker
from shared.consumer import Consumer
from shared.db import create_engine, create_sessionmaker
from shared.logs import configure_logging
from shared.service import consume_until, stop_event

# Seconds the events in hand get to be recorded after SIGTERM (the rest are redelivered);
# the courier finishes its deliveries in flight meanwhile (each bounded by its timeout).
DRAIN_TIMEOUT = 10.0


async def main() -> None:
    settings = NotifierSettings()
    configure_logging("notifier", settings.log_level)
    stop = stop_event()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    engine = create_engine(
        settings.database_url,
        application_name="sitefleet-notifier",
        pool_size=settings.db_pool_size,
    )
    sessionmaker = create_sessionmaker(engine)
    timers = Timers.of_seconds(
        settings.group_wait, settings.group_interval, settings.repeat_interval
    )
    wake = asyncio.Event()  # new deliveries committed
    ops = ops_channels(settings.ops_webhook_urls, settings.ops_webhook_secret)
    async with httpx.AsyncClient(timeout=settings.webhook_timeout) as client:
        courier = Courier(
            sessionmaker,
            ops=ops,
            client=client,
            smtp=SmtpServer(
                settings.smtp_host, settings.smtp_port, settings.smtp_from, settings.smtp_timeout
            ),
            buckets=Buckets(settings.channel_rates, settings.channel_bursts),
            backoff=settings.delivery_backoff,
            unhealthy_after=settings.unhealthy_after,
            allow_private_targets=settings.allow_private_targets,
        )
        loops = [
            asyncio.create_task(
                run_scheduler(
                    stop,
                    sessionmaker,
                    timers,
                    ops,
                    poll_interval=settings.poll_interval,
                    batch=settings.scheduler_batch,
                    dedupe_window=settings.dedupe_window,
                    wake=wake,
                )
            ),
            asyncio.create_task(
                run_courier(
                    stop,
                    courier,
                    workers=settings.delivery_workers,
                    poll_interval=settings.delivery_poll_interval,
                    wake=wake,
                )
            ),
        ]
        consumer = Consumer(
            broker.NOTIFIER_EVENTS,
            EventIntake(sessionmaker, timers),
            broker.Publisher(),
            settings.retry_delays,
            emit_parked=False,
        )
        await consume_until(
            stop,
            settings,
            name="notifier",
            consumer=consumer,
            prefetch=settings.prefetch,
            grace=DRAIN_TIMEOUT,
        )
        await asyncio.gather(*loops)
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
