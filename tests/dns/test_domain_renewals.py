"""The renewal pass over bought domains, with the sandbox registrar on a real PostgreSQL
and the events read from a real RabbitMQ: renew before expiry, warn once per threshold
when nobody renews, announce a lapsed domain."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from aio_pika.abc import AbstractQueue

from services.dns.renewals import renew_due_domains
from shared import broker
from shared.db import SessionMaker
from shared.models import Domain, RegistrarOrder, SandboxRegistration, Tenant
from shared.registrar.sandbox import SandboxRegistrar
from shared.settings import DomainSettings
from shared.timeutil import utcnow

SETTINGS = DomainSettings(domain_renew_before_days=30, domain_warn_days=[30, 7])


@dataclass
class World:
    publisher: broker.Publisher
    queue: AbstractQueue
    sandbox: SandboxRegistrar
    sessionmaker: SessionMaker

    async def events(self, domain: str) -> list[tuple[str, dict[str, Any]]]:
        seen = []
        while (message := await self.queue.get(fail=False, timeout=1)) is not None:
            await message.ack()
            envelope = json.loads(message.body)
            if envelope["payload"].get("domain") == domain:
                seen.append((envelope["type"], envelope["payload"]))
        return seen


@pytest.fixture
async def world(amqp_url: str, sessionmaker: SessionMaker) -> AsyncIterator[World]:
    connection = await broker.connect(amqp_url, name="tests-renewals")
    async with connection:
        channel = await connection.channel()
        await broker.declare_topology(channel, [0.2], 10)
        queue = await channel.declare_queue(
            f"tests-renewals-{uuid.uuid4().hex[:8]}", exclusive=True, auto_delete=True
        )
        await queue.bind(broker.EVENTS_EXCHANGE, routing_key="domain.*")
        publisher = await broker.Publisher.open(connection)
        sandbox = SandboxRegistrar(sessionmaker, prices={"com": "12.00"})
        yield World(publisher, queue, sandbox, sessionmaker)


async def bought(world: World, *, days_left: float, auto_renew: bool) -> str:
    """A domain the sandbox sold, expiring in ``days_left`` days, as the API and the DNS
    service have recorded it."""
    name = f"renew-{uuid.uuid4().hex[:8]}.com"
    domain_id = f"dom_{uuid.uuid4().hex[:12]}"
    tenant_id = f"ten_{uuid.uuid4().hex[:8]}"
    expires = utcnow() + timedelta(days=days_left)
    async with world.sessionmaker.begin() as session:
        session.add(Tenant(id=tenant_id, name=tenant_id))
        await session.flush()
        session.add(
            Domain(
                id=domain_id,
                tenant_id=tenant_id,
                name=name,
                skeleton=name,
                status="active",
                bring_your_own=False,
                registrar="sandbox",
                years=1,
                auto_renew=auto_renew,
                txt_value="x",
                expires_at=expires,
            )
        )
        session.add(
            RegistrarOrder(
                id=domain_id,
                tenant_id=tenant_id,
                name=name,
                registrar="sandbox",
                years=1,
                status="active",
                attempts=1,
                expires_at=expires,
            )
        )
        session.add(
            SandboxRegistration(
                name=name,
                order_id=domain_id,
                years=1,
                price="12.00",
                nameservers=[],
                contact={},
                renewals=[],
                expires_at=expires,
            )
        )
    return name


async def run_pass(world: World, days_later: float = 0) -> None:
    await renew_due_domains(
        world.sessionmaker,
        world.sandbox,
        world.publisher,
        SETTINGS,
        now=utcnow() + timedelta(days=days_later),
    )


async def test_auto_renew_renews_once_before_expiry(world: World) -> None:
    name = await bought(world, days_left=20, auto_renew=True)
    before = await world.sandbox.get(name)
    await run_pass(world)
    await run_pass(world)  # the next day's pass: nothing is due any more
    after = await world.sandbox.get(name)
    assert before is not None and after is not None
    assert before.expires_at is not None and after.expires_at is not None
    assert after.expires_at - before.expires_at == timedelta(days=365)
    events = await world.events(name)
    assert [t for t, _ in events] == ["domain.renewed"]
    assert events[0][1]["expires_at"].startswith(after.expires_at.date().isoformat())


async def test_a_domain_far_from_expiry_is_left_alone(world: World) -> None:
    name = await bought(world, days_left=200, auto_renew=True)
    await run_pass(world)
    assert await world.events(name) == []


async def test_without_auto_renew_it_warns_at_30_and_7_days_once_each(world: World) -> None:
    name = await bought(world, days_left=29.5, auto_renew=False)
    await run_pass(world)
    await run_pass(world, days_later=1)  # still within 30 days: no second warning
    await run_pass(world, days_later=23)  # 6.5 days left
    await run_pass(world, days_later=24)
    events = await world.events(name)
    assert [(t, p["error"]["code"]) for t, p in events] == [
        ("domain.failed", "domain_expiring"),
        ("domain.failed", "domain_expiring"),
    ]
    assert "less than 30 days" in events[0][1]["error"]["message"]
    assert "less than 7 days" in events[1][1]["error"]["message"]
    assert "auto-renew is off" in events[1][1]["error"]["message"]


async def test_a_lapsed_domain_is_announced_expired_once(world: World) -> None:
    name = await bought(world, days_left=3, auto_renew=False)
    await run_pass(world, days_later=4)
    await run_pass(world, days_later=5)
    events = await world.events(name)
    assert [(t, p.get("error", {}).get("code")) for t, p in events] == [
        ("domain.expired", None),
        ("domain.failed", "domain_expired"),
    ]
