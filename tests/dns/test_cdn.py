"""CDN providers: bunny.net (a pull zone per site, pulling from ``proxy.<domain>``, with
the site's hostnames; the apex/www records point at it) against a fake of its documented
API; and the purge that follows a live deployment (``deployment.succeeded`` on
``dns.events``), of the changed paths or of the whole site."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import httpx
import pytest

from services.dns.bunny import BunnyCdn
from services.dns.powerdns import PowerDnsClient
from services.dns.purge import CdnPurgeHandler
from services.dns.reconcile import apply_site
from shared import broker
from shared.consumer import Consumer
from shared.db import SessionMaker
from shared.messages import DeploymentSucceeded, Envelope, parse_payload
from tests.dns.conftest import Dig, PowerDns, Site, make_settings
from tests.dns.test_consumer import RETRY_DELAYS
from tests.fixtures.bunny_fake import FakeBunny
from tests.fixtures.http_fake import serve


@dataclass
class Bunny:
    fake: FakeBunny
    cdn: BunnyCdn


@pytest.fixture
async def bunny() -> AsyncIterator[Bunny]:
    fake = FakeBunny()
    with serve(fake.app()) as url:
        async with httpx.AsyncClient() as http:
            # The fake CDN zone on our PowerDNS answers for *.cdn.sitefleet.test, so ALIAS
            # targets resolve offline (DESIGN.md §5).
            yield Bunny(
                fake,
                BunnyCdn(http, api_url=url, api_key=fake.api_key, cdn_domain="cdn.sitefleet.test"),
            )


async def test_bunny_pull_zone_per_site_and_records_pointing_at_it(
    site: Site,
    bunny: Bunny,
    pdns: PowerDns,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dig: Dig,
) -> None:
    await bunny.cdn.ensure_site(site.domain)
    await bunny.cdn.ensure_site(site.domain)  # idempotent: no second zone, no error
    name = bunny.cdn.pull_zone_name(site.domain)
    [zone] = bunny.fake.zones.values()
    assert zone["Name"] == name
    assert zone["OriginUrl"] == f"http://proxy.{site.domain}"
    assert {h["Value"] for h in zone["Hostnames"]} == {
        f"{name}.b-cdn.net",
        site.domain,
        f"www.{site.domain}",
    }

    async with sessionmaker.begin() as session:
        await apply_site(
            session,
            pdns_client,
            tenant_id=site.tenant_id,
            site_id=site.site_id,
            domain=site.domain,
            settings=make_settings(pdns),
            targets=bunny.cdn.targets(site.domain),
        )
    www = f"www.{site.domain}."
    assert (await dig(www, "CNAME")).get(www, "CNAME") == [f"{name}.cdn.sitefleet.test."]

    await bunny.cdn.remove_site(site.domain)
    assert bunny.fake.zones == {}


async def test_a_live_deployment_purges_its_changed_paths(bunny: Bunny, amqp_url: str) -> None:
    domain = "purge.example"
    await bunny.cdn.ensure_site(domain)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await broker.declare_topology(channel, RETRY_DELAYS, 10)
        publisher = await broker.Publisher.open(connection)
        purger = Consumer(broker.DNS_EVENTS, CdnPurgeHandler(bunny.cdn), publisher, RETRY_DELAYS)
        await purger.start(await connection.channel(), prefetch=4)
        try:
            common = {
                "deployment_id": "dep_1",
                "tenant_id": "tenant_1",
                "site_id": "site_1",
                "domain": domain,
                "generation": 1,
                "status": "live",
            }
            await publisher.emit(DeploymentSucceeded(**common, changed_paths=["/", "/about/"]))
            await _wait(lambda: len(bunny.fake.purged) == 4)
            assert sorted(bunny.fake.purged) == [
                f"https://{domain}/",
                f"https://{domain}/about/",
                f"https://www.{domain}/",
                f"https://www.{domain}/about/",
            ]
            # An event from a deployer that does not know the paths: the whole site.
            raw = DeploymentSucceeded(**common).envelope().model_dump(mode="json")
            del raw["payload"]["changed_paths"]
            old = Envelope.model_validate(raw)
            assert isinstance(parse_payload(old), DeploymentSucceeded)
            await publisher.publish_envelope(broker.EVENTS_EXCHANGE, old)
            await _wait(lambda: len(bunny.fake.purged) == 6)
            assert sorted(bunny.fake.purged[4:]) == [
                f"https://{domain}/*",
                f"https://www.{domain}/*",
            ]
        finally:
            await purger.stop(grace=5)


async def _wait(done: object, timeout: float = 15) -> None:
    assert callable(done)
    deadline = asyncio.get_running_loop().time() + timeout
    while not done():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


def test_static_is_the_default_cdn_and_pure_settings() -> None:
    from services.dns.cdn import StaticCdn
    from services.dns.settings import DnsSettings

    settings = DnsSettings(cdn_edge_pattern="{slug}.edge.example.net")
    assert settings.cdn_provider == "static"
    assert (
        StaticCdn(settings).targets("Shop.Example.com").edge == "shop-example-com.edge.example.net."
    )


def test_cloudflare_cdn_needs_cloudflare_dns() -> None:
    from pydantic import ValidationError

    from services.dns.settings import DnsSettings

    with pytest.raises(ValidationError, match="needs dns_provider=cloudflare"):
        DnsSettings(cdn_provider="cloudflare")
