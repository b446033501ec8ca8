"""The CDN purge after a deployment: ``deployment.succeeded`` (queue ``dns.events``) ->
purge the changed paths of the site (all of it when the event does not say which).

Outcomes: purged -> ack; a CDN API error that may pass (Transient) -> the retry ladder;
any other event type on the queue -> ack, nothing to do.
"""

from __future__ import annotations

import logging

from services.dns.cdn import CdnProvider
from shared.messages import DeploymentSucceeded, Envelope, Message

log = logging.getLogger(__name__)


class CdnPurgeHandler:
    def __init__(self, cdn: CdnProvider) -> None:
        self.cdn = cdn

    async def __call__(self, envelope: Envelope, payload: Message) -> None:
        if not isinstance(payload, DeploymentSucceeded):
            return
        await self.cdn.purge(payload.domain, payload.changed_paths)
        log.info(
            "cdn purged",
            extra={
                "domain": payload.domain,
                "cdn": self.cdn.name,
                "paths": "all" if payload.changed_paths is None else len(payload.changed_paths),
            },
        )
