"""Run the notifier: ``python -m services.notifier``."""

from __future__ import annotations

import asyncio
import signal

import httpx

from services.notifier.consumer import AlertDispatcher
from services.notifier.settings import NotifierSettings
from shared import broker
from shared.consumer import Consumer
from shared.logs import configure_logging


async def main() -> None:
    settings = NotifierSettings()
    configure_logging("notifier", settings.log_level)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    connection = await broker.connect(settings.amqp_url, name="notifier")
    async with connection, httpx.AsyncClient(timeout=settings.webhook_timeout) as client:
        channel = await connection.channel()
        await broker.declare_topology(channel, settings.retry_delays, settings.delivery_limit)
        publisher = await broker.Publisher.open(connection)
        consumer = Consumer(
            broker.NOTIFIER_EVENTS,
            AlertDispatcher(client, settings.ops_webhook_urls),
            publisher,
            settings.retry_delays,
            emit_parked=False,
        )
        await consumer.start(channel, settings.prefetch)
        await stop.wait()
        await consumer.stop(settings.webhook_timeout + 5)


if __name__ == "__main__":
    asyncio.run(main())
