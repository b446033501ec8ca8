"""`sitefleet status` reports a healthy platform with exit 0, and names what is wrong."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from urllib.parse import urlparse

from tests.e2e.helpers import landing_params
from tests.fixtures.platform import Platform, PlatformFactory, wait_until
from tests.fixtures.tcp_proxy import TcpProxy


def status(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [".venv/bin/sitefleet", "status", "--api-url", platform.api_url, *args],
        text=True,
        capture_output=True,
        env={**os.environ, **platform.env},
        timeout=60,
    )


async def test_status_is_green_then_names_a_stopped_service(platform: Platform) -> None:
    healthy = await asyncio.to_thread(status, platform)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "API: ready" in healthy.stdout
    assert "deployer.jobs" in healthy.stdout and "All good." in healthy.stdout

    platform.stop_service("notifier")
    try:
        degraded = await asyncio.to_thread(status, platform)
        assert degraded.returncode == 1
        assert "no consumer on notifier.events: its service is down" in degraded.stdout
    finally:
        platform.start_service("notifier")

    unreachable = await asyncio.to_thread(status, platform, "--api-url", "http://127.0.0.1:9")
    assert unreachable.returncode == 1
    assert "API unreachable" in unreachable.stdout


def parked_ids(platform: Platform) -> list[str]:
    listed = subprocess.run(
        [".venv/bin/sitefleet", "jobs", "parked", "--json"],
        text=True,
        capture_output=True,
        env={**os.environ, **platform.env},
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line)["message_id"] for line in listed.stdout.splitlines()]


async def test_status_names_a_parked_job_until_it_is_replayed(platforms: PlatformFactory) -> None:
    """The acceptance path of issue 10: a forced failure parks a job, `status` says so and
    exits 1; once the cause is gone, `sitefleet jobs replay` brings it back to all good."""
    platform = await platforms.start("status-parked")
    await platforms.wait_api(platform)
    # The DNS service reaches PowerDNS's API through a proxy the test can cut, and gives up
    # after one quick retry.
    pdns_port = urlparse(platform.env["SITEFLEET_PDNS_API_URL"]).port
    assert pdns_port is not None
    proxy = TcpProxy(pdns_port)
    await proxy.start()
    platform.stop_service("dns")
    platform.start_service(
        "dns",
        {
            "SITEFLEET_PDNS_API_URL": f"http://127.0.0.1:{proxy.port}",
            "SITEFLEET_RETRY_DELAYS": "[0.2]",
        },
    )
    await platform.wait_consuming("dns.jobs")
    clean = await asyncio.to_thread(status, platform)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    await proxy.cut()
    async with platform.client(await platform.new_tenant()) as api:
        created = await api.post(
            "/v1/sites",
            json={"domain": "parked.example", "template": "landing", "params": landing_params("P")},
        )
        assert created.status_code == 201, created.text

        async def parked() -> subprocess.CompletedProcess[str] | None:
            report = await asyncio.to_thread(status, platform)
            return report if "parked job(s) in dns.jobs.parked" in report.stdout else None

        report = await wait_until(parked, timeout=60, what="the DNS job to be parked")
        assert report.returncode == 1

        await proxy.restore()
        [message_id] = await asyncio.to_thread(parked_ids, platform)
        replayed = subprocess.run(
            [".venv/bin/sitefleet", "jobs", "replay", message_id],
            text=True,
            capture_output=True,
            env={**os.environ, **platform.env},
            timeout=60,
        )
        assert replayed.returncode == 0, replayed.stderr

        async def all_good() -> subprocess.CompletedProcess[str] | None:
            report = await asyncio.to_thread(status, platform)
            return report if report.returncode == 0 else None

        healed = await wait_until(all_good, timeout=60, what="status to be clean again")
        assert "All good." in healed.stdout
        records = (await api.get(f"/v1/sites/{created.json()['id']}/dns")).json()["records"]
        assert records and {r["status"] for r in records} == {"verified"}
    await proxy.cut()
