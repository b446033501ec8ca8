"""The ``cloudflare`` DNS and CDN providers against a local fake of the documented
Cloudflare API v4 (tests/fixtures/cloudflare_fake.py): paginated reads, batches of at most
200 with a one-by-one fallback, 429 + Retry-After, flattened apex CNAME, proxied records
with automatic TTL, ownership through record comments, purge by URL and host."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aio_pika
import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from services.dns.cloudflare import CloudflareCdn, CloudflareClient
from services.dns.provider import RRsetChange
from services.dns.ratelimit import TokenBucket
from services.dns.reconcile import apply_site, plan_site, site_owner
from services.dns.records import make_rrset
from services.dns.settings import DnsSettings
from services.dns.sweep import sweep_once
from shared import broker
from shared.db import SessionMaker
from shared.errors import NotFound
from shared.messages import DnsDrifted, Envelope, parse_payload
from shared.models import DnsRecord
from tests.dns.conftest import PowerDns, Site, make_settings
from tests.dns.test_consumer import RETRY_DELAYS
from tests.fixtures.cloudflare_fake import FakeCloudflare
from tests.fixtures.http_fake import serve


@dataclass
class Cloudflare:
    fake: FakeCloudflare
    api_url: str


@pytest.fixture
def cloudflare() -> Iterator[Cloudflare]:
    fake = FakeCloudflare()
    with serve(fake.app()) as url:
        yield Cloudflare(fake, f"{url}/client/v4")


def cf_settings(pdns: PowerDns, cloudflare: Cloudflare, **overrides: object) -> DnsSettings:
    return make_settings(
        pdns,
        dns_provider="cloudflare",
        cloudflare_api_url=cloudflare.api_url,
        cloudflare_api_token=cloudflare.fake.token,
        **overrides,
    )


@pytest.fixture
async def cf_client(cloudflare: Cloudflare) -> AsyncIterator[CloudflareClient]:
    async with httpx.AsyncClient() as http:
        yield CloudflareClient(
            http,
            api_url=cloudflare.api_url,
            api_token=cloudflare.fake.token,
            account_id=cloudflare.fake.account_id,
            bucket=TokenBucket(capacity=1200, rate=4),
        )


async def _rows(sessionmaker: SessionMaker, site_id: str) -> list[tuple[str, str, str, str]]:
    async with sessionmaker() as session:
        rows = await session.scalars(select(DnsRecord).where(DnsRecord.site_id == site_id))
        return sorted((r.name, r.type, r.content, r.status) for r in rows)


async def test_site_records_on_cloudflare_apex_flattened_foreign_records_untouched(
    site: Site,
    cloudflare: Cloudflare,
    cf_client: CloudflareClient,
    pdns: PowerDns,
    sessionmaker: SessionMaker,
) -> None:
    fake = cloudflare.fake
    fake.add_zone(site.domain)
    # A customer's own records, more than one page of them (the fake pages by 3).
    foreign = [
        fake.add_record(site.domain, type="TXT", name=site.domain, content="v=spf1 -all"),
        fake.add_record(site.domain, type="A", name=f"shop.{site.domain}", content="192.0.2.7"),
        fake.add_record(site.domain, type="MX", name=site.domain, content=f"mx.{site.domain}"),
    ]
    settings = cf_settings(pdns, cloudflare)
    async with sessionmaker.begin() as session:
        result = await apply_site(
            session,
            cf_client,
            tenant_id=site.tenant_id,
            site_id=site.site_id,
            domain=site.domain,
            settings=settings,
        )
    assert not result.blocked
    held = {(r["name"], r["type"]): r for r in fake.list(site.domain)}
    apex = held[(site.domain, "CNAME")]  # flattened by Cloudflare; no ALIAS type there
    assert apex["content"] == f"{site.domain.replace('.', '-')}.edge.cdn.sitefleet.test"
    assert apex["comment"] == f"managed-by sitefleet {site_owner(site.site_id)}"
    assert apex["proxied"] is False and apex["ttl"] == 300
    assert sorted(r["content"] for r in fake.list(site.domain) if r["type"] == "A") == [
        "192.0.2.7",
        "203.0.113.5",
        "203.0.113.6",
    ]
    for record in foreign:  # untouched, still without our comment
        assert held[(record["name"], record["type"])] == record

    # Read back through every page, the plan right after the apply is empty.
    again = await plan_site(cf_client, site_id=site.site_id, domain=site.domain, settings=settings)
    assert again.is_empty and not again.blocked
    assert ("GET", f"/client/v4/zones/{fake.zone_id(site.domain)}/dns_records") in fake.calls
    rows = await _rows(sessionmaker, site.site_id)
    assert rows and {status for *_, status in rows} == {"verified"}
    assert (site.zone, "CNAME") in {(name, rtype) for name, rtype, *_ in rows}


async def test_cloudflare_cdn_proxies_the_site_and_purges_by_url_and_host(
    site: Site,
    cloudflare: Cloudflare,
    cf_client: CloudflareClient,
    pdns: PowerDns,
    sessionmaker: SessionMaker,
) -> None:
    fake = cloudflare.fake
    fake.add_zone(site.domain)
    settings = cf_settings(pdns, cloudflare, cdn_provider="cloudflare")
    cdn = CloudflareCdn(cf_client, settings)
    async with sessionmaker.begin() as session:
        await apply_site(
            session,
            cf_client,
            tenant_id=site.tenant_id,
            site_id=site.site_id,
            domain=site.domain,
            settings=settings,
            targets=cdn.targets(site.domain),
        )
    held = {(r["name"], r["type"]): r for r in fake.list(site.domain)}
    for name in (site.domain, f"www.{site.domain}", f"media.{site.domain}"):
        record = held[(name, "CNAME")]
        assert (record["content"], record["proxied"], record["ttl"]) == (
            f"proxy.{site.domain}",
            True,
            1,  # automatic: what Cloudflare keeps for proxied records
        )
    assert held[(f"proxy.{site.domain}", "A")]["proxied"] is False
    # TTL 1 is read back as what we asked for: nothing to change.
    again = await plan_site(
        cf_client,
        site_id=site.site_id,
        domain=site.domain,
        settings=settings,
        targets=cdn.targets(site.domain),
    )
    assert again.is_empty

    await cdn.purge(site.domain, ["/", "/about/"])
    await cdn.purge(site.domain, None)
    assert fake.purges == [
        {
            "zone": site.domain,
            "files": [
                f"https://{site.domain}/",
                f"https://{site.domain}/about/",
                f"https://www.{site.domain}/",
                f"https://www.{site.domain}/about/",
            ],
        },
        {"zone": site.domain, "hosts": [site.domain, f"www.{site.domain}"]},
    ]


def _metric(name: str, provider: str) -> float:
    return REGISTRY.get_sample_value(name, {"provider": provider}) or 0.0


async def test_429_with_retry_after_is_waited_out_then_the_call_succeeds(
    cloudflare: Cloudflare, cf_client: CloudflareClient
) -> None:
    fake = cloudflare.fake
    fake.add_zone("throttled.test")
    fake.add_record("throttled.test", type="A", name="throttled.test", content="192.0.2.1")
    before = _metric("sitefleet_dns_rate_limited_total", "cloudflare")
    fake.throttle(2)
    zone = await cf_client.get_zone("throttled.test")
    assert zone is not None
    assert zone.rrsets[("throttled.test.", "A")].rrset.contents == ("192.0.2.1",)
    assert fake.throttled == 2
    assert _metric("sitefleet_dns_rate_limited_total", "cloudflare") == before + 2


async def test_one_invalid_record_in_a_batch_fails_alone(
    cloudflare: Cloudflare, cf_client: CloudflareClient
) -> None:
    fake = cloudflare.fake
    zone = "batch.test."
    fake.add_zone(zone)
    good_a = make_rrset(f"a.{zone}", "A", 300, ["192.0.2.1"])
    bad = make_rrset(f"bad.{zone}", "A", 10, ["192.0.2.2"])  # TTL 10: Cloudflare refuses it
    good_cname = make_rrset(f"www.{zone}", "CNAME", 300, [f"a.{zone}"])
    errors = await cf_client.apply_changes(
        zone, [RRsetChange("REPLACE", r, owner="site=s1") for r in (good_a, bad, good_cname)]
    )
    assert list(errors) == [bad.key]
    assert "TTL must be between 60 and 86400" in errors[bad.key]
    assert [(r["name"], r["type"]) for r in fake.list(zone)] == [
        ("a.batch.test", "A"),
        ("www.batch.test", "CNAME"),
    ]
    assert fake.batch_sizes == [3]  # the batch was tried, then the records one by one


async def test_changes_go_in_batches_of_200_and_are_read_back_across_pages(
    cloudflare: Cloudflare, cf_client: CloudflareClient
) -> None:
    fake = cloudflare.fake
    fake.max_per_page = 100
    zone = "many.test."
    fake.add_zone(zone)
    addresses = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(250)]
    many = make_rrset(f"proxy.{zone}", "A", 300, addresses)
    assert await cf_client.apply_changes(zone, [RRsetChange("REPLACE", many, owner="o")]) == {}
    assert fake.batch_sizes == [200, 50]
    read = await cf_client.get_zone(zone)
    assert read is not None
    held = read.rrsets[many.key]
    assert (held.rrset, held.owner) == (
        make_rrset(many.name, "A", 300, addresses, proxied=False),
        "o",
    )

    # Shrinking the set deletes only what is no longer wanted (240 deletes: two batches).
    fewer = make_rrset(many.name, "A", 300, addresses[:10])
    assert await cf_client.apply_changes(zone, [RRsetChange("REPLACE", fewer, owner="o")]) == {}
    assert fake.batch_sizes[2:] == [200, 40]
    assert sorted(r["content"] for r in fake.list(zone)) == sorted(addresses[:10])


async def test_zones_are_created_on_first_use_only_with_an_account(
    cloudflare: Cloudflare, cf_client: CloudflareClient
) -> None:
    assert await cf_client.create_zone("fresh.test.", nameservers=[]) is True
    assert await cf_client.create_zone("fresh.test.", nameservers=[]) is False
    assert await cf_client.get_zone("fresh.test.") is not None
    cf_client.account_id = ""
    with pytest.raises(NotFound, match="not in the Cloudflare account"):
        await cf_client.create_zone("other.test.", nameservers=[])


def test_a_429_pauses_the_whole_account_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(capacity=2, rate=1.0, clock=lambda: now[0])
    assert bucket.wait_time() == 0
    bucket.tokens = 0
    assert bucket.wait_time() == pytest.approx(1.0)
    bucket.pause(30)
    assert bucket.wait_time() == pytest.approx(30.0)
    now[0] = 30.0
    assert bucket.wait_time() == 0  # refilled while paused


async def test_a_failing_zone_does_not_stop_the_sweep_of_the_others(
    fleet: list[Site],
    cloudflare: Cloudflare,
    cf_client: CloudflareClient,
    pdns: PowerDns,
    sessionmaker: SessionMaker,
    amqp_url: str,
) -> None:
    fake = cloudflare.fake
    settings = cf_settings(pdns, cloudflare)
    for made in fleet:
        fake.add_zone(made.domain)
        async with sessionmaker.begin() as session:
            await apply_site(
                session,
                cf_client,
                tenant_id=made.tenant_id,
                site_id=made.site_id,
                domain=made.domain,
                settings=settings,
            )
    broken, drifted, clean = fleet
    fake.failing.add(fake.zone_id(broken.domain))
    www = next(r for r in fake.list(drifted.domain) if r["name"] == f"www.{drifted.domain}")
    del fake.records[fake.zone_id(drifted.domain)][www["id"]]  # deleted by hand

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await broker.declare_topology(channel, RETRY_DELAYS, settings.delivery_limit)
        drift = await channel.declare_queue(exclusive=True)
        await drift.bind(broker.EVENTS_EXCHANGE, routing_key="dns.drift")
        publisher = await broker.Publisher.open(connection)
        fresh = CloudflareClient(  # a new process: nothing cached
            cf_client.http,
            api_url=cloudflare.api_url,
            api_token=fake.token,
            bucket=TokenBucket(capacity=1200, rate=4),
        )
        assert await sweep_once(sessionmaker, fresh, publisher, settings) == 1
        message = await drift.get(timeout=5)
        await message.ack()
        event = parse_payload(Envelope.model_validate_json(message.body))
        assert isinstance(event, DnsDrifted) and event.site_id == drifted.site_id
    assert clean.site_id != drifted.site_id
