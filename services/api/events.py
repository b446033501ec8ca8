"""The API's view of the world: records the outcomes the other services report."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete, select

from services.api.deployments import TERMINAL, apply_parked, apply_report
from services.api.domains import apply_domain_event
from shared.db import SessionMaker
from shared.messages import (
    DeploymentReport,
    DnsRecordsRemoved,
    DomainExpired,
    DomainFailed,
    DomainRegistered,
    DomainRenewed,
    DomainVerified,
    Envelope,
    JobParked,
    Message,
    SiteFilesRemoved,
)
from shared.models import Site


class EventRecorder:
    def __init__(
        self, sessionmaker: SessionMaker, on_outcome: Callable[[], None] | None = None
    ) -> None:
        self.sessionmaker = sessionmaker
        # Called after a deployment outcome is committed (wakes the rollout driver).
        self.on_outcome = on_outcome

    async def __call__(self, envelope: Envelope, event: Message) -> None:
        await self.record(event)
        finished = isinstance(event, DeploymentReport) and event.status in TERMINAL
        if self.on_outcome is not None and (finished or isinstance(event, JobParked)):
            self.on_outcome()

    async def record(self, event: Message) -> None:
        """Rollout events need no recording: the rollout tables already hold them."""
        async with self.sessionmaker.begin() as session:
            if isinstance(event, DeploymentReport):
                await apply_report(session, event)
            elif isinstance(event, JobParked) and event.job_type == "deployment.requested":
                await apply_parked(session, event)
            elif isinstance(
                event,
                DomainRegistered | DomainVerified | DomainRenewed | DomainExpired | DomainFailed,
            ) or (isinstance(event, JobParked) and event.job_type == "domain.register_requested"):
                await apply_domain_event(session, event)
            elif isinstance(event, SiteFilesRemoved | DnsRecordsRemoved):
                site = await session.scalar(
                    select(Site).where(Site.id == event.site_id).with_for_update()
                )
                if site is None:
                    return
                if isinstance(event, SiteFilesRemoved):
                    site.files_removed = True
                else:
                    site.dns_removed = True
                if site.files_removed and site.dns_removed:
                    await session.execute(delete(Site).where(Site.id == site.id))
