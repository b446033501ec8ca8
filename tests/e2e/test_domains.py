"""Domains through the API, on a platform that enforces domain ownership (the production
default) and sells through the sandbox registrar: buy one and put a site on it; bring one,
fail and then pass verification, and see the site's records published only then."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from shared.db import create_engine, create_sessionmaker
from shared.models import RegistrarOrder
from shared.timeutil import utcnow
from tests.e2e.helpers import landing_params, query, wait_deployment
from tests.fixtures.platform import Platform, PlatformFactory, wait_until

NAMESERVERS = ["ns1.sitefleet.test.", "ns2.sitefleet.test."]
FAST_ALERTS = {
    "SITEFLEET_GROUP_WAIT": "0.2",
    "SITEFLEET_GROUP_INTERVAL": "0.5",
    "SITEFLEET_POLL_INTERVAL": "0.1",
    "SITEFLEET_DELIVERY_POLL_INTERVAL": "0.2",
}


@pytest.fixture(scope="module")
async def enforcing(platforms: PlatformFactory) -> Platform:
    return await platforms.start(
        "domains",
        extra_env={
            "SITEFLEET_DOMAIN_OWNERSHIP": "enforce",
            "SITEFLEET_REGISTRAR": "sandbox",
            "SITEFLEET_DOMAIN_CHECK_INTERVAL": "1",
            "SITEFLEET_DOMAIN_RENEW_INTERVAL": "1",
            **FAST_ALERTS,
        },
    )


@pytest.fixture
async def api(enforcing: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with enforcing.client(await enforcing.new_tenant()) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.test"


async def wait_domain(api: httpx.AsyncClient, name: str, status: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        body = (await api.get(f"/v1/domains/{name}")).json()
        return body if body["status"] == status else None

    found: dict[str, Any] = await wait_until(reached, timeout=60, what=f"{name} {status}")
    return found


async def dns_records(api: httpx.AsyncClient, site_id: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/sites/{site_id}/dns")
    assert response.status_code == 200, response.text
    records: list[dict[str, Any]] = response.json()["records"]
    return records


async def wait_dns_verified(api: httpx.AsyncClient, site_id: str) -> list[dict[str, Any]]:
    async def verified() -> list[dict[str, Any]] | None:
        records = await dns_records(api, site_id)
        return records if records and all(r["status"] == "verified" for r in records) else None

    found: list[dict[str, Any]] = await wait_until(verified, timeout=60, what="DNS verified")
    return found


async def create_site(api: httpx.AsyncClient, domain: str) -> dict[str, Any]:
    created = await api.post(
        "/v1/sites",
        json={"domain": domain, "template": "landing", "params": landing_params("Rosa's")},
    )
    assert created.status_code == 201, created.text
    site: dict[str, Any] = created.json()
    return site


async def test_buy_a_domain_and_put_a_live_site_on_it(
    api: httpx.AsyncClient, enforcing: Platform
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
    assert await query(enforcing.dns_port, f"proxy.{name}", "A") == ("NOERROR", ["127.0.0.1"])
    page = await enforcing.fetch_site(name)
    assert page.status_code == 200 and deployment["id"] in page.text


async def publish_challenge(
    platform: Platform, name: str, txt_value: str, *more: str, new_zone: bool = True
) -> None:
    """What the customer does at their DNS host: the challenge TXT record(s), and the
    delegation to our nameservers (here both live in the test PowerDNS)."""
    async with httpx.AsyncClient(
        base_url=f"{platform.pdns_api_url}/api/v1/servers/localhost",
        headers={"X-API-Key": platform.pdns_api_key},
    ) as pdns:
        if new_zone:
            created = await pdns.post(
                "/zones", json={"name": f"{name}.", "kind": "Native", "nameservers": NAMESERVERS}
            )
            assert created.status_code == 201, created.text
        patched = await pdns.patch(
            f"/zones/{name}.",
            json={
                "rrsets": [
                    {
                        "name": f"_sitefleet-challenge.{name}.",
                        "type": "TXT",
                        "ttl": 60,
                        "changetype": "REPLACE",
                        "records": [
                            {"content": f'"{value}"', "disabled": False}
                            for value in (txt_value, *more)
                        ],
                    }
                ]
            },
        )
        assert patched.status_code == 204, patched.text


async def test_bring_your_own_domain_is_published_only_once_verified(
    api: httpx.AsyncClient, enforcing: Platform
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
    assert (await enforcing.fetch_site(name)).status_code == 200
    assert await dns_records(api, site["id"]) == []
    assert (await query(enforcing.dns_port, f"proxy.{name}", "A"))[1] == []

    failed = await api.post(f"/v1/domains/{name}/verify")
    assert failed.status_code == 200, failed.text
    assert failed.json()["status"] == "pending_verification"
    assert failed.json()["failure"]["code"] == "verification_failed"
    assert challenge["txt_name"] in failed.json()["failure"]["message"]
    assert await dns_records(api, site["id"]) == []

    await publish_challenge(enforcing, name, challenge["txt_value"])
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
    assert await query(enforcing.dns_port, f"proxy.{name}", "A") == ("NOERROR", ["127.0.0.1"])


async def test_the_periodic_check_verifies_a_brought_domain(
    api: httpx.AsyncClient, enforcing: Platform
) -> None:
    name = unique("checked")
    domain = (await api.post("/v1/domains", json={"name": name, "bring_your_own": True})).json()
    await publish_challenge(enforcing, name, domain["verification"]["txt_value"])
    active = await wait_domain(api, name, "active")  # nobody called /verify
    assert active["verified_at"] and active["delegated"] is True


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("xn--zz.test", "xn-- garbage"),
        ("example..com", "an empty label"),
        ("co.uk", "a public suffix"),
        ("github.io", "a public suffix"),
        ("аpple.com", "mixed scripts"),
    ],
)
async def test_bad_names_are_refused(api: httpx.AsyncClient, name: str, why: str) -> None:
    for body in ({"name": name, "bring_your_own": True}, {"name": name, "years": 1}):
        response = await api.post("/v1/domains", json=body)
        assert response.status_code == 422, (why, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_domain"
        assert error["details"]["fields"][0]["field"] == "name"
    assert (await api.get("/v1/domains/check", params={"name": name})).status_code == 422
    assert (await api.get("/v1/domains")).json()["items"] == []


async def test_only_a_registrable_domain_can_be_bought(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/domains", json={"name": f"www.{unique('shop')}"})
    assert response.status_code == 422
    assert "registrable" in response.json()["error"]["message"]


async def test_another_tenants_domain_cannot_be_claimed(enforcing: Platform) -> None:
    owner_token, other_token = await enforcing.new_tenant(), await enforcing.new_tenant()
    name = unique("orchard")
    async with enforcing.client(owner_token) as owner, enforcing.client(other_token) as other:
        mine = await owner.post("/v1/domains", json={"name": name, "years": 1})
        assert mine.status_code == 202, mine.text
        await wait_domain(owner, name, "active")
        owner_tenant = (await owner.get("/v1/me")).json()["tenant"]

        for body in (
            {"name": name, "bring_your_own": True},
            {"name": name, "years": 1},
            {"name": f"shop.{name}", "bring_your_own": True},
        ):
            taken = await other.post("/v1/domains", json=body)
            assert taken.status_code == 409, taken.text
            assert taken.json()["error"]["code"] == "domain_unavailable"
            for secret in (owner_tenant["id"], owner_tenant["name"]):
                assert secret not in taken.text  # nothing about who has it
        assert (await other.get(f"/v1/domains/{name}")).status_code == 404
        assert (await other.post(f"/v1/domains/{name}/verify")).status_code == 404
        for domain in (name, f"blog.{name}"):
            site = await other.post(
                "/v1/sites",
                json={"domain": domain, "template": "landing", "params": landing_params("x")},
            )
            assert site.status_code == 409, site.text
            assert owner_tenant["id"] not in site.text
        # The owner adding it again is told it is already theirs.
        again = await owner.post("/v1/domains", json={"name": name, "bring_your_own": True})
        assert again.status_code == 409 and again.json()["error"]["code"] == "domain_exists"


async def test_an_unproven_claim_does_not_lock_out_the_owner(enforcing: Platform) -> None:
    """Someone claims a domain they cannot prove; its real owner still brings, proves and
    uses it, and the squatter's claim can then never pass."""
    name = unique("squatted")
    async with (
        enforcing.client(await enforcing.new_tenant()) as squatter,
        enforcing.client(await enforcing.new_tenant()) as owner,
    ):
        squat = await squatter.post("/v1/domains", json={"name": name, "bring_your_own": True})
        assert squat.status_code == 201, squat.text
        real = await owner.post("/v1/domains", json={"name": name, "bring_your_own": True})
        assert real.status_code == 201, real.text
        assert real.json()["verification"]["txt_value"] != squat.json()["verification"]["txt_value"]
        site = await create_site(owner, name)

        await publish_challenge(enforcing, name, real.json()["verification"]["txt_value"])
        proved = await owner.post(f"/v1/domains/{name}/verify")
        assert proved.json()["status"] == "active", proved.text
        await wait_dns_verified(owner, site["id"])

        refused = await squatter.post(f"/v1/domains/{name}/verify")
        assert refused.status_code == 200
        assert refused.json()["status"] == "pending_verification"
        assert refused.json()["failure"]["code"] == "verification_failed"
        # Even a record for the second claim (say, the domain changed hands) cannot take
        # it from the tenant who proved it first.
        await publish_challenge(
            enforcing,
            name,
            real.json()["verification"]["txt_value"],
            squat.json()["verification"]["txt_value"],
            new_zone=False,
        )
        late = await squatter.post(f"/v1/domains/{name}/verify")
        assert late.json()["status"] == "pending_verification"
        assert late.json()["failure"]["code"] == "domain_unavailable"
        assert (await owner.get(f"/v1/domains/{name}")).json()["status"] == "active"
        squat_site = await squatter.post(
            "/v1/sites",
            json={"domain": f"www2.{name}", "template": "landing", "params": landing_params("x")},
        )
        assert squat_site.status_code == 409, squat_site.text


async def test_a_homograph_of_a_customers_domain_is_refused(enforcing: Platform) -> None:
    async with (
        enforcing.client(await enforcing.new_tenant()) as owner,
        enforcing.client(await enforcing.new_tenant()) as other,
    ):
        latin = await owner.post("/v1/domains", json={"name": "apple.test", "years": 1})
        assert latin.status_code == 202, latin.text
        # Every letter Cyrillic (so no mixed-script label): "аррӏе" looks like "apple".
        cyrillic = await other.post(
            "/v1/domains", json={"name": "аррӏе.test", "bring_your_own": True}
        )
        assert cyrillic.status_code == 409, cyrillic.text
        assert cyrillic.json()["error"]["code"] == "domain_confusable"
        assert (await other.get("/v1/domains")).json()["items"] == []


async def test_an_unavailable_name_is_refused_before_any_purchase(api: httpx.AsyncClient) -> None:
    name = unique("taken")
    checked = (await api.get("/v1/domains/check", params={"name": name})).json()
    assert checked["available"] is False and checked["price"] is None
    bought = await api.post("/v1/domains", json={"name": name, "years": 1})
    assert bought.status_code == 409
    assert bought.json()["error"]["code"] == "domain_unavailable"


async def test_a_registrar_refusal_fails_the_domain_and_alerts(
    api: httpx.AsyncClient, enforcing: Platform
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
            for r in enforcing.webhook.received
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
    api: httpx.AsyncClient, enforcing: Platform
) -> None:
    name = unique("lapsing")
    assert (await api.post("/v1/domains", json={"name": name, "years": 1})).status_code == 202
    await wait_domain(api, name, "active")
    site = await create_site(api, name)
    await wait_dns_verified(api, site["id"])
    off = await api.patch(f"/v1/domains/{name}", json={"auto_renew": False})
    assert off.status_code == 200 and off.json()["auto_renew"] is False

    # A year goes by: the registration's expiry (as the registrar told the DNS service) passes.
    engine = create_engine(enforcing.database_url, application_name="tests", pool_size=1)
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
    assert (await query(enforcing.dns_port, f"proxy.{name}", "A"))[1] == []
    assert (await api.get(f"/v1/sites/{site['id']}")).status_code == 200  # the site stays

    async def alerted() -> list[dict[str, Any]]:
        return [
            r["body"]
            for r in enforcing.webhook.received
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
