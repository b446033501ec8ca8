"""Tokens and tenants: who may call what."""

from __future__ import annotations

import os
import subprocess

import httpx

from tests.fixtures.platform import Platform


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


async def test_me_names_the_tenant_and_token(platform: Platform) -> None:
    token = await platform.new_tenant("acme-me")
    async with platform.client(token) as client:
        me = (await client.get("/v1/me")).json()
    assert me["tenant"]["name"] == "acme-me"
    assert me["tenant"]["id"].startswith("ten_")
    assert me["token"]["name"] == "tests"


async def test_missing_or_wrong_token_is_401(platform: Platform) -> None:
    async with platform.client() as anon:
        assert_error(await anon.get("/v1/me"), 401, "missing_token")
        assert_error(await anon.get("/v1/sites"), 401)
    async with platform.client("sft_not-a-real-token") as wrong:
        assert_error(await wrong.get("/v1/me"), 401, "invalid_token")
    async with httpx.AsyncClient(
        base_url=platform.api_url, headers={"Authorization": "Basic abc"}
    ) as basic:
        assert_error(await basic.get("/v1/me"), 401)


async def test_tokens_are_shown_once_and_can_be_revoked(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    created = await api.post("/v1/tokens", json={"name": "ci"})
    assert created.status_code == 201
    secret = created.json()["token"]
    listed = (await api.get("/v1/tokens")).json()["items"]
    assert "ci" in [t["name"] for t in listed]
    assert all("token" not in t for t in listed)
    async with platform.client(secret) as second:
        assert (await second.get("/v1/me")).status_code == 200
        assert (await api.delete(f"/v1/tokens/{created.json()['id']}")).status_code == 204
        assert_error(await second.get("/v1/me"), 401)


def test_cli_creates_a_tenant_whose_token_works(platform: Platform) -> None:
    env = {**os.environ, "SITEFLEET_DATABASE_URL": platform.database_url}
    out = subprocess.run(
        [".venv/bin/sitefleet", "tenant", "create", "cli-made-tenant"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    token = next(line.split()[1] for line in out.splitlines() if line.startswith("token "))
    me = httpx.get(f"{platform.api_url}/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["tenant"]["name"] == "cli-made-tenant"
    again = subprocess.run(
        [".venv/bin/sitefleet", "tenant", "create", "cli-made-tenant"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1
    assert "already exists" in again.stderr


async def test_health_and_openapi(platform: Platform) -> None:
    async with platform.client() as anon:
        assert (await anon.get("/healthz")).json() == {"status": "ok"}
        ready = await anon.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"postgres": True, "rabbitmq": True}
        spec = (await anon.get("/openapi.json")).json()
        assert "/v1/sites" in spec["paths"]
        assert "/v1/sites/{site_id}/deployments" in spec["paths"]
        metrics = await anon.get("/metrics/")
        assert metrics.status_code == 200
        assert "python_info" in metrics.text


async def test_request_metrics_use_route_templates(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    await api.get("/v1/sites/site_0000000000000000000000000000")
    async with platform.client() as anon:
        text = (await anon.get("/metrics/")).text
    assert (
        'sitefleet_api_requests_total{method="GET",route="/v1/sites/{site_id}",status="404"}'
    ) in text
    assert "site_0000000000000000000000000000" not in text
