"""``python -m services.api`` stopped with SIGTERM under load: while clients keep creating
sites and the outbox relay works through a backlog, the API finishes the requests in
flight (no 5xx; after SIGTERM only refused or dropped connections), publishes what is
pending and exits 0. Every job the API ever committed reaches RabbitMQ exactly once,
including those written while the broker was out of reach, relayed by the next process."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy import func, select

from shared import broker
from shared.db import create_engine, create_sessionmaker
from shared.messages import Envelope
from shared.models import OutboxMessage
from tests.e2e.helpers import landing_params
from tests.fixtures.platform import Platform, PlatformFactory, wait_until
from tests.fixtures.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

WORKERS = 6
BACKLOG = 300  # sites created while the relay cannot reach the broker
STOP_TIMEOUT = 90.0  # how long a broken drain may take to show (not a timing assertion)


@dataclass
class Load:
    """Clients creating sites until the API goes away."""

    platform: Platform
    token: str
    sigterm_sent: bool = False
    statuses: Counter[int] = field(default_factory=Counter)
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, n: int) -> None:
        async with self.platform.client(self.token) as api:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    response = await api.post(
                        "/v1/sites",
                        json={
                            "domain": f"w{n}-{i}.sigterm.example",
                            "template": "landing",
                            "params": landing_params(f"Site {n}-{i}"),
                        },
                    )
                except httpx.TransportError as exc:
                    if not self.sigterm_sent:
                        raise AssertionError(f"connection failed before SIGTERM: {exc!r}") from exc
                    self.dropped.append(type(exc).__name__)
                    return
                self.statuses[response.status_code] += 1
                assert response.status_code < 500, response.text
                if response.status_code == 201:
                    self.created.append(response.json()["id"])


async def test_sigterm_under_load_loses_and_repeats_no_job(platforms: PlatformFactory) -> None:
    proxy = TcpProxy(5672)
    await proxy.start()
    platform = await platforms.start("apisigterm", services=())
    vhost = platform.amqp_url.rsplit("/", 1)[1]
    proxied = {
        "SITEFLEET_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
        # Small batches: the relay is in the middle of a pass for most of the drain.
        "SITEFLEET_OUTBOX_BATCH": "10",
    }
    engine = create_engine(platform.database_url, application_name="tests", pool_size=1)
    sessionmaker = create_sessionmaker(engine)
    connection = await broker.connect(platform.amqp_url, name="tests-api-sigterm")

    async def outbox() -> tuple[int, int]:
        async with sessionmaker() as session:
            total = await session.scalar(select(func.count()).select_from(OutboxMessage))
            pending = await session.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.published_at.is_(None))
            )
        return int(total or 0), int(pending or 0)

    async def start_api() -> None:
        platform.start_service("api", proxied)
        await platforms.wait_api(platform)

    async def sigterm_api() -> bool:
        """SIGTERM, then whether the API stopped cleanly. uvicorn re-raises the signal once
        its graceful shutdown is complete, so the process ends by SIGTERM (which systemd
        and Docker count as a clean stop) right after logging so."""
        proc = platform.procs.pop("api")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        last = platform.log_tail("api", 3)
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in last

    try:
        await start_api()
        token = await platform.new_tenant()
        async with platform.client() as probe:

            async def ready() -> bool:
                return (await probe.get("/readyz")).status_code == 200

            await wait_until(ready, what="the API connected to the broker")

        # A backlog: sites created while the relay cannot publish.
        await proxy.cut()
        load = Load(platform, token)
        workers = [asyncio.create_task(load.worker(n)) for n in range(WORKERS)]
        await wait_until(
            lambda: _true(len(load.created) >= BACKLOG), timeout=120, what="the backlog"
        )
        # The broker is back: the relay works through the backlog while the clients go on;
        # SIGTERM lands in the middle of both.
        await proxy.restore()

        async def relaying() -> bool:
            total, pending = await outbox()
            return total - pending >= 20

        await wait_until(relaying, timeout=60, what="the relay to start publishing")
        load.sigterm_sent = True
        assert await sigterm_api(), platform.log_tail("api")
        async with asyncio.timeout(30):
            await asyncio.gather(*workers)

        assert set(load.statuses) == {201}, load.statuses  # no 5xx, nothing refused
        assert len(load.dropped) == WORKERS  # each client saw the API go away, after SIGTERM
        total, pending = await outbox()
        assert total >= 2 * len(load.created)  # a deployment and a DNS job per site
        assert pending == 0, "a clean stop publishes what the last requests wrote"

        # Jobs written while the broker is out of reach wait in the outbox across a stop
        # and a start, and the next process relays them.
        await start_api()
        await proxy.cut()
        async with platform.client(token) as api:
            for i in range(10):
                response = await api.post(
                    "/v1/sites",
                    json={
                        "domain": f"late-{i}.sigterm.example",
                        "template": "landing",
                        "params": landing_params(f"Late {i}"),
                    },
                )
                assert response.status_code == 201, response.text
                load.created.append(response.json()["id"])
        assert await sigterm_api(), platform.log_tail("api")
        assert (await outbox())[1] == 20
        await proxy.restore()
        await start_api()

        async def all_published() -> bool:
            return (await outbox())[1] == 0

        await wait_until(all_published, timeout=60, what="the pending jobs to be relayed")

        # Exactly once: every outbox row is on a queue once, and nothing else is.
        async with sessionmaker() as session:
            committed = set(await session.scalars(select(OutboxMessage.message_id)))
        queued: Counter[str] = Counter()
        deployed_sites: set[str] = set()
        channel = await connection.channel()
        for spec in (broker.DEPLOYER_JOBS, broker.DNS_JOBS):
            queue = await channel.get_queue(spec.name)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                assert message.message_id is not None
                queued[message.message_id] += 1
                envelope = Envelope.model_validate_json(message.body)
                if envelope.type == "deployment.requested":
                    deployed_sites.add(envelope.payload["site_id"])
        await channel.close()
        repeated = {k: n for k, n in queued.items() if n > 1}
        assert not repeated, f"{len(repeated)} jobs were published more than once"
        assert set(queued) == committed
        assert set(load.created) <= deployed_sites  # every 201 has its deployment job
    finally:
        # Off the event loop: the API's broker connection goes through the proxy, which
        # runs on this loop (blocked, the proxy would stall the API's clean stop).
        for proc_name in list(platform.procs):
            await asyncio.to_thread(platform.stop_service, proc_name)
        await connection.close()
        await engine.dispose()
        await proxy.cut()


async def _true(value: bool) -> bool:
    return value
