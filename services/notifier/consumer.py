"""Failure events in, webhook deliveries out. A delivery that fails is retried with backoff
(the consumer helper's wait queues) and, after the last step, parked: never dropped."""

from __future__ import annotations

import logging

import httpx

from services.notifier.webhook import deliver
from shared.messages import Envelope, Message

log = logging.getLogger(__name__)


class AlertDispatcher:
    def __init__(self, client: httpx.AsyncClient, urls: list[str]) -> None:
        self.client = client
        self.urls = urls

    async def __call__(self, envelope: Envelope, event: Message) -> None:
        if not self.urls:
            log.warning("no alert channel configured", extra={"type": envelope.type})
            return
        for url in self.urls:
            await deliver(self.client, url, envelope)
        log.info("alert delivered", extra={"type": envelope.type, "channels": len(self.urls)})
