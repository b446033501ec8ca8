"""A site on two web hosts through the real platform: hosts registered with
``sitefleet host add`` (one on this machine, one over SSH, each behind its own nginx), a
site created through the API goes live on both, and its deletion clears both."""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx

from cli.devstack import procs
from tests.e2e.helpers import landing_params, wait_deployment
from tests.fixtures.components import run_nginx, world_readable_tempdir
from tests.fixtures.platform import Platform, PlatformFactory, wait_until
from tests.fixtures.sshd import Sshd


def sitefleet(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [".venv/bin/sitefleet", "host", *args],
        text=True,
        capture_output=True,
        env={**os.environ, **platform.env},
        timeout=60,
    )


async def test_a_site_goes_live_on_two_hosts_and_leaves_both(
    platforms: PlatformFactory, sshd: Sshd
) -> None:
    root = world_readable_tempdir("host-b")
    second, second_proc = run_nginx(root)
    try:
        platform = await platforms.start(
            "multihost",
            services=("api", "deployer"),
            extra_env={"SITEFLEET_HOSTS_PER_SITE": "2"},
        )
        added = sitefleet(
            platform,
            *("add", "web-a", "--sites-root", str(platform.sites_root)),
            *("--http", f"127.0.0.1:{platform.http_port}"),
        )
        assert added.returncode == 0, added.stderr
        added = sitefleet(
            platform,
            *("add", "web-b", "--ssh", f"{sshd.username}@127.0.0.1:{sshd.port}"),
            *("--key", str(sshd.client_key), "--sites-root", str(second.sites_root)),
            *("--http", f"127.0.0.1:{second.port}"),
        )
        assert added.returncode == 0, added.stderr

        async with platform.client(await platform.new_tenant()) as api:
            domain = "twohosts.example"
            created = await api.post(
                "/v1/sites",
                json={"domain": domain, "template": "landing", "params": landing_params("Twin")},
            )
            assert created.status_code == 201, created.text
            site = created.json()
            dep = await wait_deployment(api, site["latest_deployment_id"])
            assert dep["status"] == "live", dep

            for port in (platform.http_port, second.port):
                page = await fetch(port, domain)
                assert page.status_code == 200 and dep["id"] in page.text
            listed = sitefleet(platform, "list").stdout
            assert listed.count("1 site(s)") == 2, listed

            assert (await api.delete(f"/v1/sites/{site['id']}")).status_code == 202

            async def gone_from_both() -> bool:
                codes = [
                    (await fetch(p, domain)).status_code for p in (platform.http_port, second.port)
                ]
                return codes == [404, 404] and not (second.sites_root / domain).exists()

            await wait_until(gone_from_both, timeout=60, what="the site to leave both hosts")
            assert not (platform.sites_root / domain).exists()
            listed = sitefleet(platform, "list").stdout
            assert listed.count("0 site(s)") == 2, listed
    finally:
        procs.stop(second_proc)  # type: ignore[arg-type]
        shutil.rmtree(root, ignore_errors=True)


async def fetch(port: int, domain: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as web:
        return await web.get(f"http://127.0.0.1:{port}/", headers={"Host": domain})
