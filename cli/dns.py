"""`sitefleet dns plan|sync`: see what reconciling a site would change, or ask for it.

``sync`` of every site is a fleet run: it plans every zone first, and when the changes
would delete records in more zones than the circuit breaker allows it queues nothing and
alerts (``dns.halted``) instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import aio_pika
import httpx

from services.dns.cdn import open_cdn_provider
from services.dns.provider import open_dns_provider
from services.dns.records import RRset
from services.dns.settings import DnsSettings
from services.dns.sweep import SitePlan, halt_if_breaker_trips, plan_sites
from shared import broker
from shared.db import create_engine, create_sessionmaker
from shared.domains import normalize_domain
from shared.errors import Conflict, NotFound, Transient
from shared.messages import DnsReconcileRequested


async def _plans(settings: DnsSettings, domain: str | None) -> list[SitePlan]:
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        async with httpx.AsyncClient() as http:
            plans, failed = await plan_sites(
                create_sessionmaker(engine),
                open_dns_provider(http, settings),
                settings,
                open_cdn_provider(http, settings),
                domain=normalize_domain(domain) if domain is not None else None,
                with_records_only=False,
            )
    finally:
        await engine.dispose()
    if domain is not None and failed:
        raise Transient(f"{domain}: {next(iter(failed.values()))}")
    if domain is not None and not plans:
        raise NotFound(f"no site on {domain!r}", code="site_not_found")
    return plans


def _rrset(rrset: RRset) -> dict[str, Any]:
    return dataclasses.asdict(rrset)


async def plan(settings: DnsSettings, domain: str) -> dict[str, Any]:
    """The changes a reconcile would make now, without making them."""
    [site] = await _plans(settings, domain)
    result = site.plan
    return {
        "zone": result.zone,
        "site_id": site.site_id,
        "replace": [_rrset(r) for r in result.replace],
        "delete": [_rrset(r) for r in result.delete],
        "blocked": [{**_rrset(b.rrset), "reason": b.reason} for b in result.blocked],
        "empty": result.is_empty,
    }


async def sync(
    settings: DnsSettings,
    domain: str | None,
    *,
    on_total: Callable[[int], None] = lambda total: None,
    on_site: Callable[[str], None] = lambda domain: None,
) -> list[str]:
    """Queue a reconcile job for one site or every site; returns their domains. Every
    site: raises Conflict (and alerts) when the circuit breaker halts the run.
    ``on_total`` hears the count first, ``on_site`` each domain once its job is confirmed."""
    plans = await _plans(settings, domain)
    on_total(len(plans))
    connection = await aio_pika.connect(
        settings.broker_urls[0], client_properties={"connection_name": "cli"}
    )
    async with connection:
        publisher = await broker.Publisher.open(connection)
        if domain is None:
            zones = await halt_if_breaker_trips(plans, settings, publisher, run="sync of all sites")
            if zones:
                raise Conflict(
                    f"halted: the sync would delete records in {len(zones)} zones (more than "
                    f"dns_breaker_max_zones={settings.dns_breaker_max_zones}); nothing queued",
                    code="dns_circuit_breaker",
                )
        for site in plans:
            await publisher.submit(
                DnsReconcileRequested(
                    tenant_id=site.tenant_id, site_id=site.site_id, domain=site.domain
                )
            )
            on_site(site.domain)
    return [site.domain for site in plans]
