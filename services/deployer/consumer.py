"""The deployer's job handler: route each decoded job to its domain function, one job per
site at a time, and publish the outcome. Ack / retry / park is ``shared.consumer``'s job:
this handler returns (done) or raises (``Transient``: retry; anything else: park)."""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from services.deployer.deploy import deploy
from services.deployer.fence import DatabaseFence
from services.deployer.hosts import HostRegistry
from services.deployer.metrics import observe_outcome
from services.deployer.nginx import remove_rules
from services.deployer.packs import PublishedPacks
from services.deployer.release import HostTransport, check_domain
from services.deployer.settings import DeployerSettings
from services.deployer.target import Target
from services.deployer.tls import check_acme_challenge, load_certificate, on_every_host
from shared.broker import EVENTS_EXCHANGE, Publisher
from shared.errors import Permanent, Unavailable
from shared.messages import (
    AcmeHttpChallengeRequested,
    CertificateInstalled,
    CertificateInstallRequested,
    DeploymentCancelRequested,
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
        hosts: HostRegistry | None = None,
        published: PublishedPacks | None = None,
    ) -> None:
        self.catalog = catalog
        # The published hashes packs are checked against before a build (None: unchecked).
        self.published = published
        self.host = host
        # The registered web hosts; None (or none registered): ``host`` alone.
        self.hosts = hosts
        self.publisher = publisher
        self.fence = fence
        self.settings = settings
        # Deployments running in this process, so a cancel request can stop them.
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()

    async def __call__(self, envelope: Envelope, message: Message) -> None:
        if isinstance(message, DeploymentRequested):
            await self.deploy(message)
        elif isinstance(message, SiteRemovalRequested):
            await self.remove_site(message)
        elif isinstance(message, AcmeHttpChallengeRequested):
            await self.acme_challenge(message)
        elif isinstance(message, CertificateInstallRequested):
            await self.install_certificate(message)
        else:
            raise Permanent(
                f"the deployer does not handle {envelope.type!r} messages",
                code="unexpected_message",
            )

    async def deploy(self, job: DeploymentRequested) -> None:
        async with self.fence.site_lock(job.site_id):
            targets = await self._targets_for(job)
            task = asyncio.create_task(
                deploy(
                    job,
                    catalog=self.catalog,
                    targets=targets,
                    report=self.report,
                    fence=self.fence,
                    settings=self.settings,
                    verify_pack=self.published.check if self.published else None,
                )
            )
            self._running[job.deployment_id] = task
            try:
                await task
            except asyncio.CancelledError:
                if job.deployment_id not in self._cancelled or not task.cancelled():
                    raise  # we are shutting down: the broker redelivers the job
                # Cancelled on request (the API already recorded it): the job is done.
                log.info("deployment cancelled", extra={"deployment_id": job.deployment_id})
            finally:
                self._running.pop(job.deployment_id, None)
                self._cancelled.discard(job.deployment_id)

    async def _targets_for(self, job: DeploymentRequested) -> list[Target]:
        local = [Target.local(self.host, self.settings)]
        # A fenced job touches no host: do not place a deleted or superseded site anywhere.
        if self.hosts is None or await self.fence(job) is not None:
            return local
        return await self.hosts.targets_for_deploy(job.site_id)

    async def on_cancel_request(self, message: AbstractIncomingMessage) -> None:
        """A broadcast: kill the deployment if this process runs it (its build's process
        group dies with the task), else ignore it."""
        async with message.process(ignore_processed=True):
            try:
                request = DeploymentCancelRequested.model_validate(
                    Envelope.model_validate_json(message.body).payload
                )
            except ValueError:
                return
            task = self._running.get(request.deployment_id)
            if task is not None and not task.done():
                self._cancelled.add(request.deployment_id)
                task.cancel()

    async def listen_for_cancels(self, connection: AbstractConnection) -> None:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(EVENTS_EXCHANGE, routing_key=DeploymentCancelRequested.TYPE)
        await queue.consume(self.on_cancel_request)

    async def remove_site(self, job: SiteRemovalRequested) -> None:
        domain = check_domain(job.domain)
        async with self.fence.site_lock(job.site_id):
            if self.hosts is None:
                targets = [Target.local(self.host, self.settings)]
            else:
                targets = await self.hosts.targets_for_removal(job.site_id)

            async def remove_from(host: HostTransport) -> None:
                await host.remove_site(domain)  # stops serving at once, rules or not
                await remove_rules(host, domain)

            results = await asyncio.gather(
                *(remove_from(t.host) for t in targets), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result  # removal is idempotent: the retry redoes every host
            if self.hosts is not None:
                await self.hosts.forget_site(job.site_id)
        log.info(
            "site files removed",
            extra={
                "site_id": job.site_id,
                "domain": domain,
                "hosts": [t.name for t in targets],
            },
        )
        await self._emit(
            SiteFilesRemoved(tenant_id=job.tenant_id, site_id=job.site_id, domain=domain)
        )

    async def _site_targets(self, site_id: str) -> list[Target]:
        if self.hosts is None:
            return [Target.local(self.host, self.settings)]
        return await self.hosts.targets_of_site(site_id)

    async def acme_challenge(self, job: AcmeHttpChallengeRequested) -> None:
        """Serve (or stop serving) an HTTP-01 answer on every web host of the site. Not under
        the site's lock: it touches no file a deployment does, and the CA will not wait for
        a long deployment to finish."""
        domain = check_domain(job.domain)
        publish = job.action == "publish"
        check_acme_challenge(job.token, job.key_authorization if publish else None)
        targets = await self._site_targets(job.site_id)
        if publish and not targets:
            raise Permanent(
                f"site {job.site_id} is on no web host: nowhere to serve the ACME challenge",
                code="site_not_placed",
            )
        if publish:
            await on_every_host(
                targets,
                "publishing the ACME challenge",
                lambda t: t.host.publish_challenge(domain, job.token, job.key_authorization),
            )
        else:
            await on_every_host(
                targets,
                "withdrawing the ACME challenge",
                lambda t: t.host.withdraw_challenge(domain, job.token),
            )
        log.info(
            "ACME challenge published" if publish else "ACME challenge withdrawn",
            extra={"site_id": job.site_id, "domain": domain, "hosts": [t.name for t in targets]},
        )

    async def install_certificate(self, job: CertificateInstallRequested) -> None:
        """Write the certificate to every web host of the site, under the site's lock (so it
        does not interleave with a deployment or removal of the site), then announce it."""
        domain = check_domain(job.domain)
        async with self.fence.site_lock(job.site_id):
            files = await load_certificate(
                self.fence.engine, job.certificate_id, site_id=job.site_id, domain=domain
            )
            if files is None:
                return  # nothing to install (logged): the job is done
            targets = await self._site_targets(job.site_id)
            if not targets:
                raise Permanent(
                    f"site {job.site_id} is on no web host: nothing to install the certificate on",
                    code="site_not_placed",
                )
            await on_every_host(
                targets,
                f"installing certificate {job.certificate_id}",
                lambda t: t.host.install_certificate(domain, files.names, files.pem),
            )
        log.info(
            "certificate installed",
            extra={
                "site_id": job.site_id,
                "domain": domain,
                "certificate_id": job.certificate_id,
                "names": files.names,
                "serial": f"{files.serial:x}",
                "hosts": [t.name for t in targets],
            },
        )
        await self._emit(
            CertificateInstalled(
                site_id=job.site_id,
                domain=domain,
                certificate_id=job.certificate_id,
                host_ids=[t.host_id for t in targets],
            )
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
