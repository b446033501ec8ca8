"""Domains through the API, on a platform that enforces domain ownership (the production
default) and sells through the sandbox registrar: buy one and put a site on it; bring one,
fail and then pass verification, and see the site's records published only then; renewal
and expiry; a registrar's refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from shared.db import create_engine, create_sessionmaker
from shared.models import RegistrarOrder
from shared.timeutil import utcnow
from tests.e2e.domain_steps import (
    create_site,
    dns_records,
    publish_challenge,
    unique,
    wait_dns_verified,
    wait_domain,
)
from tests.e2e.helpers import query, wait_deployment
from tests.fixtures.platform import NAMESERVERS, Platform, wait_until


@pytest.fixture
async def api(domains_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with domains_platform.client(await domains_platform.new_tenant()) as client:
        yield client


async def test_buy_a_domain_and_put_a_live_site_on_it(
    api: httpx.AsyncClient, domains_platform: Platform
) -> None:
    name = unique("rosas-bakery")
    checked = await api.get("/v1/domains/check", params={"name": name.upper()})
    assert checked.status_code == 200, checked.text
    assert checked.json() == {
        "name": name,
        "available": True,
        "price": {"amount": "1.00", "currency": "USD"},
        "reason": None,
    }

    bought = await api.post("/v1/domains", json={"name": name, "years": 2})
    assert bought.status_code == 202, bought.text
    assert bought.json()["status"] == "registering"
    assert bought.json()["registrar"] == "sandbox"

    domain = await wait_domain(api, name, "active")
    assert domain["expires_at"] and domain["verified_at"] and domain["failure"] is None
    assert domain["verification"]["nameservers"] == NAMESERVERS
    assert (await api.get("/v1/domains/check", params={"name": name})).json()["available"] is False
    listed = (await api.get("/v1/domains")).json()["items"]
    assert [d["name"] for d in listed] == [name]

    site = await create_site(api, name)
    deployment = await wait_deployment(api, site["latest_deployment_id"])
    assert deployment["status"] == "live", deployment
    records = await wait_dns_verified(api, site["id"])
    assert (f"proxy.{name}.", "A") in {(r["name"], r["type"]) for r in records}
    assert await query(domains_platform.dns_port, f"proxy.{name}", "A") == (
        "NOERROR",
        ["127.0.0.1"],
    )
    page = await domains_platform.fetch_site(name)
    assert page.status_code == 200 and deployment["id"] in page.text


async def test_bring_your_own_domain_is_published_only_once_verified(
    api: httpx.AsyncClient, domains_platform: Platform
) -> None:
    name = unique("brought")
    brought = await api.post("/v1/domains", json={"name": name, "bring_your_own": True})
    assert brought.status_code == 201, brought.text
    domain = brought.json()
    assert domain["status"] == "pending_verification" and domain["registrar"] is None
    challenge = domain["verification"]
    assert challenge["txt_name"] == f"_sitefleet-challenge.{name}"
    assert len(challenge["txt_value"]) >= 20
    assert challenge["nameservers"] == NAMESERVERS

    # A site on it can be created and deployed; its records wait for the verification.
    site = await create_site(api, name)
    assert (await wait_deployment(api, site["latest_deployment_id"]))["status"] == "live"
    assert (await domains_platform.fetch_site(name)).status_code == 200
    assert await dns_records(api, site["id"]) == []
    assert (await query(domains_platform.dns_port, f"proxy.{name}", "A"))[1] == []

    failed = await api.post(f"/v1/domains/{name}/verify")
    assert failed.status_code == 200, failed.text
    assert failed.json()["status"] == "pending_verification"
    assert failed.json()["failure"]["code"] == "verification_failed"
    assert challenge["txt_name"] in failed.json()["failure"]["message"]
    assert await dns_records(api, site["id"]) == []

    await publish_challenge(domains_platform, name, challenge["txt_value"])
    verified = await api.post(f"/v1/domains/{name}/verify")
    assert verified.status_code == 200, verified.text
    body = verified.json()
    assert body["status"] == "active" and body["verified_at"] and body["delegated"] is True
    assert body["failure"] is None

    records = await wait_dns_verified(api, site["id"])
    assert {(r["name"], r["type"]) for r in records} == {
        (f"proxy.{name}.", "A"),
        (f"{name}.", "ALIAS"),
        (f"www.{name}.", "CNAME"),
        (f"media.{name}.", "CNAME"),
    }
    assert await query(domains_platform.dns_port, f"proxy.{name}", "A") == (
        "NOERROR",
        ["127.0.0.1"],
    )


async def test_the_periodic_check_verifies_a_brought_domain(
    api: httpx.AsyncClient, domains_platform: Platform
) -> None:
    name = unique("checked")
    domain = (await api.post("/v1/domains", json={"name": name, "bring_your_own": True})).json()
    await publish_challenge(domains_platform, name, domain["verification"]["txt_value"])
    active = await wait_domain(api, name, "active")  # nobody called /verify
    assert active["verified_at"] and active["delegated"] is True


async def test_a_registrar_refusal_fails_the_domain_and_alerts(
    api: httpx.AsyncClient, domains_platform: Platform
) -> None:
    name = unique("declined")
    bought = await api.post("/v1/domains", json={"name": name, "years": 1})
    assert bought.status_code == 202, bought.text
    failed = await wait_domain(api, name, "failed")
    assert failed["failure"]["code"] == "registrar_rejected"
    assert "declined" in failed["failure"]["message"]

    async def alerted() -> list[dict[str, Any]]:
        return [
            r["body"]
            for r in domains_platform.webhook.received
            if r["body"].get("type") == "domain.failed" and name in r["body"].get("summary", "")
        ]

    [alert] = await wait_until(alerted, timeout=30, what="the domain.failed alert")
    assert alert["error"]["code"] == "registrar_rejected"

    async def listed() -> list[dict[str, Any]]:  # the tenant sees it in its alerts too
        items: list[dict[str, Any]] = (await api.get("/v1/alerts")).json()["items"]
        return [a for a in items if name in a["summary"]]

    [group] = await wait_until(listed, timeout=30, what="the tenant's alert group")
    assert group["status"] == "firing" and group["count"] == 1


async def test_a_repeated_purchase_request_buys_once(api: httpx.AsyncClient) -> None:
    name = unique("once")
    headers = {"Idempotency-Key": f"buy-{name}"}
    first = await api.post("/v1/domains", json={"name": name, "years": 1}, headers=headers)
    second = await api.post("/v1/domains", json={"name": name, "years": 1}, headers=headers)
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json() == first.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    await wait_domain(api, name, "active")
    assert [d["name"] for d in (await api.get("/v1/domains")).json()["items"]] == [name]


async def test_an_expired_domain_takes_its_sites_dns_down(
    api: httpx.AsyncClient, domains_platform: Platform
) -> None:
    name = unique("lapsing")
    assert (await api.post("/v1/domains", json={"name": name, "years": 1})).status_code == 202
    await wait_domain(api, name, "active")
    site = await create_site(api, name)
    await wait_dns_verified(api, site["id"])
    off = await api.patch(f"/v1/domains/{name}", json={"auto_renew": False})
    assert off.status_code == 200 and off.json()["auto_renew"] is False

    # A year goes by: the registration's expiry (as the registrar told the DNS service) passes.
    engine = create_engine(domains_platform.database_url, application_name="tests", pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            await session.execute(
                update(RegistrarOrder)
                .where(RegistrarOrder.name == name)
                .values(expires_at=utcnow() - timedelta(minutes=1))
            )
    finally:
        await engine.dispose()

    await wait_domain(api, name, "expired")

    async def records_gone() -> bool:
        return await dns_records(api, site["id"]) == []

    await wait_until(records_gone, timeout=60, what="the site's DNS records removed")
    assert (await query(domains_platform.dns_port, f"proxy.{name}", "A"))[1] == []
    assert (await api.get(f"/v1/sites/{site['id']}")).status_code == 200  # the site stays

    async def alerted() -> list[dict[str, Any]]:
        return [
            r["body"]
            for r in domains_platform.webhook.received
            if r["body"].get("error", {}).get("code") == "domain_expired"
            and name in r["body"].get("summary", "")
        ]

    await wait_until(alerted, timeout=30, what="the domain_expired alert")


async def test_a_brought_domain_cannot_be_auto_renewed(api: httpx.AsyncClient) -> None:
    name = unique("mine")
    await api.post("/v1/domains", json={"name": name, "bring_your_own": True})
    refused = await api.patch(f"/v1/domains/{name}", json={"auto_renew": True})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "not_renewable"
