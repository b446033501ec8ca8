"""The certs service's handlers: decoded message -> domain call (acks, retries and parking
are shared/consumer.py's job).

    certs.jobs    cert.requested          -> CertOrders.request (an ACME order, if needed)
    certs.events  deployment.succeeded    -> ask for a certificate if the site has none valid
                  cert.installed          -> check it is served, mark installed, cert.issued
                  site.files_removed      -> forget the site's certificates
"""

from __future__ import annotations

from services.certs.lifecycle import CertLifecycle
from services.certs.orders import CertOrders
from shared.errors import Permanent
from shared.messages import (
    CertificateInstalled,
    CertificateRequested,
    DeploymentSucceeded,
    Envelope,
    Message,
    SiteFilesRemoved,
)


class CertJobHandler:
    def __init__(self, orders: CertOrders) -> None:
        self.orders = orders

    async def __call__(self, envelope: Envelope, payload: Message) -> None:
        if not isinstance(payload, CertificateRequested):
            raise Permanent(f"the certs service does not handle {envelope.type}")
        await self.orders.request(payload)


class CertEventHandler:
    def __init__(self, lifecycle: CertLifecycle) -> None:
        self.lifecycle = lifecycle

    async def __call__(self, envelope: Envelope, payload: Message) -> None:
        if isinstance(payload, DeploymentSucceeded):
            await self.lifecycle.on_deployed(payload)
        elif isinstance(payload, CertificateInstalled):
            await self.lifecycle.on_installed(payload)
        elif isinstance(payload, SiteFilesRemoved):
            await self.lifecycle.on_files_removed(payload)
