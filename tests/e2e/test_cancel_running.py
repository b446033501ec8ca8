"""Cancelling a deployment whose build is running kills the build at once; the deployer
acks the job and goes on with other work."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

from shared.settings import PROJECT_ROOT
from tests.e2e.helpers import landing_params, wait_deployment
from tests.fixtures.components import world_readable_tempdir
from tests.fixtures.platform import PlatformFactory, wait_until


def templates_with_slow_build(marker: str) -> Path:
    root = world_readable_tempdir("templates")
    shutil.copytree(PROJECT_ROOT / "templates" / "landing", root / "landing")
    pack = root / "slow" / "1.0.0"
    (pack / "src").mkdir(parents=True)
    (pack / "src" / "index.html.j2").write_text("<title>{{ params.title }}</title>")
    (pack / "manifest.json").write_text(
        json.dumps(
            {
                "name": "slow",
                "version": "1.0.0",
                "title": "Slow",
                "description": "Builds slowly.",
                "params_schema": {"type": "object", "properties": {"title": {"type": "string"}}},
                "preview_params": {"title": "Slow"},
                "nginx_profile": "static",
                "build": [{"run": ["/usr/bin/sleep", marker]}],
            }
        )
    )
    return root


def build_running(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode == 0


async def test_cancel_kills_a_running_build(platforms: PlatformFactory) -> None:
    marker = f"50.{uuid.uuid4().int % 10**9:09d}"  # a sleep nobody else runs
    templates = templates_with_slow_build(marker)
    try:
        platform = await platforms.start(
            "cancelrun",
            services=("api", "deployer"),
            extra_env={"SITEFLEET_TEMPLATES_DIR": str(templates)},
        )
        async with platform.client(await platform.new_tenant()) as api:
            slow = (
                await api.post(
                    "/v1/sites",
                    json={
                        "domain": "slow.example",
                        "template": "slow",
                        "params": {"title": "Slow"},
                    },
                )
            ).json()
            dep_id = slow["latest_deployment_id"]

            async def started() -> bool:
                return build_running(marker)

            await wait_until(started, timeout=60, what="the slow build to start")
            response = await api.post(f"/v1/deployments/{dep_id}/cancel")
            assert response.status_code == 202

            async def killed() -> bool:
                return not build_running(marker)

            await wait_until(killed, timeout=20, what="the build to be killed")
            assert (await api.get(f"/v1/deployments/{dep_id}")).json()["status"] == "cancelled"
            assert (await platform.fetch_site("slow.example")).status_code == 404

            other = (
                await api.post(
                    "/v1/sites",
                    json={
                        "domain": "next.example",
                        "template": "landing",
                        "params": landing_params("Next"),
                    },
                )
            ).json()
            assert (await wait_deployment(api, other["latest_deployment_id"]))["status"] == "live"
    finally:
        shutil.rmtree(templates, ignore_errors=True)
