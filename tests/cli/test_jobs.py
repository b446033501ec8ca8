"""`sitefleet jobs parked` and `sitefleet jobs replay`, against a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator

import aio_pika
import pytest

from shared import broker
from shared.consumer import Consumer
from shared.errors import Permanent
from shared.messages import DnsReconcileRequested, Envelope, Message
from tests.fixtures.isolation import create_vhost, drop_vhost


@pytest.fixture
def vhost_url(run_id: str) -> Iterator[str]:
    vhost, url = create_vhost(f"sitefleet-test-{run_id}-jobs")
    yield url
    drop_vhost(vhost)


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [".venv/bin/sitefleet", "jobs", *args],
        text=True,
        capture_output=True,
        env={**os.environ, "SITEFLEET_AMQP_URL": url},
        timeout=60,
    )


async def test_a_parked_job_is_listed_replayed_and_then_succeeds(vhost_url: str) -> None:
    # A plain connection: a robust channel caches queue declarations (and their counts).
    connection = await aio_pika.connect(vhost_url)
    async with connection:
        channel = await connection.channel()
        await broker.declare_topology(channel, [0.1], delivery_limit=5)
        publisher = await broker.Publisher.open(connection)
        fixed = asyncio.Event()
        handled = asyncio.Event()

        async def handler(envelope: Envelope, payload: Message) -> None:
            if not fixed.is_set():
                raise Permanent("zone is locked", code="dns_provider_rejected")
            handled.set()

        consumer = Consumer(broker.DNS_JOBS, handler, publisher, [0.1])
        await consumer.start(await connection.channel(), prefetch=1)
        job = DnsReconcileRequested(tenant_id="ten_1", site_id="site_1", domain="a.example")
        envelope = job.envelope()
        await publisher.publish_envelope(broker.JOBS_EXCHANGE, envelope)

        async def parked_count() -> int:
            queue = await channel.declare_queue(broker.DNS_JOBS.parked, passive=True)
            return queue.declaration_result.message_count or 0

        async def settles_at(count: int) -> bool:
            for _ in range(200):  # the broker requeues a closed channel's messages shortly
                if await parked_count() == count:
                    return True
                await asyncio.sleep(0.05)
            return False

        assert await settles_at(1)

        table = await asyncio.to_thread(cli, vhost_url, "parked")
        assert table.returncode == 0, table.stderr
        assert "1 parked job(s)" in table.stdout
        listed = await asyncio.to_thread(cli, vhost_url, "parked", "--json")
        assert [json.loads(line) for line in listed.stdout.splitlines()] == [
            {
                "queue": "dns.jobs.parked",
                "message_id": envelope.message_id,
                "routing_key": "dns.reconcile_requested",
                "error_code": "dns_provider_rejected",
                "error_message": "zone is locked",
            }
        ]
        assert await settles_at(1)  # looking loses nothing

        missing = await asyncio.to_thread(cli, vhost_url, "replay", "no-such-id")
        assert missing.returncode == 1 and "no parked job" in missing.stderr

        fixed.set()
        replayed = await asyncio.to_thread(cli, vhost_url, "replay", envelope.message_id)
        assert replayed.returncode == 0, replayed.stderr
        assert "dns.reconcile_requested" in replayed.stdout
        await asyncio.wait_for(handled.wait(), 10)
        assert await settles_at(0)
        await consumer.stop(grace=5)
