"""`sitefleet sites redeploy`: many sites redeployed through the API's outbox path; a
progress bar on a terminal's stderr, none for scripts."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess

import httpx
import pytest

from tests.e2e.helpers import landing_params, wait_deployment
from tests.fixtures.platform import Platform, PlatformFactory

pytestmark = pytest.mark.slow


def sitefleet(platform: Platform, *args: str, tty: bool = False) -> tuple[int, str, str]:
    """Run the CLI; with ``tty`` its stderr is a pseudo-terminal (what a person sees)."""
    env = {**os.environ, **platform.env, "COLUMNS": "120"}
    argv = [".venv/bin/sitefleet", *args]
    if not tty:
        done = subprocess.run(argv, text=True, capture_output=True, env=env, timeout=120)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=120)
    os.close(master)
    return proc.returncode, out.decode(), seen.decode(errors="replace")


async def test_redeploy_a_template_s_sites_goes_through_the_outbox_and_shows_progress(
    platforms: PlatformFactory,
) -> None:
    platform = await platforms.start("redeploy", services=("api", "deployer"))
    async with platform.client(await platform.new_tenant()) as api:
        first: dict[str, str] = {}
        for domain in ("bulk-a.example", "bulk-b.example"):
            created = await api.post(
                "/v1/sites",
                json={"domain": domain, "template": "landing", "params": landing_params("Bulk")},
            )
            assert created.status_code == 201, created.text
            site = created.json()
            assert (await wait_deployment(api, site["latest_deployment_id"]))["status"] == "live"
            first[site["id"]] = site["latest_deployment_id"]

        code, out, err = await asyncio.to_thread(
            sitefleet, platform, "sites", "redeploy", "--template", "landing"
        )
        assert code == 0, err
        assert out.strip() == "requested 2 deployment(s)"
        assert err == ""  # not a terminal: no progress bar
        for site_id, old in first.items():
            site = (await api.get(f"/v1/sites/{site_id}")).json()
            assert site["latest_deployment_id"] != old
            dep = await wait_deployment(api, site["latest_deployment_id"])
            assert dep["status"] == "live" and dep["reason"] == "bulk redeploy"
            async with httpx.AsyncClient(timeout=5) as web:
                page = await web.get(
                    f"http://127.0.0.1:{platform.http_port}/", headers={"Host": site["domain"]}
                )
            assert dep["id"] in page.text

        code, out, err = await asyncio.to_thread(
            sitefleet, platform, "sites", "redeploy", "--all", tty=True
        )
        assert code == 0, err
        assert "redeploying" in err or "bulk-" in err
        assert "2/2" in err

    code, _, err = await asyncio.to_thread(
        sitefleet, platform, "sites", "redeploy", "--template", "nope"
    )
    assert code == 1 and "no site uses the template 'nope'" in err
    code, _, err = await asyncio.to_thread(sitefleet, platform, "sites", "redeploy")
    assert code == 2 and "exactly one of --all or --template" in err
