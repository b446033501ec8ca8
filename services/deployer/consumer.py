"""The deployer's job handler: route each decoded job to its domain function, one job per
site at a time, and publish the outcome. Ack / retry / park is ``shared.consumer``'s job:
this handler returns (done) or raises (``Transient``: retry; anything else: park)."""

from __future__ import annotations

import logging

from services.deployer.deploy import deploy
from services.deployer.fence import DatabaseFence
from services.deployer.metrics import observe_outcome
from services.deployer.release import HostTransport, check_domain
from services.deployer.settings import DeployerSettings
from shared.broker import Publisher
from shared.errors import Permanent, Unavailable
from shared.messages import (
    DeploymentProgressed,
    DeploymentReport,
    DeploymentRequested,
    Envelope,
    Message,
    SiteFilesRemoved,
    SiteRemovalRequested,
)
from shared.template_packs import TemplateCatalog

log = logging.getLogger(__name__)


class DeployerHandler:
    def __init__(
        self,
        *,
        catalog: TemplateCatalog,
        host: HostTransport,
        publisher: Publisher,
        fence: DatabaseFence,
        settings: DeployerSettings,
    ) -> None:
        self.catalog = catalog
        self.host = host
        self.publisher = publisher
        self.fence = fence
        self.settings = settings

    async def __call__(self, envelope: Envelope, message: Message) -> None:
        if isinstance(message, DeploymentRequested):
            await self.deploy(message)
        elif isinstance(message, SiteRemovalRequested):
            await self.remove_site(message)
        else:
            raise Permanent(
                f"the deployer does not handle {envelope.type!r} messages",
                code="unexpected_message",
            )

    async def deploy(self, job: DeploymentRequested) -> None:
        async with self.fence.site_lock(job.site_id):
            await deploy(
                job,
                catalog=self.catalog,
                host=self.host,
                report=self.report,
                fence=self.fence,
                settings=self.settings,
            )

    async def remove_site(self, job: SiteRemovalRequested) -> None:
        domain = check_domain(job.domain)
        async with self.fence.site_lock(job.site_id):
            await self.host.remove_site(domain)
        log.info("site files removed", extra={"site_id": job.site_id, "domain": domain})
        await self._emit(
            SiteFilesRemoved(tenant_id=job.tenant_id, site_id=job.site_id, domain=domain)
        )

    async def report(self, event: DeploymentReport) -> None:
        if isinstance(event, DeploymentProgressed):
            # Progress is for watching; losing one must not fail (and redo) a deployment.
            try:
                await self.publisher.emit(event)
            except Exception:
                log.warning("could not publish a progress event", exc_info=True)
            return
        await self._emit(event)
        observe_outcome(event)

    async def _emit(self, event: Message) -> None:
        """Publish an outcome; if the broker does not take it, redo the (idempotent) job
        later rather than park it, so the outcome is eventually announced."""
        try:
            await self.publisher.emit(event)
        except Exception as exc:
            raise Unavailable(
                f"could not publish {event.TYPE}: {type(exc).__name__}: {exc}",
                code="publish_failed",
            ) from exc
