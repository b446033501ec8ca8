"""The PowerDNS API client against a real PowerDNS: zones, atomic PATCHes, error mapping."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from cli.devstack import procs
from services.dns.powerdns import PowerDnsClient, RRsetChange
from services.dns.records import RRset, make_rrset
from shared.errors import Permanent, Transient
from tests.dns.conftest import PowerDns


@pytest.fixture
async def zone(pdns_client: PowerDnsClient) -> AsyncIterator[str]:
    """A fresh zone name, deleted afterwards."""
    name = f"z{uuid.uuid4().hex[:10]}.test."
    yield name
    await pdns_client.delete_zone(name)


async def test_zone_lifecycle(pdns_client: PowerDnsClient, zone: str) -> None:
    assert await pdns_client.get_zone(zone) is None

    assert await pdns_client.create_zone(zone, nameservers=["ns1.sitefleet.test."]) is True
    assert await pdns_client.create_zone(zone, nameservers=["ns1.sitefleet.test."]) is False

    created = await pdns_client.get_zone(zone)
    assert created is not None
    assert (created.name, created.kind, created.account) == (zone, "Native", "sitefleet")
    assert set(created.rrsets) == {(zone, "SOA"), (zone, "NS")}
    assert created.rrsets[(zone, "SOA")].rrset.contents[0].startswith("ns1.sitefleet.test. ")

    await pdns_client.delete_zone(zone)
    assert await pdns_client.get_zone(zone) is None
    await pdns_client.delete_zone(zone)  # already gone: fine


async def test_replace_carries_the_ownership_marker(pdns_client: PowerDnsClient, zone: str) -> None:
    await pdns_client.create_zone(zone, nameservers=["ns1.sitefleet.test."])
    www = make_rrset("www." + zone, "CNAME", 300, ["edge.example.net."])
    await pdns_client.patch_rrsets(zone, [RRsetChange("REPLACE", www, owner="site=s1")])

    current = await pdns_client.get_zone(zone)
    assert current is not None
    assert current.rrsets[www.key].rrset == www
    assert current.rrsets[www.key].owner == "site=s1"

    await pdns_client.patch_rrsets(zone, [RRsetChange("DELETE", www)])
    current = await pdns_client.get_zone(zone)
    assert current is not None and www.key not in current.rrsets


async def test_a_patch_is_atomic(pdns_client: PowerDnsClient, zone: str) -> None:
    await pdns_client.create_zone(zone, nameservers=["ns1.sitefleet.test."])
    good = make_rrset("proxy." + zone, "A", 300, ["203.0.113.5"])
    bad = RRset("www." + zone, "A", 300, ("not-an-address",))

    with pytest.raises(Permanent) as caught:
        await pdns_client.patch_rrsets(
            zone, [RRsetChange("REPLACE", good, owner="x"), RRsetChange("REPLACE", bad, owner="x")]
        )

    assert caught.value.code == "dns_provider_rejected"
    assert "not-an-address" in caught.value.message  # the provider's own words
    current = await pdns_client.get_zone(zone)
    assert current is not None and good.key not in current.rrsets


async def test_a_wrong_api_key_is_rejected(http: httpx.AsyncClient, pdns: PowerDns) -> None:
    client = PowerDnsClient(http, api_url=pdns.api_url, api_key="wrong")

    with pytest.raises(Permanent) as caught:
        await client.get_zone("example.test.")
    assert caught.value.details["status"] == 401


async def test_an_unreachable_api_is_transient(http: httpx.AsyncClient) -> None:
    client = PowerDnsClient(http, api_url=f"http://127.0.0.1:{procs.free_port()}", api_key="k")

    with pytest.raises(Transient) as caught:
        await client.get_zone("example.test.")
    assert caught.value.code == "dns_provider_unavailable"
    with pytest.raises(Transient):
        await client.create_zone("example.test.", nameservers=["ns1.sitefleet.test."])
