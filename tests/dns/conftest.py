"""DNS service fixtures: a private PowerDNS for the session, settings pointing at it, the
PowerDNS client, a sessionmaker on the session database, and one fresh site per test."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import httpx
import pytest
from sqlalchemy import delete

from cli.devstack import procs
from cli.devstack.pdns import start_pdns
from services.dns.local_cdn import ensure_local_cdn_zone
from services.dns.powerdns import PowerDnsClient
from services.dns.reconcile import remove_site
from services.dns.records import zone_of
from services.dns.settings import DnsSettings
from shared.db import SessionMaker, create_engine, create_sessionmaker
from shared.models import DnsRecord, Tenant
from shared.models import Site as SiteRow

CDN_ZONE = "cdn.sitefleet.test"
# Documentation addresses (RFC 5737): an answer containing them came from our records.
WEB_HOSTS = ["203.0.113.5", "203.0.113.6"]


@dataclass(frozen=True)
class PowerDns:
    state_dir: Path
    dns_port: int
    api_port: int
    api_key: str

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@dataclass(frozen=True)
class Site:
    tenant_id: str
    site_id: str
    domain: str

    @property
    def zone(self) -> str:
        return zone_of(self.domain)


@dataclass(frozen=True)
class Answer:
    rcode: str
    # (owner name, type) -> sorted record texts, answer section only
    records: dict[tuple[str, str], list[str]]

    def get(self, name: str, rtype: str) -> list[str]:
        return self.records.get((name, rtype), [])


@pytest.fixture(scope="session")
def pdns() -> Iterator[PowerDns]:
    state = Path(tempfile.mkdtemp(prefix="sitefleet-dns-pdns-"))
    server = PowerDns(
        state_dir=state,
        dns_port=procs.free_port(),
        api_port=procs.free_port(),
        api_key=secrets.token_hex(16),
    )
    proc = start_pdns(
        state, dns_port=server.dns_port, api_port=server.api_port, api_key=server.api_key
    )
    yield server
    procs.stop(proc)
    shutil.rmtree(state, ignore_errors=True)


def make_settings(pdns: PowerDns, **overrides: object) -> DnsSettings:
    values: dict[str, object] = {
        "pdns_api_url": pdns.api_url,
        "pdns_api_key": pdns.api_key,
        "pdns_server_id": "localhost",
        "dns_host": "127.0.0.1",
        "dns_port": pdns.dns_port,
        "alias_resolver": "",
        "dns_ttl": 300,
        "nameservers": ["ns1.sitefleet.test.", "ns2.sitefleet.test."],
        "local_cdn_zone": CDN_ZONE,
        "web_host_addresses": WEB_HOSTS,
        "cdn_edge_pattern": "{slug}.edge.cdn.sitefleet.test",
        "cdn_media_pattern": "{slug}.media.cdn.sitefleet.test",
        "verify_attempts": 20,
        "verify_interval": 0.1,
        "verify_timeout": 2.0,
        # These tests publish sites without domains; tests/dns/test_domains.py enforces.
        "domain_ownership": "off",
    }
    values.update(overrides)
    return DnsSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def dns_settings(pdns: PowerDns) -> DnsSettings:
    return make_settings(pdns)


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture(scope="session")
async def pdns_client(http: httpx.AsyncClient, dns_settings: DnsSettings) -> PowerDnsClient:
    client = PowerDnsClient.from_settings(http, dns_settings)
    await ensure_local_cdn_zone(client, dns_settings)
    return client


@pytest.fixture(scope="session")
async def sessionmaker(database_url: str) -> AsyncIterator[SessionMaker]:
    engine = create_engine(database_url, application_name="tests-dns", pool_size=2)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def site(pdns_client: PowerDnsClient, sessionmaker: SessionMaker) -> AsyncIterator[Site]:
    """A fresh site on its own domain; whatever the test left in PowerDNS or the database
    for it is removed afterwards."""
    suffix = uuid.uuid4().hex[:10]
    made = Site(tenant_id=f"tenant_{suffix}", site_id=f"site_{suffix}", domain=f"s{suffix}.test")
    yield made
    async with sessionmaker.begin() as session:
        await remove_site(session, pdns_client, site_id=made.site_id, domain=made.domain)
        await session.execute(delete(DnsRecord).where(DnsRecord.site_id == made.site_id))
    await pdns_client.delete_zone(made.zone)


@pytest.fixture
async def fleet(
    pdns_client: PowerDnsClient, sessionmaker: SessionMaker
) -> AsyncIterator[list[Site]]:
    """Three sites registered in the API's tables (one tenant), removed afterwards."""
    sites = []
    async with sessionmaker.begin() as session:
        tenant = f"tenant_{uuid.uuid4().hex[:10]}"
        session.add(Tenant(id=tenant, name=f"t-{tenant}"))
        await session.flush()
        for _ in range(3):
            suffix = uuid.uuid4().hex[:10]
            made = Site(tenant_id=tenant, site_id=f"site_{suffix}", domain=f"f{suffix}.test")
            sites.append(made)
            session.add(
                SiteRow(
                    id=made.site_id,
                    tenant_id=tenant,
                    domain=made.domain,
                    template="landing",
                    template_version="1.0.0",
                    params={},
                    status="live",
                    generation=1,
                )
            )
    yield sites
    async with sessionmaker.begin() as session:
        for made in sites:
            await remove_site(session, pdns_client, site_id=made.site_id, domain=made.domain)
            await session.execute(delete(SiteRow).where(SiteRow.id == made.site_id))
            await pdns_client.delete_zone(zone_of(made.domain))
        await session.execute(delete(Tenant).where(Tenant.id == sites[0].tenant_id))


async def add_foreign_rrset(pdns: PowerDns, zone: str, name: str, rtype: str, content: str) -> None:
    """What a customer or an admin does by hand: an RRset without our marker comment."""
    async with httpx.AsyncClient() as http:
        response = await http.patch(
            f"{pdns.api_url}/api/v1/servers/localhost/zones/{zone}",
            headers={"X-API-Key": pdns.api_key},
            json={
                "rrsets": [
                    {
                        "name": name,
                        "type": rtype,
                        "ttl": 60,
                        "changetype": "REPLACE",
                        "records": [{"content": content, "disabled": False}],
                    }
                ]
            },
        )
        response.raise_for_status()


async def wait_until(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 30) -> Any:
    """Poll until ``probe`` returns something truthy; the timeout only bounds a broken run."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await probe()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return result


@pytest.fixture
def dig(pdns: PowerDns) -> Callable[[str, str], Awaitable[Answer]]:
    """``dig @127.0.0.1 -p <pdns> <name> <type>``: the authoritative answer, no recursion."""

    async def query(name: str, rtype: str) -> Answer:
        request = dns.message.make_query(name, rtype)
        request.flags &= ~dns.flags.RD
        response = await dns.asyncquery.udp(request, "127.0.0.1", port=pdns.dns_port, timeout=3)
        records: dict[tuple[str, str], list[str]] = {}
        for rrset in response.answer:
            key = (rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype))
            records[key] = sorted(r.to_text() for r in rrset)
        return Answer(rcode=dns.rcode.to_text(response.rcode()), records=records)

    return query


Dig = Callable[[str, str], Awaitable[Answer]]
