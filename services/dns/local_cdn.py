"""Dev/test only: a fake CDN zone on our own PowerDNS, so edge and media hostnames resolve
offline (``*.<zone> A <web host addresses>``; ALIAS targets are resolved by the server itself).
"""

from __future__ import annotations

import logging

from services.dns.powerdns import PowerDnsClient
from services.dns.reconcile import compute_plan
from services.dns.records import fqdn, make_rrset
from services.dns.settings import DnsSettings

log = logging.getLogger(__name__)

OWNER = "local-cdn"


async def ensure_local_cdn_zone(client: PowerDnsClient, settings: DnsSettings) -> None:
    """Create the zone and its wildcard if missing or stale; leave others' records alone."""
    zone_name = fqdn(settings.local_cdn_zone)
    await client.create_zone(
        zone_name, nameservers=settings.nameservers, negative_ttl=settings.dns_ttl
    )
    wildcard = make_rrset(
        "*." + zone_name, "A", settings.dns_ttl, list(settings.web_host_addresses)
    )
    zone = await client.get_zone(zone_name)
    plan = compute_plan(zone_name, [wildcard], zone.rrsets if zone else {}, OWNER)
    for blocked in plan.blocked:
        log.warning("local CDN record not written", extra={"reason": blocked.reason})
    await client.patch_rrsets(zone_name, plan.changes(OWNER))
