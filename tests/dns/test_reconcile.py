"""Reconciling a site's records against a real PowerDNS and Postgres, checked with DNS
queries to the authoritative server (what `dig @127.0.0.1 -p <port>` would show)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from cli.devstack import procs
from services.dns.powerdns import PowerDnsClient, RRsetChange
from services.dns.reconcile import DnsNotVerified, apply_site, plan_site, remove_site, site_owner
from services.dns.records import make_rrset
from services.dns.settings import DnsSettings
from shared.db import SessionMaker
from shared.errors import Transient
from shared.models import DnsRecord
from tests.dns.conftest import WEB_HOSTS, Dig, PowerDns, Site, add_foreign_rrset, make_settings


async def apply(
    sessionmaker: SessionMaker, client: PowerDnsClient, site: Site, settings: DnsSettings
) -> None:
    async with sessionmaker.begin() as session:
        await apply_site(
            session,
            client,
            tenant_id=site.tenant_id,
            site_id=site.site_id,
            domain=site.domain,
            settings=settings,
        )


async def rows(sessionmaker: SessionMaker, site: Site) -> dict[tuple[str, str, str], DnsRecord]:
    async with sessionmaker() as session:
        result = await session.scalars(select(DnsRecord).where(DnsRecord.site_id == site.site_id))
        return {(r.name, r.type, r.content): r for r in result}


async def test_apply_creates_the_zone_and_serves_every_record(
    site: Site,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
    dig: Dig,
) -> None:
    assert await pdns_client.get_zone(site.zone) is None

    await apply(sessionmaker, pdns_client, site, dns_settings)

    zone = await pdns_client.get_zone(site.zone)
    assert zone is not None and zone.account == "sitefleet"
    edge = f"{site.domain.replace('.', '-')}.edge.cdn.sitefleet.test."
    media = f"{site.domain.replace('.', '-')}.media.cdn.sitefleet.test."
    proxy = await dig(f"proxy.{site.zone}", "A")
    assert proxy.get(f"proxy.{site.zone}", "A") == WEB_HOSTS
    # The apex ALIAS is answered as the addresses of the edge name (the CDN wildcard).
    apex = await dig(site.zone, "A")
    assert apex.get(site.zone, "A") == WEB_HOSTS
    assert (await dig(site.zone, "CNAME")).get(site.zone, "CNAME") == []
    assert (await dig(f"www.{site.zone}", "CNAME")).get(f"www.{site.zone}", "CNAME") == [edge]
    assert (await dig(f"media.{site.zone}", "CNAME")).get(f"media.{site.zone}", "CNAME") == [media]

    recorded = await rows(sessionmaker, site)
    assert set(recorded) == {
        (f"proxy.{site.zone}", "A", WEB_HOSTS[0]),
        (f"proxy.{site.zone}", "A", WEB_HOSTS[1]),
        (site.zone, "ALIAS", edge),
        (f"www.{site.zone}", "CNAME", edge),
        (f"media.{site.zone}", "CNAME", media),
    }
    assert {r.status for r in recorded.values()} == {"verified"}
    assert {(r.zone, r.tenant_id, r.ttl) for r in recorded.values()} == {
        (site.zone, site.tenant_id, 300)
    }


async def test_the_plan_after_an_apply_is_empty(
    site: Site,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
) -> None:
    before = await plan_site(
        pdns_client, site_id=site.site_id, domain=site.domain, settings=dns_settings
    )
    assert len(before.replace) == 4 and not before.is_empty

    await apply(sessionmaker, pdns_client, site, dns_settings)
    after = await plan_site(
        pdns_client, site_id=site.site_id, domain=site.domain, settings=dns_settings
    )

    assert after.is_empty
    assert after.replace == () and after.delete == () and after.blocked == ()
    # And applying again changes nothing.
    await apply(sessionmaker, pdns_client, site, dns_settings)
    again = await plan_site(
        pdns_client, site_id=site.site_id, domain=site.domain, settings=dns_settings
    )
    assert again.is_empty


async def test_changed_settings_replace_our_records_and_their_rows(
    site: Site,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    pdns: PowerDns,
    dns_settings: DnsSettings,
    dig: Dig,
) -> None:
    await apply(sessionmaker, pdns_client, site, dns_settings)
    moved = make_settings(pdns, web_host_addresses=["203.0.113.9"], dns_ttl=120)

    plan = await plan_site(pdns_client, site_id=site.site_id, domain=site.domain, settings=moved)
    # Every TTL changed; the proxy addresses too.
    assert {(r.name, r.type) for r in plan.replace} == {
        (site.zone, "ALIAS"),
        (f"media.{site.zone}", "CNAME"),
        (f"proxy.{site.zone}", "A"),
        (f"www.{site.zone}", "CNAME"),
    }
    await apply(sessionmaker, pdns_client, site, moved)

    answer = await dig(f"proxy.{site.zone}", "A")
    assert answer.get(f"proxy.{site.zone}", "A") == ["203.0.113.9"]
    proxy_rows = [k for k in await rows(sessionmaker, site) if k[0] == f"proxy.{site.zone}"]
    assert proxy_rows == [(f"proxy.{site.zone}", "A", "203.0.113.9")]


@pytest.mark.parametrize(
    ("label", "rtype", "content", "blocked"),
    [
        ("www", "CNAME", "somewhere-else.example.net.", ("www", "CNAME")),
        ("www", "A", "198.51.100.7", ("www", "CNAME")),
        ("", "A", "198.51.100.8", ("", "ALIAS")),
    ],
    ids=["same-type", "cname-beside-an-a", "alias-beside-an-a"],
)
async def test_a_foreign_rrset_is_left_alone_and_its_records_are_errors(
    site: Site,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    pdns: PowerDns,
    dns_settings: DnsSettings,
    dig: Dig,
    label: str,
    rtype: str,
    content: str,
    blocked: tuple[str, str],
) -> None:
    name = f"{label}.{site.zone}" if label else site.zone
    await pdns_client.create_zone(site.zone, nameservers=dns_settings.nameservers)
    await add_foreign_rrset(pdns, site.zone, name, rtype, content)

    await apply(sessionmaker, pdns_client, site, dns_settings)

    answer = await dig(name, rtype)
    assert answer.get(name, rtype) == [content]
    blocked_key = (f"{blocked[0]}.{site.zone}" if blocked[0] else site.zone, blocked[1])
    recorded = await rows(sessionmaker, site)
    errors = {k[:2]: r.error for k, r in recorded.items() if r.status == "error"}
    assert errors == {blocked_key: f"{name} {rtype} exists and is not managed by Sitefleet"}
    others = {r.status for k, r in recorded.items() if k[:2] != blocked_key}
    assert others == {"verified"}
    plan = await plan_site(
        pdns_client, site_id=site.site_id, domain=site.domain, settings=dns_settings
    )
    assert plan.is_empty
    assert [b.rrset.key for b in plan.blocked] == [blocked_key]


async def test_remove_deletes_only_our_records(
    site: Site,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    pdns: PowerDns,
    dns_settings: DnsSettings,
    dig: Dig,
) -> None:
    await pdns_client.create_zone(site.zone, nameservers=dns_settings.nameservers)
    await add_foreign_rrset(pdns, site.zone, f"mail.{site.zone}", "A", "198.51.100.25")
    await apply(sessionmaker, pdns_client, site, dns_settings)

    async with sessionmaker.begin() as session:
        deleted = await remove_site(session, pdns_client, site_id=site.site_id, domain=site.domain)

    assert len(deleted) == 4
    for name, rtype in [
        (f"proxy.{site.zone}", "A"),
        (site.zone, "A"),
        (f"www.{site.zone}", "CNAME"),
        (f"media.{site.zone}", "CNAME"),
    ]:
        assert (await dig(name, rtype)).records == {}
    assert (await dig(f"www.{site.zone}", "A")).rcode == "NXDOMAIN"
    assert (await dig(f"mail.{site.zone}", "A")).get(f"mail.{site.zone}", "A") == ["198.51.100.25"]
    assert await pdns_client.get_zone(site.zone) is not None  # it still holds mail.
    assert await rows(sessionmaker, site) == {}


async def test_remove_deletes_the_zone_we_created_once_empty(
    site: Site,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
    dig: Dig,
) -> None:
    await apply(sessionmaker, pdns_client, site, dns_settings)

    async with sessionmaker.begin() as session:
        await remove_site(session, pdns_client, site_id=site.site_id, domain=site.domain)

    assert await pdns_client.get_zone(site.zone) is None
    # No longer authoritative for it at all.
    assert (await dig(f"proxy.{site.zone}", "A")).rcode == "REFUSED"
    # Removing twice is harmless.
    async with sessionmaker.begin() as session:
        assert (
            await remove_site(session, pdns_client, site_id=site.site_id, domain=site.domain) == []
        )


async def test_another_sites_records_are_not_ours(
    site: Site,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
    dig: Dig,
) -> None:
    await apply(sessionmaker, pdns_client, site, dns_settings)
    other = Site(tenant_id=site.tenant_id, site_id=site.site_id + "x", domain=site.domain)

    async with sessionmaker.begin() as session:
        assert (
            await remove_site(session, pdns_client, site_id=other.site_id, domain=other.domain)
            == []
        )
        plan = await plan_site(
            pdns_client, site_id=other.site_id, domain=other.domain, settings=dns_settings
        )

    assert plan.is_empty and len(plan.blocked) == 4
    assert "managed by Sitefleet for another owner" in plan.blocked[0].reason
    assert (await dig(f"proxy.{site.zone}", "A")).get(f"proxy.{site.zone}", "A") == WEB_HOSTS


async def test_an_unreachable_api_is_transient(
    site: Site,
    http: httpx.AsyncClient,
    sessionmaker: SessionMaker,
    pdns: PowerDns,
) -> None:
    down = make_settings(pdns, pdns_api_url=f"http://127.0.0.1:{procs.free_port()}")
    client = PowerDnsClient.from_settings(http, down)

    with pytest.raises(Transient):
        await apply(sessionmaker, client, site, down)
    assert await rows(sessionmaker, site) == {}


async def test_records_not_served_raise_not_verified_and_stay_applied(
    site: Site,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    pdns: PowerDns,
) -> None:
    # Verification asks a port nobody answers on: the records are written but never seen.
    blind = make_settings(
        pdns,
        dns_port=procs.free_port(),
        verify_attempts=2,
        verify_timeout=0.2,
        verify_interval=0.05,
    )

    caught: DnsNotVerified | None = None
    async with sessionmaker.begin() as session:
        try:
            await apply_site(
                session,
                pdns_client,
                tenant_id=site.tenant_id,
                site_id=site.site_id,
                domain=site.domain,
                settings=blind,
            )
        except DnsNotVerified as exc:
            caught = exc

    assert isinstance(caught, Transient) and caught.code == "dns_not_verified"
    assert len(caught.details["records"]) == 4
    recorded = await rows(sessionmaker, site)
    assert len(recorded) == 5 and {r.status for r in recorded.values()} == {"applied"}
    assert all(r.error and r.error.startswith("not served yet: ") for r in recorded.values())
    # The records are in PowerDNS all the same: nothing left to change.
    plan = await plan_site(pdns_client, site_id=site.site_id, domain=site.domain, settings=blind)
    assert plan.is_empty


async def test_our_stale_rrset_of_another_type_is_replaced_in_the_same_patch(
    site: Site,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
    dig: Dig,
) -> None:
    # An earlier version of ours published www as an A; now www is a CNAME (the two
    # cannot coexist, so the DELETE must go through before the REPLACE).
    await pdns_client.create_zone(site.zone, nameservers=dns_settings.nameservers)
    old = make_rrset(f"www.{site.zone}", "A", 300, ["198.51.100.1"])
    await pdns_client.patch_rrsets(
        site.zone, [RRsetChange("REPLACE", old, owner=site_owner(site.site_id))]
    )

    plan = await plan_site(
        pdns_client, site_id=site.site_id, domain=site.domain, settings=dns_settings
    )
    assert plan.delete == (old,) and not plan.blocked
    await apply(sessionmaker, pdns_client, site, dns_settings)

    answer = await dig(f"www.{site.zone}", "A")
    assert f"www.{site.zone}" not in {name for name, rtype in answer.records if rtype == "A"}
    assert answer.get(f"www.{site.zone}", "CNAME") != []
    assert {r.status for r in (await rows(sessionmaker, site)).values()} == {"verified"}
