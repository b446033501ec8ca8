"""A deployer killed with SIGKILL in the middle of an upload: the job is redelivered, the
deployment completes, and nginx never serves a partial release."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import httpx

from shared.settings import PROJECT_ROOT
from tests.e2e.helpers import wait_deployment
from tests.fixtures.components import world_readable_tempdir
from tests.fixtures.platform import PlatformFactory, wait_until

FILES = 3000

# A build step writes FILES pages of 4 KiB, each naming the release (read from index.html).
BUILD_SCRIPT = f"""
import os, re
html = open("index.html").read()
rid = re.search(r'content="(dep_[0-9a-f]+)"', html).group(1)
os.makedirs("files", exist_ok=True)
for i in range({FILES}):
    open(f"files/{{i}}.txt", "w").write(f"{{rid}} {{i}} ".ljust(4096, "x"))
"""

BULK_MANIFEST = {
    "name": "bulk",
    "version": "1.0.0",
    "title": "Bulk",
    "description": "Many files.",
    "params_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["title"],
        "properties": {"title": {"type": "string", "minLength": 1, "maxLength": 80}},
    },
    "preview_params": {"title": "Bulk"},
    "nginx_profile": "static",
    "build": [{"run": ["/usr/bin/python3", "-c", BUILD_SCRIPT]}],
}
INDEX = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="sitefleet-release" content="{{ release.id }}">'
    "<title>{{ params.title }}</title></head><body><h1>{{ params.title }}</h1></body></html>"
)


def templates_with_bulk() -> Path:
    root = world_readable_tempdir("templates")
    shutil.copytree(PROJECT_ROOT / "templates" / "landing", root / "landing")
    pack = root / "bulk" / "1.0.0"
    (pack / "src").mkdir(parents=True)
    (pack / "manifest.json").write_text(json.dumps(BULK_MANIFEST))
    (pack / "src" / "index.html.j2").write_text(INDEX)
    return root


async def test_sigkill_mid_upload_is_redelivered_and_never_half_served(
    platforms: PlatformFactory,
) -> None:
    templates = templates_with_bulk()
    try:
        platform = await platforms.start(
            "crash",
            services=("api", "deployer"),
            extra_env={
                "SITEFLEET_TEMPLATES_DIR": str(templates),
                # Every phase reported as it starts: the test watches deployments in flight.
                "SITEFLEET_PROGRESS_REPORT_DELAY": "0",
            },
        )
        async with platform.client(await platform.new_tenant()) as api:
            site = (
                await api.post(
                    "/v1/sites",
                    json={
                        "domain": "bulk.example",
                        "template": "bulk",
                        "params": {"title": "Bulk"},
                    },
                )
            ).json()
            dep_id = site["latest_deployment_id"]

            async def uploading() -> bool:
                dep = (await api.get(f"/v1/deployments/{dep_id}")).json()
                assert dep["status"] not in ("live", "failed"), dep
                return dep["status"] == "uploading"

            await wait_until(uploading, timeout=60, interval=0.02, what="the upload to start")
            os.killpg(platform.procs["deployer"].pid, signal.SIGKILL)
            platform.procs["deployer"].wait()
            # Whatever was half-written is not served: the site has no current release.
            assert (await platform.fetch_site("bulk.example")).status_code == 404
            assert (await platform.fetch_site("bulk.example", "/files/0.txt")).status_code == 404

            platform.start_service("deployer")
            done = await wait_deployment(api, dep_id, timeout=120)
            assert done["status"] == "live", done
            assert done["stats"]["files"] == FILES + 1
            async with httpx.AsyncClient(timeout=5) as web:
                for i in (0, FILES // 2, FILES - 1):
                    page = await web.get(
                        f"http://127.0.0.1:{platform.http_port}/files/{i}.txt",
                        headers={"Host": "bulk.example"},
                    )
                    assert page.status_code == 200
                    assert page.text.startswith(f"{dep_id} {i} ")
                    assert len(page.content) == 4096
    finally:
        shutil.rmtree(templates, ignore_errors=True)
