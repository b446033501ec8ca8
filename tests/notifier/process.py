"""The notifier as it runs (``python -m services.notifier``), on a vhost and a database of
its own, for the tests that drive it through RabbitMQ and watch what its webhook gets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from cli.devstack import procs
from shared import broker
from shared.messages import Envelope
from shared.settings import PROJECT_ROOT
from tests.fixtures.isolation import (
    create_database,
    create_vhost_async,
    drop_database,
    drop_vhost_async,
)
from tests.fixtures.platform import wait_until
from tests.notifier.conftest import Receiver

RETRY_DELAYS = [0.5, 1.0, 2.0]
OPS_SECRET = "ops-secret"  # noqa: S105


@dataclass
class Service:
    env: dict[str, str]
    log: Path
    receiver: Receiver
    database_url: str
    amqp_url: str
    proc: subprocess.Popen[bytes] | None = None
    connection: aio_pika.abc.AbstractRobustConnection | None = None
    publisher: broker.Publisher | None = None
    tails: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.proc = procs.start(
            [sys.executable, "-m", "services.notifier"],
            log=self.log,
            env=self.env,
            cwd=PROJECT_ROOT,
        )

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    async def consuming(self) -> None:
        assert self.connection is not None

        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError("notifier exited:\n" + self.log.read_text()[-3000:])
            channel = await self.connection.channel()  # type: ignore[union-attr]
            try:
                queue = await channel.declare_queue("notifier.events", passive=True)
                return bool(queue.declaration_result.consumer_count)
            finally:
                await channel.close()

        await wait_until(ready, timeout=30, what="the notifier to consume")

    async def publish(self, envelope: Envelope) -> None:
        assert self.publisher is not None
        await self.publisher.publish_envelope(broker.EVENTS_EXCHANGE, envelope)


@asynccontextmanager
async def running_notifier(**settings: str) -> AsyncIterator[Service]:
    """The notifier as a process on a fresh vhost and database, its ops webhook a
    ``Receiver``; ``settings`` override the env (e.g. ``SITEFLEET_GROUP_INTERVAL``)."""
    tag = uuid.uuid4().hex[:10]
    vhost, amqp_url = await create_vhost_async(f"sitefleet-test-ntf-{tag}")
    db_name = f"sitefleet_test_ntfsvc_{tag}"
    database_url = await create_database(db_name)
    root = Path(tempfile.mkdtemp(prefix="sitefleet-notifier-"))
    receiver = Receiver(secret=OPS_SECRET)
    env = {
        "SITEFLEET_DATABASE_URL": database_url,
        "SITEFLEET_AMQP_URL": amqp_url,
        "SITEFLEET_OPS_WEBHOOK_URLS": json.dumps([receiver.url]),
        "SITEFLEET_OPS_WEBHOOK_SECRET": OPS_SECRET,
        "SITEFLEET_RETRY_DELAYS": json.dumps(RETRY_DELAYS),
        "SITEFLEET_GROUP_WAIT": "0.3",
        "SITEFLEET_GROUP_INTERVAL": "2",
        "SITEFLEET_REPEAT_INTERVAL": "600",
        "SITEFLEET_POLL_INTERVAL": "0.05",
        "SITEFLEET_DELIVERY_POLL_INTERVAL": "0.2",
        "SITEFLEET_PREFETCH": "64",
        "SITEFLEET_DELIVERY_WORKERS": "8",
        "SITEFLEET_DELIVERY_BACKOFF": "[0.2, 0.5]",
        "SITEFLEET_CHANNEL_RATES": '{"webhook": 10000}',
        "SITEFLEET_CHANNEL_BURSTS": '{"webhook": 10000}',
        "SITEFLEET_WEBHOOK_TIMEOUT": "5",
        "SITEFLEET_LOG_LEVEL": "WARNING",
        "SITEFLEET_METRICS_PORT": str(procs.free_port()),
        **settings,
    }
    svc = Service(env, root / "notifier.log", receiver, database_url, amqp_url)
    svc.connection = await broker.connect(amqp_url, name="tests")
    topology = await svc.connection.channel()
    await broker.declare_topology(topology, RETRY_DELAYS, 10)
    await topology.close()
    svc.publisher = await broker.Publisher.open(svc.connection)
    svc.start()
    try:
        await svc.consuming()
        yield svc
    finally:
        if svc.proc is not None:
            procs.stop(svc.proc)
        await svc.connection.close()
        receiver.close()
        await drop_database(db_name)
        await drop_vhost_async(vhost)
        shutil.rmtree(root, ignore_errors=True)
