"""The drift sweep: periodically compares every site's records in PowerDNS with what we
want, announces drift (``dns.drift``) and heals it.

Healing goes through the ``dns.jobs`` queue like any other change, so it is serialized
with removals by the one consumer (a sweep never writes PowerDNS itself), and the handler
skips sites that are being deleted.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select

from services.dns.metrics import DRIFT
from services.dns.powerdns import PowerDnsClient
from services.dns.reconcile import plan_site
from services.dns.settings import DnsSettings
from shared.broker import Publisher
from shared.db import SessionMaker
from shared.errors import Transient
from shared.messages import DnsDrifted, DnsReconcileRequested, ErrorInfo
from shared.models import DnsRecord, Site

log = logging.getLogger(__name__)


async def sweep_once(
    sessionmaker: SessionMaker,
    client: PowerDnsClient,
    publisher: Publisher,
    settings: DnsSettings,
) -> int:
    """One pass over every site with records; returns how many sites had drifted."""
    async with sessionmaker() as session:
        sites = (
            await session.execute(
                select(Site.id, Site.tenant_id, Site.domain)
                .where(
                    Site.status != "deleting",
                    Site.id.in_(select(DnsRecord.site_id).distinct()),
                )
                .order_by(Site.id)
            )
        ).all()
    drifted = 0
    for site_id, tenant_id, domain in sites:
        plan = await plan_site(client, site_id=site_id, domain=domain, settings=settings)
        if plan.is_empty:
            continue
        drifted += 1
        DRIFT.inc()
        changes = len(plan.replace) + len(plan.delete)
        log.warning("dns drift found", extra={"site_id": site_id, "changes": changes})
        await publisher.emit(
            DnsDrifted(
                tenant_id=tenant_id,
                site_id=site_id,
                domain=domain,
                changes=changes,
                blocked=len(plan.blocked),
                error=ErrorInfo(
                    code="dns_drift",
                    message=f"{changes} record set(s) differed from what Sitefleet applied; "
                    "healing them",
                ),
            )
        )
        await publisher.submit(
            DnsReconcileRequested(tenant_id=tenant_id, site_id=site_id, domain=domain)
        )
    return drifted


async def sweep_forever(
    sessionmaker: SessionMaker,
    client: PowerDnsClient,
    publisher: Publisher,
    settings: DnsSettings,
) -> None:
    while True:
        await asyncio.sleep(settings.drift_interval)
        try:
            await sweep_once(sessionmaker, client, publisher, settings)
        except Transient as exc:  # PowerDNS or the broker is down: next round
            log.warning("drift sweep skipped", extra={"error": exc.message})
        except Exception:
            log.exception("drift sweep failed")
