"""The drift sweep: a record changed by hand in PowerDNS is announced and healed through the
dns.jobs queue; sites being deleted are left alone, by the sweep and by the handler."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import httpx
import pytest
from sqlalchemy import delete, update

from services.dns.consumer import DnsJobHandler
from services.dns.powerdns import PowerDnsClient
from services.dns.reconcile import apply_site
from services.dns.settings import DnsSettings
from services.dns.sweep import sweep_once
from shared import broker
from shared.consumer import Consumer
from shared.db import SessionMaker
from shared.messages import DnsDrifted, DnsReconcileRequested, Envelope, parse_payload
from shared.models import Site as SiteRow
from shared.models import Tenant
from tests.dns.conftest import Dig, PowerDns, Site
from tests.dns.test_consumer import RETRY_DELAYS


@pytest.fixture
async def registered(site: Site, sessionmaker: SessionMaker) -> AsyncIterator[Site]:
    """The site also exists in the API's tables (the sweep only looks at real sites)."""
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


async def delete_by_hand(pdns: PowerDns, zone: str, name: str, rtype: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.patch(
            f"{pdns.api_url}/api/v1/servers/localhost/zones/{zone}",
            headers={"X-API-Key": pdns.api_key},
            json={"rrsets": [{"name": name, "type": rtype, "changetype": "DELETE"}]},
        )
        response.raise_for_status()


async def test_drift_is_announced_and_healed_and_deleting_sites_are_left_alone(
    registered: Site,
    pdns: PowerDns,
    pdns_client: PowerDnsClient,
    sessionmaker: SessionMaker,
    dns_settings: DnsSettings,
    amqp_url: str,
    dig: Dig,
) -> None:
    site = registered
    www = f"www.{site.domain}."
    async with sessionmaker.begin() as session:
        await apply_site(
            session,
            pdns_client,
            tenant_id=site.tenant_id,
            site_id=site.site_id,
            domain=site.domain,
            settings=dns_settings,
        )
    assert (await dig(www, "CNAME")).get(www, "CNAME")

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await broker.declare_topology(channel, RETRY_DELAYS, dns_settings.delivery_limit)
        drift_events = await channel.declare_queue(exclusive=True)
        await drift_events.bind(broker.EVENTS_EXCHANGE, routing_key="dns.drift")
        publisher = await broker.Publisher.open(connection)

        assert await sweep_once(sessionmaker, pdns_client, publisher, dns_settings) == 0
        await delete_by_hand(pdns, site.zone, www, "CNAME")
        assert (await dig(www, "CNAME")).get(www, "CNAME") == []
        assert await sweep_once(sessionmaker, pdns_client, publisher, dns_settings) == 1
        message = await drift_events.get(timeout=5)
        await message.ack()
        event = parse_payload(Envelope.model_validate_json(message.body))
        assert isinstance(event, DnsDrifted)
        assert (event.site_id, event.changes) == (site.site_id, 1)

        handler = DnsJobHandler(
            sessionmaker=sessionmaker,
            client=pdns_client,
            publisher=publisher,
            settings=dns_settings,
        )
        consumer = Consumer(broker.DNS_JOBS, handler, publisher, RETRY_DELAYS)
        await consumer.start(await connection.channel(), prefetch=1)
        for _ in range(100):  # the heal job runs through the queue
            if (await dig(www, "CNAME")).get(www, "CNAME"):
                break
            await asyncio.sleep(0.1)
        assert (await dig(www, "CNAME")).get(www, "CNAME")
        assert await sweep_once(sessionmaker, pdns_client, publisher, dns_settings) == 0

        # Once the site is being deleted, neither the sweep nor a late job restores records.
        async with sessionmaker.begin() as session:
            await session.execute(
                update(SiteRow).where(SiteRow.id == site.site_id).values(status="deleting")
            )
        await delete_by_hand(pdns, site.zone, www, "CNAME")
        assert await sweep_once(sessionmaker, pdns_client, publisher, dns_settings) == 0
        await publisher.submit(
            DnsReconcileRequested(
                tenant_id=site.tenant_id, site_id=site.site_id, domain=site.domain
            )
        )
        await consumer.stop(grace=10)
        queue = await channel.declare_queue(broker.DNS_JOBS.name, passive=True)
        assert queue.declaration_result.message_count == 0
        assert (await dig(www, "CNAME")).get(www, "CNAME") == []
