"""The DNS jobs through a real RabbitMQ: the shared consumer helper drives our handler, and
the events it emits are read from a fresh queue bound to ``sitefleet.events``."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from aio_pika.abc import AbstractQueue
from sqlalchemy import select

from services.dns.consumer import DnsJobHandler
from services.dns.powerdns import PowerDnsClient
from services.dns.settings import DnsSettings
from shared import broker
from shared.consumer import Consumer
from shared.db import SessionMaker
from shared.messages import DnsReconcileRequested, DnsRemovalRequested
from shared.models import DnsRecord
from tests.dns.conftest import PowerDns, Site, add_foreign_rrset, wait_until

RETRY_DELAYS = [0.2]


class Events:
    """Everything published to ``sitefleet.events`` under ``dns.*``, as (type, payload)."""

    def __init__(self, queue: AbstractQueue) -> None:
        self.queue = queue
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def for_site(self, site_id: str) -> list[tuple[str, dict[str, Any]]]:
        while (message := await self.queue.get(fail=False)) is not None:
            await message.ack()
            envelope = json.loads(message.body)
            self.seen.append((envelope["type"], envelope["payload"]))
        return [(t, p) for t, p in self.seen if p.get("site_id") == site_id]


@pytest.fixture
async def running(
    amqp_url: str,
    sessionmaker: SessionMaker,
    pdns_client: PowerDnsClient,
    dns_settings: DnsSettings,
) -> AsyncIterator[tuple[broker.Publisher, Events]]:
    connection = await broker.connect(amqp_url, name="tests-dns")
    async with connection:
        channel = await connection.channel()
        await broker.declare_topology(channel, RETRY_DELAYS, dns_settings.delivery_limit)
        events_queue = await channel.declare_queue(
            f"tests-dns-{uuid.uuid4().hex[:8]}", exclusive=True, auto_delete=True
        )
        await events_queue.bind(broker.EVENTS_EXCHANGE, routing_key="dns.*")
        publisher = await broker.Publisher.open(connection)
        handler = DnsJobHandler(
            sessionmaker=sessionmaker,
            client=pdns_client,
            publisher=publisher,
            settings=dns_settings,
        )
        consume_channel = await connection.channel()
        consumer = Consumer(broker.DNS_JOBS, handler, publisher, RETRY_DELAYS)
        await consumer.start(consume_channel, prefetch=1)
        yield publisher, Events(events_queue)
        await consumer.stop(grace=30)
        await consume_channel.close()


async def statuses(sessionmaker: SessionMaker, site_id: str) -> set[str]:
    async with sessionmaker() as session:
        result = await session.scalars(select(DnsRecord.status).where(DnsRecord.site_id == site_id))
        return set(result)


async def test_reconcile_then_removal_jobs(
    running: tuple[broker.Publisher, Events],
    site: Site,
    sessionmaker: SessionMaker,
    pdns_client: PowerDnsClient,
) -> None:
    publisher, events = running
    job = {"tenant_id": site.tenant_id, "site_id": site.site_id, "domain": site.domain}

    await publisher.submit(DnsReconcileRequested(**job))
    await wait_until(
        lambda: _equals(statuses(sessionmaker, site.site_id), {"verified"}), "verified rows"
    )

    await publisher.submit(DnsRemovalRequested(**job))
    removed = await wait_until(lambda: events.for_site(site.site_id), "dns.records_removed")
    assert removed == [("dns.records_removed", {**job})]
    assert await statuses(sessionmaker, site.site_id) == set()
    assert await pdns_client.get_zone(site.zone) is None


async def test_a_job_that_can_never_succeed_emits_dns_failed_and_is_parked(
    running: tuple[broker.Publisher, Events],
    sessionmaker: SessionMaker,
) -> None:
    publisher, events = running
    site_id = f"site_{uuid.uuid4().hex[:10]}"
    job = {"tenant_id": "tenant_x", "site_id": site_id, "domain": "not a domain"}

    await publisher.submit(DnsReconcileRequested(**job))
    seen = await wait_until(
        lambda: _at_least(events.for_site(site_id), 2), "dns.failed and dns.parked"
    )

    assert [t for t, _ in seen] == ["dns.failed", "dns.parked"]
    assert seen[0][1]["error"]["code"] == "invalid_domain"
    assert seen[1][1]["error"]["code"] == "invalid_domain"
    assert await statuses(sessionmaker, site_id) == set()


async def test_a_foreign_record_emits_dns_failed_without_parking(
    running: tuple[broker.Publisher, Events],
    site: Site,
    sessionmaker: SessionMaker,
    pdns_client: PowerDnsClient,
    dns_settings: DnsSettings,
    pdns: PowerDns,
) -> None:
    publisher, events = running
    await pdns_client.create_zone(site.zone, nameservers=dns_settings.nameservers)
    await add_foreign_rrset(pdns, site.zone, f"media.{site.zone}", "TXT", '"hand-made"')
    job = {"tenant_id": site.tenant_id, "site_id": site.site_id, "domain": site.domain}

    await publisher.submit(DnsReconcileRequested(**job))
    seen = await wait_until(lambda: events.for_site(site.site_id), "dns.failed")

    assert [t for t, _ in seen] == ["dns.failed"]
    assert seen[0][1]["error"]["code"] == "dns_record_conflict"
    assert (
        f"media.{site.zone} TXT exists and is not managed by Sitefleet"
        in (seen[0][1]["error"]["message"])
    )
    assert await statuses(sessionmaker, site.site_id) == {"verified", "error"}


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


async def _at_least(value: Awaitable[list[Any]], count: int) -> list[Any] | None:
    items = await value
    return items if len(items) >= count else None
