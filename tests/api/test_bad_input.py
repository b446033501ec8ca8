"""Bad input gets its 4xx with the API's error body, loses nothing and reaches nothing."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.api.test_identity import assert_error
from tests.fixtures.platform import Platform

GOOD_PARAMS = {"title": "Acme", "contact_email": "hi@acme.test"}

BAD_DOMAINS = [
    "a..b",
    "-x.com",
    "x" * 300 + ".com",
    "evil.com; include /etc/passwd",
    "../../etc",
    "exa mple.com",
    "",
    "localhost",
    "1.2.3.4",
    "evil.com/../../x",
    "evil.com\nserver_name x",
    "$host.com",
    "www.bakery.example",  # derived names are created for each site, never sites themselves
    "proxy.bakery.example",
    "co.uk",  # a public suffix nobody can own
    "github.io",
    "аpple.com",  # a homograph: Cyrillic а among Latin letters
    "xn--zz.com",  # xn-- garbage
]


def site_body(domain: str, **extra: object) -> dict:
    return {"domain": domain, "template": "landing", "params": GOOD_PARAMS, **extra}


@pytest.mark.parametrize("domain", BAD_DOMAINS)
async def test_invalid_domain_is_422_and_touches_nothing(
    api: httpx.AsyncClient, platform: Platform, domain: str
) -> None:
    before = set(os.listdir(platform.sites_root))
    error = assert_error(await api.post("/v1/sites", json=site_body(domain)), 422, "invalid_domain")
    assert error["details"]["fields"][0]["field"] == "domain"
    assert set(os.listdir(platform.sites_root)) == before
    assert (await api.get("/v1/sites")).json()["items"] == []


async def test_unknown_template_or_version_is_422(api: httpx.AsyncClient) -> None:
    error = assert_error(
        await api.post("/v1/sites", json={**site_body("a.example"), "template": "nope"}),
        422,
        "template_not_found",
    )
    assert error["details"]["fields"][0]["field"] == "template"
    error = assert_error(
        await api.post("/v1/sites", json=site_body("a.example", template_version="9.9.9")),
        422,
        "template_version_not_found",
    )
    assert error["details"]["fields"][0]["field"] == "template_version"
    assert "1.0.0" in error["details"]["versions"]


async def test_params_breaking_the_schema_name_each_field(api: httpx.AsyncClient) -> None:
    body = {
        "domain": "b.example",
        "template": "landing",
        "params": {
            "title": "",
            "contact_email": "not-an-email",
            "accent_color": "red;}</style>",
            "sections": [{"heading": "x"}],
            "unknown": 1,
        },
    }
    error = assert_error(await api.post("/v1/sites", json=body), 422, "validation_failed")
    fields = {f["field"] for f in error["details"]["fields"]}
    assert {
        "params.title",
        "params.contact_email",
        "params.accent_color",
        "params.sections[0]",
        "params",
    } <= fields


async def test_missing_fields_and_wrong_types_are_422(api: httpx.AsyncClient) -> None:
    error = assert_error(await api.post("/v1/sites", json={"domain": 5}), 422, "validation_failed")
    fields = {f["field"] for f in error["details"]["fields"]}
    assert {"domain", "template"} <= fields
    assert_error(await api.post("/v1/sites", json={**site_body("c.example"), "extra": 1}), 422)


async def test_malformed_bodies_are_400(api: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "application/json"}
    assert_error(
        await api.post("/v1/sites", content=b"{not json", headers=headers), 400, "malformed_request"
    )
    assert_error(
        await api.post("/v1/sites", content=b"[1, 2]", headers=headers), 400, "malformed_request"
    )
    assert_error(await api.post("/v1/sites", content=b"\xff\xfe", headers=headers), 400)


async def test_ten_megabyte_body_is_413(api: httpx.AsyncClient) -> None:
    big = b'{"domain": "' + b"a" * (10 * 1024 * 1024) + b'"}'
    assert_error(
        await api.post("/v1/sites", content=big, headers={"Content-Type": "application/json"}),
        413,
        "body_too_large",
    )

    async def chunks():  # no Content-Length: the limit holds for streamed bodies too
        for _ in range(20):
            yield b"a" * (512 * 1024)

    assert_error(
        await api.post("/v1/sites", content=chunks(), headers={"Content-Type": "application/json"}),
        413,
    )


async def test_another_tenants_site_is_404(api: httpx.AsyncClient, platform: Platform) -> None:
    created = await api.post("/v1/sites", json=site_body("mine-only.example"))
    assert created.status_code == 201, created.text
    site_id = created.json()["id"]
    other = await platform.new_tenant()
    async with platform.client(other) as intruder:
        for response in (
            await intruder.get(f"/v1/sites/{site_id}"),
            await intruder.patch(f"/v1/sites/{site_id}", json={"params": GOOD_PARAMS}),
            await intruder.delete(f"/v1/sites/{site_id}"),
            await intruder.post(f"/v1/sites/{site_id}/deployments", json={}),
            await intruder.get(f"/v1/sites/{site_id}/deployments"),
            await intruder.get(f"/v1/sites/{site_id}/dns"),
            await intruder.get(f"/v1/deployments/{created.json()['latest_deployment_id']}"),
        ):
            assert_error(response, 404)
        assert (await intruder.get("/v1/sites")).json()["items"] == []
    assert_error(await api.get("/v1/sites/site_doesnotexist"), 404, "site_not_found")


async def test_a_used_domain_is_409_for_everyone(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    assert (await api.post("/v1/sites", json=site_body("taken-once.example"))).status_code == 201
    assert_error(
        await api.post("/v1/sites", json=site_body("Taken-Once.example.")), 409, "domain_in_use"
    )
    other = await platform.new_tenant()
    async with platform.client(other) as second:
        assert_error(await second.post("/v1/sites", json=site_body("taken-once.example")), 409)


async def test_idempotency_key_replays_the_first_response(api: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "create-idem-1"}
    first = await api.post("/v1/sites", json=site_body("idem.example"), headers=headers)
    again = await api.post("/v1/sites", json=site_body("idem.example"), headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers.get("idempotent-replayed") == "true"
    sites = (await api.get("/v1/sites")).json()["items"]
    assert [s["domain"] for s in sites] == ["idem.example"]
    assert_error(
        await api.post("/v1/sites", json=site_body("other.example"), headers=headers),
        409,
        "idempotency_key_reused",
    )


async def test_pagination_walks_every_site_once(api: httpx.AsyncClient) -> None:
    for i in range(5):
        assert (await api.post("/v1/sites", json=site_body(f"p{i}.example"))).status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/sites", params=params)).json()
        seen += [s["domain"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"p{i}.example" for i in reversed(range(5))]
    assert_error(await api.get("/v1/sites", params={"limit": 501}), 422)
    assert_error(await api.get("/v1/sites", params={"cursor": "%%%"}), 422)
