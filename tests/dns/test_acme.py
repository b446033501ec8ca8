"""DNS-01 challenge TXT records (issue 8): set through the DNS job handler into the real
test PowerDNS (and the Cloudflare fake), served by the authoritative server, left alone by
reconcile and the drift sweep while wanted, removed by a clear; bad names and values are
refused before anything is written."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import aio_pika
import httpx
import pytest
from sqlalchemy import delete, select, update

from services.dns.acme import AcmeChallengeRefused
from services.dns.cloudflare import CloudflareClient
from services.dns.consumer import DnsJobHandler
from services.dns.powerdns import PowerDnsClient
from services.dns.ratelimit import TokenBucket
from services.dns.reconcile import apply_site, plan_site, site_owner
from services.dns.settings import DnsSettings
from services.dns.sweep import sweep_once
from shared import broker
from shared.consumer import Consumer
from shared.db import SessionMaker
from shared.errors import Conflict
from shared.messages import AcmeDnsChallengeRequested, Envelope, JobParked, parse_payload
from shared.models import DnsRecord, Tenant
from shared.models import Site as SiteRow
from shared.timeutil import utcnow
from tests.dns.conftest import Dig, PowerDns, Site, add_foreign_rrset, make_settings, wait_until
from tests.dns.test_consumer import RETRY_DELAYS
from tests.fixtures.cloudflare_fake import FakeCloudflare
from tests.fixtures.http_fake import serve


def digest() -> str:
    """A key authorization digest as the certs service computes it (RFC 8555 §8.4)."""
    raw = hashlib.sha256(secrets.token_bytes(32)).digest()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def job(
    site: Site, action: str, values: list[str], name: str | None = None
) -> AcmeDnsChallengeRequested:
    return AcmeDnsChallengeRequested(
        tenant_id=site.tenant_id,
        site_id=site.site_id,
        domain=site.domain,
        name=name if name is not None else f"_acme-challenge.{site.domain}.",
        values=values,
        action=action,  # type: ignore[arg-type]
    )


@pytest.fixture
async def registered(site: Site, sessionmaker: SessionMaker) -> AsyncIterator[Site]:
    """The site exists in the API's tables (the handler checks tenant and domain there)."""
    async with sessionmaker.begin() as session:
        session.add(Tenant(id=site.tenant_id, name=f"t-{uuid.uuid4().hex[:8]}"))
        await session.flush()
        session.add(
            SiteRow(
                id=site.site_id,
                tenant_id=site.tenant_id,
                domain=site.domain,
                template="landing",
                template_version="1.0.0",
                params={},
                status="live",
                generation=1,
            )
        )
    yield site
    async with sessionmaker.begin() as session:
        await session.execute(delete(SiteRow).where(SiteRow.id == site.site_id))
        await session.execute(delete(Tenant).where(Tenant.id == site.tenant_id))


@pytest.fixture
def handler(
    sessionmaker: SessionMaker, pdns_client: PowerDnsClient, dns_settings: DnsSettings
) -> DnsJobHandler:
    # No event is emitted on these paths; a publisher is never reached.
    return DnsJobHandler(
        sessionmaker=sessionmaker,
        client=pdns_client,
        publisher=None,  # type: ignore[arg-type]
        settings=dns_settings,
    )


async def publish_site(
    sessionmaker: SessionMaker,
    client: PowerDnsClient | CloudflareClient,
    site: Site,
    settings: DnsSettings,
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


async def txt_rows(sessionmaker: SessionMaker, site_id: str) -> list[tuple[str, str, int, str]]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(DnsRecord).where(DnsRecord.site_id == site_id, DnsRecord.type == "TXT")
        )
        return sorted((r.name, r.content, r.ttl, r.status) for r in rows)


async def serial(pdns_client: PowerDnsClient, site: Site) -> int:
    return (await pdns_client.zone_versions())[site.zone]


async def test_set_is_served_survives_reconcile_and_sweep_and_clear_removes_it(
    registered: Site,
    handler: DnsJobHandler,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
    dig: Dig,
) -> None:
    site = registered
    name = f"_acme-challenge.{site.domain}."
    await publish_site(sessionmaker, pdns_client, site, dns_settings)
    apex, wildcard = digest(), digest()

    await handler.acme_challenge(job(site, "set", [apex, wildcard]))

    answer = await dig(name, "TXT")
    assert answer.get(name, "TXT") == sorted([f'"{apex}"', f'"{wildcard}"'])
    zone = await pdns_client.get_zone(site.zone)
    assert zone is not None
    held = zone.rrsets[(name, "TXT")]
    assert held.owner == site_owner(site.site_id) and held.rrset.ttl == 60
    assert await txt_rows(sessionmaker, site.site_id) == sorted(
        [(name, f'"{apex}"', 60, "verified"), (name, f'"{wildcard}"', 60, "verified")]
    )

    # The same set again writes nothing (PowerDNS bumps the serial on every API edit).
    before = await serial(pdns_client, site)
    await handler.acme_challenge(job(site, "set", [wildcard, apex]))
    assert await serial(pdns_client, site) == before

    # Neither the sweep nor a reconcile of the site touches it or calls it drift.
    assert (
        await plan_site(
            pdns_client, site_id=site.site_id, domain=site.domain, settings=dns_settings
        )
    ).is_empty
    await publish_site(sessionmaker, pdns_client, site, dns_settings)
    assert (await dig(name, "TXT")).get(name, "TXT") == answer.get(name, "TXT")
    assert len(await txt_rows(sessionmaker, site.site_id)) == 2

    # A clear naming one value leaves the other; a clear naming none removes the set.
    await handler.acme_challenge(job(site, "clear", [apex]))
    assert (await dig(name, "TXT")).get(name, "TXT") == [f'"{wildcard}"']
    await handler.acme_challenge(job(site, "clear", []))
    assert (await dig(name, "TXT")).get(name, "TXT") == []
    assert await txt_rows(sessionmaker, site.site_id) == []
    before = await serial(pdns_client, site)
    await handler.acme_challenge(job(site, "clear", []))  # idempotent: nothing to write
    assert await serial(pdns_client, site) == before
    # The site's own records are all still there.
    assert (await dig(f"www.{site.domain}.", "CNAME")).get(f"www.{site.domain}.", "CNAME")


async def test_the_sweep_reports_no_drift_while_a_challenge_is_set(
    registered: Site,
    handler: DnsJobHandler,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
    amqp_url: str,
    dig: Dig,
) -> None:
    site = registered
    name = f"_acme-challenge.www.{site.domain}."
    await publish_site(sessionmaker, pdns_client, site, dns_settings)
    value = digest()
    await handler.acme_challenge(job(site, "set", [value], name=name))

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await broker.declare_topology(channel, RETRY_DELAYS, dns_settings.delivery_limit)
        publisher = await broker.Publisher.open(connection)
        assert await sweep_once(sessionmaker, pdns_client, publisher, dns_settings) == 0
    assert (await dig(name, "TXT")).get(name, "TXT") == [f'"{value}"']


@pytest.mark.parametrize(
    "name",
    [
        "_acme-challenge.other-domain.test.",  # another domain
        "_acme-challenge.{domain}.evil.test.",  # not under the site
        "_acme-challenge.../{domain}.",  # path-like junk
        "../_acme-challenge.{domain}.",
        "_acme-challenge.media.{domain}.",  # the CDN's name: no certificate of ours
        "_acme-challenge.shop.{domain}.",  # not one of the site's names
        "x._acme-challenge.{domain}.",
        "{domain}.",  # the apex itself
        "_sitefleet-challenge.{domain}.",  # the domain-ownership record
    ],
)
async def test_names_that_are_not_the_sites_challenge_names_are_refused(
    registered: Site,
    handler: DnsJobHandler,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
    name: str,
) -> None:
    site = registered
    await publish_site(sessionmaker, pdns_client, site, dns_settings)
    before = await serial(pdns_client, site)

    with pytest.raises(AcmeChallengeRefused):
        await handler.acme_challenge(
            job(site, "set", [digest()], name=name.format(domain=site.domain))
        )

    assert await serial(pdns_client, site) == before
    assert await txt_rows(sessionmaker, site.site_id) == []


@pytest.mark.parametrize(
    "values",
    [
        ["short"],
        ["a" * 42 + "/"],  # not base64url
        ["a" * 44],  # too long
        ['"' + "a" * 41 + '"'],  # trying to smuggle quoting into the record
        [digest() for _ in range(5)],  # too many
        [],  # a set of nothing
    ],
)
async def test_values_that_are_not_digests_are_refused(
    registered: Site,
    handler: DnsJobHandler,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
    values: list[str],
) -> None:
    site = registered
    await publish_site(sessionmaker, pdns_client, site, dns_settings)
    before = await serial(pdns_client, site)

    with pytest.raises(AcmeChallengeRefused):
        await handler.acme_challenge(job(site, "set", values))

    assert await serial(pdns_client, site) == before
    assert await txt_rows(sessionmaker, site.site_id) == []


async def test_another_tenants_site_or_domain_is_refused(
    registered: Site,
    handler: DnsJobHandler,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
) -> None:
    site = registered
    await publish_site(sessionmaker, pdns_client, site, dns_settings)
    before = await serial(pdns_client, site)
    stranger = Site(tenant_id="tenant_other", site_id=site.site_id, domain=site.domain)
    elsewhere = Site(tenant_id=site.tenant_id, site_id=site.site_id, domain="other-domain.test")

    with pytest.raises(AcmeChallengeRefused):
        await handler.acme_challenge(job(stranger, "set", [digest()]))
    with pytest.raises(AcmeChallengeRefused):
        await handler.acme_challenge(job(elsewhere, "set", [digest()]))

    assert await serial(pdns_client, site) == before


async def test_a_customers_own_challenge_record_is_never_overwritten(
    registered: Site,
    handler: DnsJobHandler,
    pdns: PowerDns,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
    dig: Dig,
) -> None:
    site = registered
    name = f"_acme-challenge.{site.domain}."
    await publish_site(sessionmaker, pdns_client, site, dns_settings)
    await add_foreign_rrset(pdns, site.zone, name, "TXT", '"their-own-acme-client"')

    with pytest.raises(Conflict):
        await handler.acme_challenge(job(site, "set", [digest()]))
    with pytest.raises(Conflict):
        await handler.acme_challenge(job(site, "clear", []))

    assert (await dig(name, "TXT")).get(name, "TXT") == ['"their-own-acme-client"']
    assert await txt_rows(sessionmaker, site.site_id) == []


async def test_jobs_go_through_the_dns_queue_and_bad_ones_are_parked(
    registered: Site,
    sessionmaker: SessionMaker,
    pdns_client: PowerDnsClient,
    dns_settings: DnsSettings,
    amqp_url: str,
    dig: Dig,
) -> None:
    site = registered
    name = f"_acme-challenge.proxy.{site.domain}."
    await publish_site(sessionmaker, pdns_client, site, dns_settings)
    value = digest()
    connection = await broker.connect(amqp_url, name="tests-dns-acme")
    async with connection:
        channel = await connection.channel()
        await broker.declare_topology(channel, RETRY_DELAYS, dns_settings.delivery_limit)
        parked = await channel.declare_queue(exclusive=True)
        await parked.bind(broker.EVENTS_EXCHANGE, routing_key="dns.parked")
        publisher = await broker.Publisher.open(connection)
        handler = DnsJobHandler(
            sessionmaker=sessionmaker,
            client=pdns_client,
            publisher=publisher,
            settings=dns_settings,
        )
        consumer = Consumer(broker.DNS_JOBS, handler, publisher, RETRY_DELAYS)
        await consumer.start(await connection.channel(), prefetch=1)
        try:
            await publisher.submit(job(site, "set", [value], name=name))
            await wait_until(lambda: _served(dig, name), f"{name} TXT served by the test PowerDNS")
            await publisher.submit(
                job(site, "set", [digest()], name=f"_acme-challenge.{site.domain}.evil.test.")
            )
            message = await wait_until(lambda: parked.get(fail=False), "dns.parked")
            await message.ack()
            event = parse_payload(Envelope.model_validate_json(message.body))
            assert isinstance(event, JobParked)
            assert event.error.code == "acme_challenge_invalid"
        finally:
            await consumer.stop(grace=10)
    assert (await dig(name, "TXT")).get(name, "TXT") == [f'"{value}"']


async def _served(dig: Dig, name: str) -> bool:
    return bool((await dig(name, "TXT")).get(name, "TXT"))


async def test_cloudflare_challenge_records_set_left_alone_and_cleared(
    registered: Site,
    pdns: PowerDns,
    sessionmaker: SessionMaker,
) -> None:
    site = registered
    name = f"_acme-challenge.{site.domain}"
    fake = FakeCloudflare()
    with serve(fake.app()) as url:
        fake.add_zone(site.domain)
        settings = make_settings(
            pdns,
            dns_provider="cloudflare",
            cloudflare_api_url=f"{url}/client/v4",
            cloudflare_api_token=fake.token,
        )
        async with httpx.AsyncClient() as http:
            client = CloudflareClient(
                http,
                api_url=f"{url}/client/v4",
                api_token=fake.token,
                account_id=fake.account_id,
                bucket=TokenBucket(capacity=1200, rate=4),
            )
            handler = DnsJobHandler(
                sessionmaker=sessionmaker,
                client=client,
                publisher=None,  # type: ignore[arg-type]
                settings=settings,
            )
            await publish_site(sessionmaker, client, site, settings)
            value = digest()

            await handler.acme_challenge(job(site, "set", [value]))
            txt = [r for r in fake.list(site.domain) if r["type"] == "TXT"]
            assert [(r["name"], r["content"], r["ttl"], r["proxied"]) for r in txt] == [
                (name, f'"{value}"', 60, False)
            ]
            assert txt[0]["comment"] == f"managed-by sitefleet {site_owner(site.site_id)}"
            calls = len(fake.calls)
            await handler.acme_challenge(job(site, "set", [value]))  # idempotent
            assert not [c for c in fake.calls[calls:] if c[0] != "GET"]

            plan = await plan_site(
                client, site_id=site.site_id, domain=site.domain, settings=settings
            )
            assert plan.is_empty and not plan.delete
            await publish_site(sessionmaker, client, site, settings)
            assert [r["content"] for r in fake.list(site.domain) if r["type"] == "TXT"] == [
                f'"{value}"'
            ]

            await handler.acme_challenge(job(site, "clear", [value]))
            assert [r for r in fake.list(site.domain) if r["type"] == "TXT"] == []
            assert await txt_rows(sessionmaker, site.site_id) == []
            # The site's records on Cloudflare are for the site fixture's teardown (PowerDNS
            # only); forget them here.
            async with sessionmaker.begin() as session:
                await session.execute(delete(DnsRecord).where(DnsRecord.site_id == site.site_id))


async def test_the_sweep_clears_challenge_records_whose_clear_never_came(
    registered: Site,
    handler: DnsJobHandler,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
    amqp_url: str,
    dig: Dig,
) -> None:
    site = registered
    old, fresh = f"_acme-challenge.{site.domain}.", f"_acme-challenge.www.{site.domain}."
    await publish_site(sessionmaker, pdns_client, site, dns_settings)
    await handler.acme_challenge(job(site, "set", [digest()], name=old))
    await handler.acme_challenge(job(site, "set", [digest()], name=fresh))
    async with sessionmaker.begin() as session:  # set two days ago, never cleared
        await session.execute(
            update(DnsRecord)
            .where(DnsRecord.site_id == site.site_id, DnsRecord.name == old)
            .values(updated_at=utcnow() - timedelta(days=2))
        )

    connection = await broker.connect(amqp_url, name="tests-dns-acme-stale")
    async with connection:
        channel = await connection.channel()
        await broker.declare_topology(channel, RETRY_DELAYS, dns_settings.delivery_limit)
        publisher = await broker.Publisher.open(connection)
        consumer = Consumer(
            broker.DNS_JOBS,
            DnsJobHandler(
                sessionmaker=sessionmaker,
                client=pdns_client,
                publisher=publisher,
                settings=dns_settings,
            ),
            publisher,
            RETRY_DELAYS,
        )
        await consumer.start(await connection.channel(), prefetch=1)
        try:
            assert await sweep_once(sessionmaker, pdns_client, publisher, dns_settings) == 0
            await wait_until(lambda: _gone(dig, old), f"{old} TXT cleared")
        finally:
            await consumer.stop(grace=10)
    assert await _served(dig, fresh)
    assert [name for name, *_ in await txt_rows(sessionmaker, site.site_id)] == [fresh]


async def _gone(dig: Dig, name: str) -> bool:
    return not await _served(dig, name)
