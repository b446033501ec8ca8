"""The drift sweep: periodically compares every site's records at the DNS provider with
what we want, announces drift (``dns.drift``) and heals it.

Healing goes through the ``dns.jobs`` queue like any other change, so it is serialized
with removals by the one consumer (a sweep never writes to the provider itself), and the
handler skips sites that are being deleted. A zone whose provider call fails is skipped
this round; the others go on. Zones whose version (PowerDNS: SOA serial, bumped by every
API edit) is the one we last read are not read again. Before healing anything, the
fleet-wide circuit breaker (services/dns/safety.py) may halt the whole round and alert
(``dns.halted``).

DNS-01 challenge records (services/dns/acme.py) are not drift; those still there
``acme_txt_max_age`` after they were set (their clear never came) get a clear job.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select

from services.dns.cdn import CdnProvider
from services.dns.metrics import DRIFT
from services.dns.placement import placed_addresses
from services.dns.provider import DnsProvider
from services.dns.reconcile import Plan, plan_site
from services.dns.records import ACME_LABEL, zone_of
from services.dns.safety import breaker_trips
from services.dns.settings import DnsSettings
from shared.broker import Publisher
from shared.db import SessionMaker
from shared.errors import Transient
from shared.messages import (
    AcmeDnsChallengeRequested,
    DnsDrifted,
    DnsReconcileRequested,
    DnsRunHalted,
    ErrorInfo,
)
from shared.models import DnsRecord, Site
from shared.timeutil import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SitePlan:
    tenant_id: str
    site_id: str
    domain: str
    plan: Plan


async def plan_sites(
    sessionmaker: SessionMaker,
    client: DnsProvider,
    settings: DnsSettings,
    cdn: CdnProvider | None = None,
    *,
    domain: str | None = None,
    with_records_only: bool = True,
) -> tuple[list[SitePlan], dict[str, str]]:
    """Plans of every site (not being deleted), and per domain why it could not be planned
    (a failing zone never stops the others)."""
    async with sessionmaker() as session:
        query = select(Site.id, Site.tenant_id, Site.domain).where(Site.status != "deleting")
        if with_records_only:
            query = query.where(Site.id.in_(select(DnsRecord.site_id).distinct()))
        if domain is not None:
            query = query.where(Site.domain == domain)
        sites = (await session.execute(query.order_by(Site.id))).all()
        addresses = await placed_addresses(session, [s[0] for s in sites])
    plans: list[SitePlan] = []
    failed: dict[str, str] = {}
    try:  # one call tells which zones changed since we last read them
        versions = await client.zone_versions()
    except Transient:
        versions = {}
    for site_id, tenant_id, site_domain in sites:
        try:
            plan = await plan_site(
                client,
                site_id=site_id,
                domain=site_domain,
                settings=settings,
                addresses=addresses.get(site_id),
                targets=cdn.targets(site_domain) if cdn is not None else None,
                version=versions.get(zone_of(site_domain)),
            )
        except Transient as exc:
            log.warning("dns zone skipped", extra={"domain": site_domain, "error": exc.message})
            failed[site_domain] = exc.message
            continue
        plans.append(SitePlan(tenant_id, site_id, site_domain, plan))
    return plans, failed


async def halt_if_breaker_trips(
    plans: list[SitePlan], settings: DnsSettings, publisher: Publisher, *, run: str
) -> list[str] | None:
    """Emit ``dns.halted`` and return the zones when the run must not go on."""
    zones = breaker_trips([p.plan for p in plans], settings)
    if zones is None:
        return None
    message = (
        f"DNS {run} halted: it would delete records in {len(zones)} zones, more than "
        f"dns_breaker_max_zones={settings.dns_breaker_max_zones}; nothing was changed"
    )
    log.error(message, extra={"zones": zones[:20]})
    await publisher.emit(
        DnsRunHalted(
            run=run, zones=zones, error=ErrorInfo(code="dns_circuit_breaker", message=message)
        )
    )
    return zones


async def stale_challenges(
    sessionmaker: SessionMaker, settings: DnsSettings
) -> list[AcmeDnsChallengeRequested]:
    """Clear jobs for the challenge RRsets set longer than ``acme_txt_max_age`` ago."""
    if settings.acme_txt_max_age <= 0:
        return []
    cutoff = utcnow() - timedelta(seconds=settings.acme_txt_max_age)
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(Site.tenant_id, Site.id, Site.domain, DnsRecord.name)
                .join(Site, Site.id == DnsRecord.site_id)
                .where(
                    DnsRecord.type == "TXT",
                    DnsRecord.name.startswith(ACME_LABEL + ".", autoescape=True),
                )
                .group_by(Site.tenant_id, Site.id, Site.domain, DnsRecord.name)
                .having(func.max(DnsRecord.updated_at) < cutoff)
                .order_by(Site.id, DnsRecord.name)
            )
        ).all()
    return [
        AcmeDnsChallengeRequested(
            tenant_id=tenant_id,
            site_id=site_id,
            domain=domain,
            name=name,
            values=[],
            action="clear",
        )
        for tenant_id, site_id, domain, name in rows
    ]


async def sweep_once(
    sessionmaker: SessionMaker,
    client: DnsProvider,
    publisher: Publisher,
    settings: DnsSettings,
    cdn: CdnProvider | None = None,
) -> int:
    """One pass over every site with records; returns how many sites had drifted."""
    for clear in await stale_challenges(sessionmaker, settings):
        log.warning(
            "stale dns-01 challenge record; clearing it",
            extra={"site_id": clear.site_id, "record": clear.name},
        )
        await publisher.submit(clear)
    plans, _ = await plan_sites(sessionmaker, client, settings, cdn)
    drifted = [p for p in plans if not p.plan.is_empty]
    if await halt_if_breaker_trips(drifted, settings, publisher, run="drift sweep"):
        return 0
    for site in drifted:
        DRIFT.inc()
        plan = site.plan
        changes = len(plan.replace) + len(plan.delete)
        log.warning("dns drift found", extra={"site_id": site.site_id, "changes": changes})
        await publisher.emit(
            DnsDrifted(
                tenant_id=site.tenant_id,
                site_id=site.site_id,
                domain=site.domain,
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
            DnsReconcileRequested(
                tenant_id=site.tenant_id, site_id=site.site_id, domain=site.domain
            )
        )
    return len(drifted)


async def sweep_forever(
    sessionmaker: SessionMaker,
    client: DnsProvider,
    publisher: Publisher,
    settings: DnsSettings,
    cdn: CdnProvider | None = None,
) -> None:
    while True:
        await asyncio.sleep(settings.drift_interval)
        try:
            await sweep_once(sessionmaker, client, publisher, settings, cdn)
        except Transient as exc:  # the broker is down: next round
            log.warning("drift sweep skipped", extra={"error": exc.message})
        except Exception:
            log.exception("drift sweep failed")
