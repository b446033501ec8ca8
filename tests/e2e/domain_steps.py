"""Steps of the domain end-to-end tests: what a customer does through the API and at
their DNS host."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.e2e.helpers import landing_params
from tests.fixtures.platform import NAMESERVERS, Platform, wait_until


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
