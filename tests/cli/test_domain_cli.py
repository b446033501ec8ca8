"""`sitefleet domain list` shows every tenant's domains with their purchase orders;
`sitefleet domain check` asks the configured registrar (here the sandbox)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid

import httpx

from tests.fixtures.platform import Platform, wait_until


def cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [".venv/bin/sitefleet", "domain", *args],
        text=True,
        capture_output=True,
        env={**os.environ, **platform.env},
        timeout=60,
    )


async def test_list_shows_a_bought_domain_with_its_order(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}.test"
    assert (await api.post("/v1/domains", json={"name": name, "years": 1})).status_code == 202
    tenant = (await api.get("/v1/me")).json()["tenant"]["name"]

    async def listed() -> str | None:
        done = await asyncio.to_thread(cli, platform, "list", "--tenant", tenant)
        assert done.returncode == 0, done.stderr
        return done.stdout if " active " in done.stdout else None

    out = await wait_until(listed, timeout=60, what="the domain active in the list")
    assert out.startswith(f"{name}  tenant={tenant}  active  registrar=sandbox  order=active x1")


async def test_check_asks_the_configured_registrar(platform: Platform) -> None:
    free = await asyncio.to_thread(cli, platform, "check", "Fresh-Name.com")
    assert free.returncode == 0, free.stderr
    assert json.loads(free.stdout) == {
        "registrar": "sandbox",
        "name": "fresh-name.com",
        "available": True,
        "price": {"amount": "12.00", "currency": "USD"},
        "reason": None,
    }
    taken = await asyncio.to_thread(cli, platform, "check", "taken.com")
    assert json.loads(taken.stdout)["available"] is False
    bad = await asyncio.to_thread(cli, platform, "check", "example..com")
    assert bad.returncode == 1 and "not a valid domain name" in bad.stderr
