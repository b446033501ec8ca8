"""`sitefleet dns plan|sync`: see what reconciling a site would change, or ask for it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import aio_pika
import httpx
from sqlalchemy import select

from services.dns.powerdns import PowerDnsClient
from services.dns.reconcile import plan_site
from services.dns.records import RRset
from services.dns.settings import DnsSettings
from shared import broker
from shared.db import create_engine, create_sessionmaker
from shared.domains import normalize_domain
from shared.errors import NotFound
from shared.messages import DnsReconcileRequested
from shared.models import Site


async def _sites(settings: DnsSettings, domain: str | None) -> list[Site]:
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            query = select(Site).where(Site.status != "deleting").order_by(Site.domain)
            if domain is not None:
                query = query.where(Site.domain == normalize_domain(domain))
            found = list(await session.scalars(query))
    finally:
        await engine.dispose()
    if domain is not None and not found:
        raise NotFound(f"no site on {domain!r}", code="site_not_found")
    return found


def _rrset(rrset: RRset) -> dict[str, Any]:
    return dataclasses.asdict(rrset)


async def plan(settings: DnsSettings, domain: str) -> dict[str, Any]:
    """The changes a reconcile would make now, without making them."""
    [site] = await _sites(settings, domain)
    async with httpx.AsyncClient() as http:
        result = await plan_site(
            PowerDnsClient.from_settings(http, settings),
            site_id=site.id,
            domain=site.domain,
            settings=settings,
        )
    return {
        "zone": result.zone,
        "site_id": site.id,
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
    """Queue a reconcile job for one site or every site; returns their domains.
    ``on_total`` hears the count first, ``on_site`` each domain once its job is confirmed."""
    sites = await _sites(settings, domain)
    on_total(len(sites))
    connection = await aio_pika.connect(
        settings.broker_urls[0], client_properties={"connection_name": "cli"}
    )
    async with connection:
        publisher = await broker.Publisher.open(connection)
        for site in sites:
            await publisher.submit(
                DnsReconcileRequested(tenant_id=site.tenant_id, site_id=site.id, domain=site.domain)
            )
            on_site(site.domain)
    return [site.domain for site in sites]
