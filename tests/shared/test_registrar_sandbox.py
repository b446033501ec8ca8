"""The sandbox registrar's documented rules, on a real PostgreSQL (its books)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from shared.db import SessionMaker, create_engine, create_sessionmaker
from shared.errors import Conflict, NotFound, Permanent
from shared.registrar.sandbox import SandboxRegistrar


@pytest.fixture
async def sandbox(database_url: str) -> AsyncIterator[SandboxRegistrar]:
    engine = create_engine(database_url, application_name="tests-sandbox", pool_size=1)
    sessionmaker: SessionMaker = create_sessionmaker(engine)
    yield SandboxRegistrar(sessionmaker, prices={"com": "12.00", "test": "1.00"})
    await engine.dispose()


def unique(prefix: str, tld: str = "com") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.{tld}"


async def test_prices_come_from_the_price_list(sandbox: SandboxRegistrar) -> None:
    offer = await sandbox.check(unique("shop"))
    assert offer.available and offer.price is not None
    assert (offer.price.amount, offer.price.currency) == ("12.00", "USD")
    unsold = await sandbox.check(unique("shop", "org"))
    assert not unsold.available and unsold.price is None and unsold.reason


async def test_taken_names_are_unavailable(sandbox: SandboxRegistrar) -> None:
    name = unique("taken")
    assert not (await sandbox.check(name)).available
    with pytest.raises(Conflict):
        await sandbox.register(name, years=1, contact={}, order_id="dom_a")


async def test_a_sale_is_recorded_once_per_order(sandbox: SandboxRegistrar) -> None:
    name = unique("bakery")
    first = await sandbox.register(name, years=2, contact={}, order_id=f"dom_{name}")
    again = await sandbox.register(name, years=2, contact={}, order_id=f"dom_{name}")
    assert again == first
    assert not (await sandbox.check(name)).available
    with pytest.raises(Conflict):  # another order for a sold name
        await sandbox.register(name, years=1, contact={}, order_id="dom_other")
    await sandbox.set_nameservers(name, ["ns1.sitefleet.test."])
    owned = await sandbox.get(name)
    assert owned is not None and owned.nameservers == ("ns1.sitefleet.test.",)
    renewed = await sandbox.renew(name, years=1, order_id="r1")
    assert renewed.expires_at is not None and first.expires_at is not None
    assert renewed.expires_at > first.expires_at


async def test_declined_names_are_refused_by_the_registry(sandbox: SandboxRegistrar) -> None:
    name = unique("declined")
    assert (await sandbox.check(name)).available  # offered...
    with pytest.raises(Permanent) as caught:  # ...but the registration is refused
        await sandbox.register(name, years=1, contact={}, order_id="dom_d")
    assert caught.value.code == "registrar_rejected"
    assert await sandbox.get(name) is None
    with pytest.raises(NotFound):
        await sandbox.set_nameservers(name, ["ns1.sitefleet.test."])
