"""Safety: per-zone limits stop a run before it writes; the fleet-wide circuit breaker
halts a sweep that would delete records in too many zones and alerts (``dns.halted``,
bound to the notifier). Also: ``proxy.<domain>`` follows the web hosts the site lives on."""

from __future__ import annotations

import uuid

import aio_pika
import pytest
from sqlalchemy import delete

from cli.dns import sync
from services.dns.powerdns import PowerDnsClient
from services.dns.reconcile import apply_site
from services.dns.safety import SafetyLimitExceeded
from services.dns.settings import DnsSettings
from services.dns.sweep import sweep_once
from services.notifier.fingerprint import Occurrence, interpret
from shared import broker
from shared.db import SessionMaker
from shared.errors import Conflict
from shared.messages import DnsRunHalted, Envelope, parse_payload
from shared.models import SiteHost, WebHost
from tests.dns.conftest import WEB_HOSTS, Dig, PowerDns, Site, make_settings, zone_of
from tests.dns.test_consumer import RETRY_DELAYS

V6 = "2001:db8::5"


async def _apply(
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


async def test_a_zone_run_over_its_delete_limit_writes_nothing(
    site: Site, pdns: PowerDns, pdns_client: PowerDnsClient, sessionmaker: SessionMaker, dig: Dig
) -> None:
    proxy = f"proxy.{site.domain}."
    await _apply(
        sessionmaker, pdns_client, site, make_settings(pdns, web_host_addresses=[*WEB_HOSTS, V6])
    )
    assert (await dig(proxy, "AAAA")).get(proxy, "AAAA") == [V6]

    # A settings push drops IPv6: the run would delete the AAAA set, over a limit of 0.
    strict = make_settings(pdns, dns_max_deletes_per_zone=0)
    with pytest.raises(SafetyLimitExceeded, match="would delete 1 record sets"):
        await _apply(sessionmaker, pdns_client, site, strict)
    assert (await dig(proxy, "AAAA")).get(proxy, "AAAA") == [V6]
    # Within the limit the same change goes through.
    await _apply(sessionmaker, pdns_client, site, make_settings(pdns))
    assert (await dig(proxy, "AAAA")).get(proxy, "AAAA") == []


async def test_a_zone_run_changing_most_of_what_we_own_is_stopped(
    site: Site, pdns: PowerDns, pdns_client: PowerDnsClient, sessionmaker: SessionMaker, dig: Dig
) -> None:
    await _apply(sessionmaker, pdns_client, site, make_settings(pdns))
    # New hosts and new CDN names at once: all 4 RRsets we own would change.
    moved = make_settings(
        pdns,
        web_host_addresses=["198.51.100.1"],
        cdn_edge_pattern="{slug}.other.cdn.sitefleet.test",
        cdn_media_pattern="{slug}.media2.cdn.sitefleet.test",
        dns_max_change_ratio=0.5,
    )
    with pytest.raises(SafetyLimitExceeded, match="would change the answers of 4 of the 4"):
        await _apply(sessionmaker, pdns_client, site, moved)
    proxy = f"proxy.{site.domain}."
    assert (await dig(proxy, "A")).get(proxy, "A") == sorted(WEB_HOSTS)


async def test_a_sweep_that_would_delete_across_the_fleet_halts_and_alerts(
    fleet: list[Site],
    pdns: PowerDns,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    amqp_url: str,
    database_url: str,
    dig: Dig,
) -> None:
    for made in fleet:
        await _apply(
            sessionmaker,
            pdns_client,
            made,
            make_settings(pdns, web_host_addresses=[*WEB_HOSTS, V6]),
        )
    # A bad settings push: no IPv6 any more, so every zone's AAAA set would go.
    bad = make_settings(pdns, dns_breaker_max_zones=2)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await broker.declare_topology(channel, RETRY_DELAYS, bad.delivery_limit)
        alerts = await channel.declare_queue(exclusive=True)
        await alerts.bind(broker.EVENTS_EXCHANGE, routing_key="dns.halted")
        jobs = await channel.declare_queue(broker.DNS_JOBS.name, passive=True)
        queued_before = jobs.declaration_result.message_count
        publisher = await broker.Publisher.open(connection)

        assert await sweep_once(sessionmaker, pdns_client, publisher, bad) == 0

        message = await alerts.get(timeout=5)
        await message.ack()
        envelope = Envelope.model_validate_json(message.body)
        event = parse_payload(envelope)
        assert isinstance(event, DnsRunHalted)
        assert {zone_of(m.domain) for m in fleet} <= set(event.zones)
        assert event.error.code == "dns_circuit_breaker"
        # The notifier takes it as an alert (it is bound to its queue).
        assert "dns.halted" in broker.NOTIFIER_EVENTS.bindings
        assert isinstance(interpret(envelope), Occurrence)
        jobs = await channel.declare_queue(broker.DNS_JOBS.name, passive=True)
        assert jobs.declaration_result.message_count == queued_before  # no heal queued
    # `sitefleet dns sync` of every site is a fleet run too: refused, nothing queued.
    cli_settings = make_settings(
        pdns, dns_breaker_max_zones=2, database_url=database_url, amqp_url=amqp_url
    )
    with pytest.raises(Conflict, match="halted: the sync would delete records in"):
        await sync(cli_settings, None)
    for made in fleet:  # nothing deleted
        proxy = f"proxy.{made.domain}."
        assert (await dig(proxy, "AAAA")).get(proxy, "AAAA") == [V6]


async def test_proxy_records_follow_the_web_hosts_the_site_lives_on(
    site: Site, pdns: PowerDns, pdns_client: PowerDnsClient, sessionmaker: SessionMaker, dig: Dig
) -> None:
    proxy = f"proxy.{site.domain}."
    settings = make_settings(pdns)
    await _apply(sessionmaker, pdns_client, site, settings)
    assert (await dig(proxy, "A")).get(proxy, "A") == sorted(WEB_HOSTS)  # no placement yet

    host_ids = [f"host_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    async with sessionmaker.begin() as session:  # what the deployer writes on placement
        for host_id, addresses in zip(
            host_ids, [["198.51.100.7"], ["198.51.100.8", "2001:db8::8"]], strict=True
        ):
            session.add(
                WebHost(
                    id=host_id,
                    name=host_id,
                    kind="local",
                    sites_root="/srv/sites",
                    http_host="127.0.0.1",
                    http_port=80,
                    public_addresses=addresses,
                )
            )
        await session.flush()
        session.add_all([SiteHost(site_id=site.site_id, host_id=h) for h in host_ids])
    try:
        await _apply(sessionmaker, pdns_client, site, settings)
        assert (await dig(proxy, "A")).get(proxy, "A") == ["198.51.100.7", "198.51.100.8"]
        assert (await dig(proxy, "AAAA")).get(proxy, "AAAA") == ["2001:db8::8"]
    finally:
        async with sessionmaker.begin() as session:
            await session.execute(delete(SiteHost).where(SiteHost.site_id == site.site_id))
            await session.execute(delete(WebHost).where(WebHost.id.in_(host_ids)))
