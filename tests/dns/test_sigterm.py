"""``python -m services.dns`` stopped with SIGTERM in the middle of a burst of
``dns.reconcile_requested`` jobs against a real PowerDNS: it finishes the job in hand and
exits 0; no zone is left half-written (a new zone is created with its records in one POST,
an existing one changed in one atomic PATCH) and ``dns_records`` agrees with PowerDNS for
every site; after a restart every site's records are applied and verified, nothing was
lost, failed or parked."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections import defaultdict

import httpx
import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import select

from services.dns.powerdns import PowerDnsClient
from services.dns.provider import RRsetChange
from services.dns.reconcile import site_owner
from services.dns.records import make_rrset, zone_of
from shared import broker
from shared.db import SessionMaker, create_engine, create_sessionmaker
from shared.messages import DnsReconcileRequested
from shared.models import DnsRecord
from shared.settings import CommonSettings
from tests.e2e.helpers import query
from tests.fixtures.platform import NAMESERVERS, PlatformFactory, wait_until

pytestmark = pytest.mark.slow

SITES = 40
STOP_TIMEOUT = 60.0  # bounds how long a broken drain takes to show (not a timing assertion)
# A record the site owned before: the reconcile of a site whose zone exists deletes it and
# writes the four it needs, in one PATCH.
STALE = ("old", "A", "192.0.2.7")


def wanted(zone: str) -> set[tuple[str, str]]:
    """The RRsets a site owns once reconciled (one web host address: one proxy A)."""
    return {
        (f"proxy.{zone}", "A"),
        (zone, "ALIAS"),
        (f"www.{zone}", "CNAME"),
        (f"media.{zone}", "CNAME"),
    }


async def owned_rrsets(client: PowerDnsClient, site_id: str, zone: str) -> set[tuple[str, str]]:
    found = await client.get_zone(zone)
    if found is None:
        return set()
    return {key for key, rrset in found.rrsets.items() if rrset.owner == site_owner(site_id)}


async def record_rows(sessionmaker: SessionMaker, site_ids: list[str]) -> dict[str, set[str]]:
    """Each site's ``dns_records`` statuses (a site without rows is absent)."""
    async with sessionmaker() as session:
        rows = await session.execute(
            select(DnsRecord.site_id, DnsRecord.status).where(DnsRecord.site_id.in_(site_ids))
        )
    found: dict[str, set[str]] = defaultdict(set)
    for site_id, status in rows:
        found[site_id].add(status)
    return found


async def test_sigterm_mid_burst_finishes_the_job_in_hand_and_loses_none(
    platforms: PlatformFactory,
) -> None:
    platform = await platforms.start("dnssigterm", services=())
    engine = create_engine(platform.database_url, application_name="tests", pool_size=1)
    sessionmaker = create_sessionmaker(engine)
    connection = await broker.connect(platform.amqp_url, name="tests-dns-sigterm")
    channel = await connection.channel()
    await broker.declare_topology(
        channel,
        json.loads(platform.env["SITEFLEET_RETRY_DELAYS"]),
        CommonSettings().delivery_limit,
    )
    bad_news = await channel.declare_queue(exclusive=True)
    for key in ("dns.failed", "dns.parked"):
        await bad_news.bind(broker.EVENTS_EXCHANGE, routing_key=key)
    http = httpx.AsyncClient()
    pdns = PowerDnsClient(http, api_url=platform.pdns_api_url, api_key=platform.pdns_api_key)
    run = uuid.uuid4().hex[:8]
    sites = {f"site_{run}_{n:02d}": f"s{n:02d}-{run}.sigterm.test" for n in range(SITES)}
    zones = {site_id: zone_of(domain) for site_id, domain in sites.items()}

    def stale(site_id: str) -> set[tuple[str, str]]:
        return {(f"{STALE[0]}.{zones[site_id]}", STALE[1])} if _existing(site_id) else set()

    def check_zones_and_rows(
        owned: dict[str, set[tuple[str, str]]], rows: dict[str, set[str]]
    ) -> set[str]:
        """The sites fully reconciled; every other site untouched (PowerDNS and rows)."""
        done = set()
        for site_id, keys in owned.items():
            if keys == wanted(zones[site_id]):
                assert rows.get(site_id) == {"verified"}, (site_id, rows.get(site_id))
                done.add(site_id)
            else:  # as the test left it: the zone whole in its old state, no rows
                assert keys == stale(site_id), (site_id, keys)
                assert site_id not in rows, (site_id, rows[site_id])
        return done

    async def state() -> tuple[dict[str, set[tuple[str, str]]], dict[str, set[str]]]:
        owned = {s: await owned_rrsets(pdns, s, zones[s]) for s in sites}
        return owned, await record_rows(sessionmaker, list(sites))

    try:
        # Half the sites already have a zone, holding a record they no longer need.
        for site_id in sites:
            if _existing(site_id):
                old = make_rrset(f"{STALE[0]}.{zones[site_id]}", STALE[1], 300, [STALE[2]])
                created = await pdns.create_zone(
                    zones[site_id],
                    nameservers=NAMESERVERS,
                    changes=[RRsetChange("REPLACE", old, owner=site_owner(site_id))],
                )
                assert created
        publisher = await broker.Publisher.open(connection)
        for site_id, domain in sites.items():
            await publisher.submit(
                DnsReconcileRequested(tenant_id=f"ten_{run}", site_id=site_id, domain=domain)
            )

        platform.start_service("dns", {"SITEFLEET_VERIFY_INTERVAL": "0.1"})

        async def some_verified() -> bool:
            rows = await record_rows(sessionmaker, list(sites))
            return sum(1 for s in rows.values() if s == {"verified"}) >= 6

        await wait_until(some_verified, timeout=60, what="the first sites to be verified")
        proc = platform.procs.pop("dns")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        log = platform.log_tail("dns", 400)
        assert code == 0, log
        assert "still in hand" not in log
        done = check_zones_and_rows(*await state())
        assert 6 <= len(done) < SITES, len(done)
        # Every job not finished is back in the queue (none in hand, none dropped).
        assert await depth(connection, broker.DNS_JOBS.name) == SITES - len(done)

        platform.start_service("dns", {"SITEFLEET_VERIFY_INTERVAL": "0.1"})

        async def all_verified() -> bool:
            rows = await record_rows(sessionmaker, list(sites))
            return len(rows) == SITES and all(s == {"verified"} for s in rows.values())

        await wait_until(all_verified, timeout=60, what="every site's records verified")
        assert check_zones_and_rows(*await state()) == set(sites)
        for site_id in sites:  # and PowerDNS answers them
            answer = await _query_a(platform.dns_port, f"proxy.{zones[site_id]}")
            assert answer == ["127.0.0.1"], (site_id, answer)

        await asyncio.sleep(0.5)  # a late failure would be published by now
        assert await bad_news.get(no_ack=True, fail=False) is None
        assert await depth(connection, broker.DNS_JOBS.parked) == 0
        assert await depth(connection, broker.DNS_JOBS.name) == 0
    finally:
        for name in list(platform.procs):
            platform.stop_service(name)
        for zone in zones.values():
            await pdns.delete_zone(zone)
        await http.aclose()
        await channel.close()
        await connection.close()
        await engine.dispose()


async def depth(connection: AbstractRobustConnection, name: str) -> int:
    """The messages ready in queue ``name`` now. On a channel of its own: a robust channel
    answers a passive declare of a queue it declared before from its cache (stale)."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await channel.close()


def _existing(site_id: str) -> bool:
    return int(site_id.rsplit("_", 1)[1]) % 2 == 0


async def _query_a(dns_port: int, name: str) -> list[str]:
    rcode, answers = await query(dns_port, name, "A")
    assert rcode == "NOERROR", (name, rcode)
    return answers
