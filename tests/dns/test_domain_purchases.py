"""Buying domains through the DNS service's job handler, on a real RabbitMQ (the shared
consumer's retry ladder) and PostgreSQL, against the Name.com fake; and the ownership gate
that holds a site's records back until its domain is its tenant's."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aio_pika.abc import AbstractQueue
from sqlalchemy import delete, select

from services.dns.consumer import DnsJobHandler
from services.dns.domains import DomainPurchases
from services.dns.powerdns import PowerDnsClient
from services.dns.settings import DnsSettings
from shared import broker
from shared.consumer import Consumer
from shared.db import SessionMaker
from shared.messages import DnsReconcileRequested, DomainRegisterRequested
from shared.models import DnsRecord, Domain, RegistrarOrder, Tenant
from shared.registrar.namecom import NameComRegistrar
from tests.dns.conftest import PowerDns, Site, make_settings, wait_until
from tests.fixtures.namecom import FakeNameCom

RETRY_DELAYS = [0.2, 0.2, 0.2]
OUR_NAMESERVERS = ["ns1.sitefleet.test.", "ns2.sitefleet.test."]


class Events:
    """What the handler publishes under ``domain.*``, as (type, payload)."""

    def __init__(self, queue: AbstractQueue) -> None:
        self.queue = queue
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def about(self, domain: str) -> list[tuple[str, dict[str, Any]]]:
        while (message := await self.queue.get(fail=False)) is not None:
            await message.ack()
            envelope = json.loads(message.body)
            self.seen.append((envelope["type"], envelope["payload"]))
        return [(t, p) for t, p in self.seen if p.get("domain") == domain]


@dataclass
class Running:
    publisher: broker.Publisher
    events: Events
    fake: FakeNameCom


@pytest.fixture
def fake() -> Iterator[FakeNameCom]:
    server = FakeNameCom().start()
    yield server
    server.close()


async def _run(
    amqp_url: str,
    sessionmaker: SessionMaker,
    pdns_client: PowerDnsClient,
    settings: DnsSettings,
    fake: FakeNameCom,
) -> AsyncIterator[Running]:
    connection = await broker.connect(amqp_url, name="tests-dns-domains")
    async with connection, httpx.AsyncClient() as http:
        channel = await connection.channel()
        await broker.declare_topology(channel, RETRY_DELAYS, settings.delivery_limit)
        events_queue = await channel.declare_queue(
            f"tests-domains-{uuid.uuid4().hex[:8]}", exclusive=True, auto_delete=True
        )
        await events_queue.bind(broker.EVENTS_EXCHANGE, routing_key="domain.*")
        publisher = await broker.Publisher.open(connection)
        registrar = NameComRegistrar(
            http, base_url=fake.url, username=fake.username, token=fake.token, timeout=0.5
        )
        handler = DnsJobHandler(
            sessionmaker=sessionmaker,
            client=pdns_client,
            publisher=publisher,
            settings=settings,
            purchases=DomainPurchases(
                sessionmaker=sessionmaker,
                registrar=registrar,
                publisher=publisher,
                settings=settings,
            ),
        )
        consume_channel = await connection.channel()
        consumer = Consumer(broker.DNS_JOBS, handler, publisher, RETRY_DELAYS)
        await consumer.start(consume_channel, prefetch=1)
        yield Running(publisher, Events(events_queue), fake)
        await consumer.stop(grace=30)
        await consume_channel.close()


@pytest.fixture
async def running(
    amqp_url: str,
    sessionmaker: SessionMaker,
    pdns_client: PowerDnsClient,
    pdns: PowerDns,
    fake: FakeNameCom,
) -> AsyncIterator[Running]:
    settings = make_settings(pdns, domain_ownership="enforce", nameservers=OUR_NAMESERVERS)
    async for run in _run(amqp_url, sessionmaker, pdns_client, settings, fake):
        yield run


def register_job(domain: str) -> DomainRegisterRequested:
    return DomainRegisterRequested(
        domain_id=f"dom_{uuid.uuid4().hex[:12]}", tenant_id="tenant_x", domain=domain, years=1
    )


async def order_of(sessionmaker: SessionMaker, order_id: str) -> RegistrarOrder | None:
    async with sessionmaker() as session:
        return await session.get(RegistrarOrder, order_id)


async def test_a_purchase_registers_then_delegates_to_our_nameservers(
    running: Running, sessionmaker: SessionMaker
) -> None:
    domain = f"bakery-{uuid.uuid4().hex[:8]}.com"
    job = register_job(domain)
    await running.publisher.submit(job)
    seen = await wait_until(lambda: running.events.about(domain), "domain.registered")

    assert [t for t, _ in seen] == ["domain.registered"]
    assert seen[0][1]["registrar"] == "namecom" and seen[0][1]["expires_at"]
    assert [c.domain for c in running.fake.charges] == [domain]
    assert running.fake.domains[domain]["nameservers"] == [
        "ns1.sitefleet.test",
        "ns2.sitefleet.test",
    ]
    order = await order_of(sessionmaker, job.domain_id)
    assert order is not None and order.status == "active" and order.registrar_order_id == "1000"


async def test_a_timeout_after_charging_is_retried_without_buying_twice(
    running: Running, sessionmaker: SessionMaker
) -> None:
    running.fake.hang_after_charge = 1.0  # > the adapter's 0.5 s timeout
    domain = f"slow-{uuid.uuid4().hex[:8]}.com"
    job = register_job(domain)
    await running.publisher.submit(job)
    # The first attempt times out after the charge; the retry asks before buying.
    await wait_until(lambda: _orders_submitted(sessionmaker, job.domain_id), "first attempt")
    running.fake.hang_after_charge = 0
    seen = await wait_until(lambda: running.events.about(domain), "domain.registered")

    assert [t for t, _ in seen] == ["domain.registered"]
    assert len(running.fake.charges) == 1
    assert ("GET", f"/core/v1/domains/{domain}") in running.fake.requests
    order = await order_of(sessionmaker, job.domain_id)
    assert order is not None and order.status == "active" and order.attempts == 1


async def _orders_submitted(sessionmaker: SessionMaker, order_id: str) -> bool:
    order = await order_of(sessionmaker, order_id)
    return order is not None and order.status == "submitted"


async def test_a_duplicate_job_does_not_buy_twice(
    running: Running, sessionmaker: SessionMaker
) -> None:
    domain = f"twice-{uuid.uuid4().hex[:8]}.com"
    job = register_job(domain)
    await running.publisher.submit(job)
    await wait_until(lambda: running.events.about(domain), "domain.registered")
    await running.publisher.submit(job)  # the same order again (a redelivery, a replay)
    seen = await wait_until(
        lambda: _at_least(running.events.about(domain), 2), "second domain.registered"
    )
    assert [t for t, _ in seen] == ["domain.registered", "domain.registered"]
    assert len(running.fake.charges) == 1


async def test_a_registrar_error_fails_the_purchase_with_an_alert(
    running: Running, sessionmaker: SessionMaker
) -> None:
    domain = f"gold-{uuid.uuid4().hex[:8]}.com"
    running.fake.premium[domain] = 100.0
    running.fake.username = "rotated"  # our credentials no longer work
    job = register_job(domain)
    await running.publisher.submit(job)
    seen = await wait_until(lambda: running.events.about(domain), "domain.failed")

    assert [t for t, _ in seen] == ["domain.failed"]
    error = seen[0][1]["error"]
    assert error["code"] == "registrar_auth_failed" and "Unauthenticated" in error["message"]
    assert running.fake.charges == []
    order = await order_of(sessionmaker, job.domain_id)
    assert order is not None and order.status == "failed"


async def test_registrar_outage_is_retried_then_succeeds(running: Running) -> None:
    running.fake.fail_next = 2  # two 500s, then Name.com is back
    domain = f"outage-{uuid.uuid4().hex[:8]}.com"
    await running.publisher.submit(register_job(domain))
    seen = await wait_until(lambda: running.events.about(domain), "domain.registered")
    assert [t for t, _ in seen] == ["domain.registered"]
    assert len(running.fake.charges) == 1


async def _at_least(found: Any, count: int) -> list[tuple[str, dict[str, Any]]] | None:
    items = await found
    return items if len(items) >= count else None


# --- the ownership gate -----------------------------------------------------------------


async def _records(sessionmaker: SessionMaker, site_id: str) -> set[str]:
    async with sessionmaker() as session:
        return set(
            await session.scalars(select(DnsRecord.status).where(DnsRecord.site_id == site_id))
        )


async def test_records_wait_until_the_domain_is_the_tenants(
    running: Running, site: Site, sessionmaker: SessionMaker, pdns_client: PowerDnsClient
) -> None:
    job = DnsReconcileRequested(tenant_id=site.tenant_id, site_id=site.site_id, domain=site.domain)
    # Another tenant owns the domain: the site's records are never published.
    async with sessionmaker.begin() as session:
        for tenant in (site.tenant_id, "other_" + site.tenant_id):
            session.add(Tenant(id=tenant, name=tenant))
        await session.flush()
        session.add(
            Domain(
                id=f"dom_{site.site_id}",
                tenant_id="other_" + site.tenant_id,
                name=site.domain,
                skeleton=site.domain,
                status="active",
                bring_your_own=True,
                txt_value="x",
            )
        )
    await running.publisher.submit(job)
    marker = register_job(f"marker-{uuid.uuid4().hex[:8]}.com")
    await running.publisher.submit(marker)  # jobs run in order: once it is done, so is ours
    await wait_until(lambda: running.events.about(marker.domain), "the marker job")
    assert await _records(sessionmaker, site.site_id) == set()
    assert await pdns_client.get_zone(site.zone) is None

    # Now it is this tenant's: published and verified.
    async with sessionmaker.begin() as session:
        owned = await session.get(Domain, f"dom_{site.site_id}")
        assert owned is not None
        owned.tenant_id = site.tenant_id
    await running.publisher.submit(job)
    await wait_until(
        lambda: _equals(_records(sessionmaker, site.site_id), {"verified"}), "verified records"
    )
    async with sessionmaker.begin() as session:
        await session.execute(delete(Domain).where(Domain.id == f"dom_{site.site_id}"))
        await session.execute(
            delete(Tenant).where(Tenant.id.in_([site.tenant_id, "other_" + site.tenant_id]))
        )


async def _equals(found: Any, want: set[str]) -> bool:
    return bool(await found == want)
