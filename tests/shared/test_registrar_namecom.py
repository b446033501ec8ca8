"""Contract tests of the Name.com adapter against a local fake that follows Name.com's
documented CORE API (tests/fixtures/namecom.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from shared.errors import Conflict, Permanent, RateLimited, Unavailable
from shared.registrar.namecom import NameComRegistrar
from tests.fixtures.namecom import FakeNameCom


@pytest.fixture
def fake() -> Iterator[FakeNameCom]:
    server = FakeNameCom().start()
    yield server
    server.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def adapter(
    http: httpx.AsyncClient, fake: FakeNameCom, *, token: str | None = None, timeout: float = 5
) -> NameComRegistrar:
    return NameComRegistrar(
        http,
        base_url=fake.url,
        username=fake.username,
        token=token if token is not None else fake.token,
        timeout=timeout,
    )


async def test_check_reports_availability_and_price(
    http: httpx.AsyncClient, fake: FakeNameCom
) -> None:
    fake.taken.add("taken-name.com")
    registrar = adapter(http, fake)
    free = await registrar.check("rosas-bakery.com")
    assert free.available and free.price is not None
    assert (free.price.amount, free.price.currency) == ("12.99", "USD")
    taken = await registrar.check("taken-name.com")
    assert not taken.available and taken.price is None
    assert ("POST", "/core/v1/domains:checkAvailability") in fake.requests


async def test_register_then_nameservers_then_renew(
    http: httpx.AsyncClient, fake: FakeNameCom
) -> None:
    registrar = adapter(http, fake)
    assert await registrar.get("rosas-bakery.com") is None  # 404: not in our account
    bought = await registrar.register(
        "rosas-bakery.com", years=2, contact={"firstName": "Rosa"}, order_id="dom_1"
    )
    assert bought.expires_at is not None and bought.registrar_order_id == "1000"
    assert [c.domain for c in fake.charges] == ["rosas-bakery.com"]
    assert fake.charges[0].idempotency_key == "dom_1"
    assert fake.domains["rosas-bakery.com"]["contacts"]["registrant"] == {"firstName": "Rosa"}

    await registrar.set_nameservers(
        "rosas-bakery.com", ["ns1.sitefleet.test.", "ns2.sitefleet.test."]
    )
    owned = await registrar.get("rosas-bakery.com")
    assert owned is not None
    assert owned.nameservers == ("ns1.sitefleet.test", "ns2.sitefleet.test")

    renewed = await registrar.renew("rosas-bakery.com", years=1, order_id="dom_1-renew-1")
    assert renewed.expires_at is not None and renewed.expires_at > bought.expires_at


async def test_premium_names_are_bought_at_the_quoted_price(
    http: httpx.AsyncClient, fake: FakeNameCom
) -> None:
    fake.premium["gold.com"] = 2500.0
    registrar = adapter(http, fake)
    assert (await registrar.check("gold.com")).price.amount == "2500.00"  # type: ignore[union-attr]
    await registrar.register("gold.com", years=1, contact={}, order_id="dom_gold")
    assert [c.amount for c in fake.charges] == [2500.0]


async def test_bad_credentials_are_a_permanent_error(
    http: httpx.AsyncClient, fake: FakeNameCom
) -> None:
    registrar = adapter(http, fake, token="wrong")
    with pytest.raises(Permanent) as caught:
        await registrar.check("rosas-bakery.com")
    assert caught.value.code == "registrar_auth_failed"
    assert "Unauthenticated" in caught.value.message
    assert fake.charges == []


async def test_unavailable_name_is_refused_without_charge(
    http: httpx.AsyncClient, fake: FakeNameCom
) -> None:
    fake.taken.add("taken.com")
    with pytest.raises(Conflict) as caught:
        await adapter(http, fake).register("taken.com", years=1, contact={}, order_id="dom_t")
    assert caught.value.code == "domain_unavailable"
    assert fake.charges == []


async def test_server_error_is_transient(http: httpx.AsyncClient, fake: FakeNameCom) -> None:
    fake.fail_next = 1
    registrar = adapter(http, fake)
    with pytest.raises(Unavailable) as caught:
        await registrar.check("rosas-bakery.com")
    assert caught.value.code == "registrar_unavailable"
    assert (await registrar.check("rosas-bakery.com")).available  # the next call works


async def test_rate_limit_is_transient_with_retry_after(
    http: httpx.AsyncClient, fake: FakeNameCom
) -> None:
    fake.throttle_next = 1
    with pytest.raises(RateLimited) as caught:
        await adapter(http, fake).check("rosas-bakery.com")
    assert caught.value.retry_after == 7.0


async def test_timeout_after_charging_never_buys_twice(
    http: httpx.AsyncClient, fake: FakeNameCom
) -> None:
    fake.hang_after_charge = 2.0
    registrar = adapter(http, fake, timeout=0.5)
    with pytest.raises(Unavailable) as caught:
        await registrar.register("rosas-bakery.com", years=1, contact={}, order_id="dom_2")
    assert caught.value.code == "registrar_timeout"
    assert len(fake.charges) == 1  # the money is gone although we got no answer
    fake.hang_after_charge = 0
    # What a retry does: ask first; the domain is already ours.
    owned = await registrar.get("rosas-bakery.com")
    assert owned is not None and owned.domain == "rosas-bakery.com"
    assert len(fake.charges) == 1


async def test_a_bought_name_is_not_bought_again(
    http: httpx.AsyncClient, fake: FakeNameCom
) -> None:
    registrar = adapter(http, fake)
    first = await registrar.register("rosas-bakery.com", years=1, contact={}, order_id="dom_3")
    # No longer purchasable: the adapter's check refuses before any second charge.
    with pytest.raises(Conflict):
        await registrar.register("rosas-bakery.com", years=1, contact={}, order_id="dom_3")
    assert len(fake.charges) == 1
    assert first.registrar_order_id == "1000"
