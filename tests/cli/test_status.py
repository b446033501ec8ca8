"""`sitefleet status` reports a healthy platform with exit 0, and names what is wrong."""

from __future__ import annotations

import asyncio
import os
import subprocess

from tests.fixtures.platform import Platform


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
