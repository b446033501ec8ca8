"""`sitefleet dns plan` shows drift without changing anything; `sitefleet dns sync` heals."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import httpx

from tests.e2e.helpers import landing_params, query, wait_deployment
from tests.fixtures.platform import Platform, wait_until


def cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [".venv/bin/sitefleet", "dns", *args],
        text=True,
        capture_output=True,
        env={**os.environ, **platform.env},
        timeout=60,
    )


async def test_plan_shows_hand_made_drift_and_sync_heals_it(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    domain = "dnscli.example"
    created = (
        await api.post(
            "/v1/sites",
            json={"domain": domain, "template": "landing", "params": landing_params("DNS")},
        )
    ).json()
    await wait_deployment(api, created["latest_deployment_id"])

    async def verified() -> bool:
        records = (await api.get(f"/v1/sites/{created['id']}/dns")).json()["records"]
        return bool(records) and all(r["status"] == "verified" for r in records)

    await wait_until(verified, timeout=60, what="DNS verified")
    clean = await asyncio.to_thread(cli, platform, "plan", domain)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["empty"] is True

    async with httpx.AsyncClient() as http:  # an admin deletes a record by hand
        (
            await http.patch(
                f"{platform.pdns_api_url}/api/v1/servers/localhost/zones/{domain}.",
                headers={"X-API-Key": platform.pdns_api_key},
                json={
                    "rrsets": [
                        {"name": f"media.{domain}.", "type": "CNAME", "changetype": "DELETE"}
                    ]
                },
            )
        ).raise_for_status()
    drift = json.loads((await asyncio.to_thread(cli, platform, "plan", domain)).stdout)
    assert drift["empty"] is False
    assert [(r["name"], r["type"]) for r in drift["replace"]] == [(f"media.{domain}.", "CNAME")]
    assert (await query(platform.dns_port, f"media.{domain}", "CNAME"))[1] == []  # plan only

    synced = await asyncio.to_thread(cli, platform, "sync", domain)
    assert synced.returncode == 0, synced.stderr
    assert "1 site(s)" in synced.stdout

    async def healed() -> list[str]:
        return (await query(platform.dns_port, f"media.{domain}", "CNAME"))[1]

    assert await wait_until(healed, timeout=30, what="the record to come back")
    unknown = await asyncio.to_thread(cli, platform, "plan", "nosuchsite.example")
    assert unknown.returncode == 1 and "no site" in unknown.stderr
