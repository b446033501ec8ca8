"""Run the notifier: ``python -m services.notifier``."""

from __future__ import annotations

import asyncio

import httpx

from services.notifier.consumer import AlertDispatcher
from services.notifier.settings import NotifierSettings
from shared import broker
from shared.consumer import Consumer
from shared.logs import configure_logging
from shared.service import consume_until, stop_event


async def main() -> None:
    settings = NotifierSettings()
    configure_logging("notifier", settings.log_level)
    stop = stop_event()
    async with httpx.AsyncClient(timeout=settings.webhook_timeout) as client:
        consumer = Consumer(
            broker.NOTIFIER_EVENTS,
            AlertDispatcher(client, settings.ops_webhook_urls),
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
            grace=settings.webhook_timeout + 5,
        )


if __name__ == "__main__":
    asyncio.run(main())
