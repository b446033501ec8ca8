"""`sitefleet status`: one screen of what needs attention, and an exit code for cron/CI.

Reads only: queue depths and consumer counts through passive declares (no management
plugin needed), the API's /readyz, and the database.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import timedelta

import aio_pika
import httpx
from sqlalchemy import func, select

from shared import broker
from shared.db import create_engine, create_sessionmaker
from shared.models import Certificate, Deployment, DnsRecord
from shared.settings import CommonSettings
from shared.timeutil import utcnow

IN_FLIGHT = ("queued", "building", "uploading", "activating")
# Certificates in use that expire sooner than this are a problem (renewal should have run).
CERT_EXPIRY_WARNING = timedelta(days=7)


@dataclass
class QueueState:
    name: str
    messages: int
    consumers: int


@dataclass
class Status:
    api: str
    queues: list[QueueState] = field(default_factory=list)
    stuck_deployments: list[tuple[str, str, str]] = field(default_factory=list)
    unverified_dns: list[tuple[str, str, str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def _queues(amqp_url: str) -> list[QueueState]:
    states = []
    connection = await aio_pika.connect(amqp_url, client_properties={"connection_name": "cli"})
    async with connection:
        for spec in broker.ALL_QUEUES:
            for name in (spec.name, spec.parked):
                channel = await connection.channel()  # a failed passive declare closes it
                try:
                    queue = await channel.declare_queue(name, passive=True)
                except aio_pika.exceptions.ChannelClosed:
                    states.append(QueueState(name, -1, -1))
                    continue
                result = queue.declaration_result
                states.append(
                    QueueState(name, result.message_count or 0, result.consumer_count or 0)
                )
                with contextlib.suppress(Exception):
                    await channel.close()
    return states


async def collect(settings: CommonSettings, api_url: str, stuck_after: timedelta) -> Status:
    try:
        async with httpx.AsyncClient(timeout=3) as http:
            ready = await http.get(f"{api_url}/readyz")
        api = "ready" if ready.status_code == 200 else f"not ready ({ready.text[:120]})"
    except httpx.HTTPError as exc:
        api = f"unreachable ({type(exc).__name__})"
    status = Status(api=api)
    if api != "ready":
        status.problems.append(f"API {api}")
    try:
        status.queues = await _queues(settings.broker_urls[0])
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        status.problems.append(f"RabbitMQ unreachable: {exc}")
    for queue in status.queues:
        if queue.messages < 0:
            status.problems.append(f"queue {queue.name} does not exist (services never started?)")
        elif queue.name.endswith(".parked") and queue.messages:
            status.problems.append(f"{queue.messages} parked job(s) in {queue.name}")
        elif not queue.name.endswith(".parked") and queue.consumers == 0:
            status.problems.append(f"no consumer on {queue.name}: its service is down")

    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            cutoff = utcnow() - stuck_after
            status.stuck_deployments = [
                (d.id, d.status, d.created_at.isoformat(timespec="seconds"))
                for d in await session.scalars(
                    select(Deployment)
                    .where(Deployment.status.in_(IN_FLIGHT), Deployment.created_at < cutoff)
                    .order_by(Deployment.created_at)
                    .limit(50)
                )
            ]
            status.unverified_dns = [
                (r.name, r.type, r.status, r.error or "")
                for r in await session.scalars(
                    select(DnsRecord)
                    .where(DnsRecord.status != "verified", DnsRecord.updated_at < cutoff)
                    .order_by(DnsRecord.updated_at)
                    .limit(50)
                )
            ]
            total_unverified = await session.scalar(
                select(func.count())
                .select_from(DnsRecord)
                .where(DnsRecord.status != "verified", DnsRecord.updated_at < cutoff)
            )
            failed_certs = await session.scalar(
                select(func.count()).select_from(Certificate).where(Certificate.status == "failed")
            )
            expiring_certs = await session.scalar(
                select(func.count())
                .select_from(Certificate)
                .where(
                    Certificate.status == "installed",
                    Certificate.not_after < utcnow() + CERT_EXPIRY_WARNING,
                )
            )
    finally:
        await engine.dispose()
    if status.stuck_deployments:
        status.problems.append(f"{len(status.stuck_deployments)} deployment(s) stuck")
    if total_unverified:
        status.problems.append(f"{total_unverified} DNS record(s) not verified")
    if failed_certs:
        status.problems.append(
            f"{failed_certs} site(s) whose certificate order failed (sitefleet certs list)"
        )
    if expiring_certs:
        status.problems.append(f"{expiring_certs} certificate(s) in use expire within 7 days")
    return status
