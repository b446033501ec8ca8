"""Who may have which name, through the API with ownership enforced: bad names, names
another tenant has, unproven claims, homographs, names the registrar does not sell."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.e2e.domain_steps import (
    create_site,
    publish_challenge,
    unique,
    wait_dns_verified,
    wait_domain,
)
from tests.e2e.helpers import landing_params
from tests.fixtures.platform import Platform


@pytest.fixture
async def api(domains_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with domains_platform.client(await domains_platform.new_tenant()) as client:
        yield client


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


async def test_another_tenants_domain_cannot_be_claimed(domains_platform: Platform) -> None:
    owner_token, other_token = (
        await domains_platform.new_tenant(),
        await domains_platform.new_tenant(),
    )
    name = unique("orchard")
    async with (
        domains_platform.client(owner_token) as owner,
        domains_platform.client(other_token) as other,
    ):
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


async def test_an_unproven_claim_does_not_lock_out_the_owner(domains_platform: Platform) -> None:
    """Someone claims a domain they cannot prove; its real owner still brings, proves and
    uses it, and the squatter's claim can then never pass."""
    name = unique("squatted")
    async with (
        domains_platform.client(await domains_platform.new_tenant()) as squatter,
        domains_platform.client(await domains_platform.new_tenant()) as owner,
    ):
        squat = await squatter.post("/v1/domains", json={"name": name, "bring_your_own": True})
        assert squat.status_code == 201, squat.text
        real = await owner.post("/v1/domains", json={"name": name, "bring_your_own": True})
        assert real.status_code == 201, real.text
        assert real.json()["verification"]["txt_value"] != squat.json()["verification"]["txt_value"]
        site = await create_site(owner, name)

        await publish_challenge(domains_platform, name, real.json()["verification"]["txt_value"])
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
            domains_platform,
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


async def test_a_homograph_of_a_customers_domain_is_refused(domains_platform: Platform) -> None:
    async with (
        domains_platform.client(await domains_platform.new_tenant()) as owner,
        domains_platform.client(await domains_platform.new_tenant()) as other,
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
