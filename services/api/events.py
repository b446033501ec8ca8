"""The API's view of the world: records the outcomes the other services report."""

from __future__ import annotations

from sqlalchemy import delete, select

from services.api.deployments import apply_parked, apply_report
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
    def __init__(self, sessionmaker: SessionMaker) -> None:
        self.sessionmaker = sessionmaker

    async def __call__(self, envelope: Envelope, event: Message) -> None:
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
