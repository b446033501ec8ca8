"""What a deployment changed, for the CDN purge (``deployment.succeeded``'s changed_paths):
read from the web host by inode (both releases are hardlinks into the object store), and
turned into the URL paths nginx serves those files at."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.deployer.nginx import MAX_PURGE_PATHS, served_paths
from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from services.deployer.transport.ssh import SshHost
from shared.ids import new_id
from shared.messages import DeploymentSucceeded
from shared.template_packs import TemplateCatalog
from tests.deployer.test_deploy import Deployer, make_job
from tests.deployer.test_ssh_host import ssh_host
from tests.fixtures.sshd import Sshd


@pytest.fixture
async def ssh(sshd: Sshd, sites_root: Path) -> AsyncIterator[SshHost]:
    host = ssh_host(sshd, sites_root)
    yield host
    await host.close()


@pytest.mark.parametrize("transport", ["local", "ssh"])
async def test_a_redeploy_reports_only_the_pages_it_changed(
    transport: str,
    catalog: TemplateCatalog,
    host: LocalHost,
    ssh: SshHost,
    settings: DeployerSettings,
) -> None:
    deployer = Deployer(catalog, host if transport == "local" else ssh, settings)  # type: ignore[arg-type]
    domain = f"changed-{uuid.uuid4().hex[:8]}.example"

    first = await deployer(make_job(domain, params={"title": "One"}))
    assert isinstance(first, DeploymentSucceeded)
    assert first.changed_paths is None  # nothing was served before: purge everything

    # The title is on every page (and every page carries its release id): all pages change,
    # the static assets do not.
    second = await deployer(make_job(domain, generation=2, params={"title": "Two"}))
    assert isinstance(second, DeploymentSucceeded)
    assert second.changed_paths is not None
    assert "/" in second.changed_paths and "/index.html" in second.changed_paths
    assert {"/about/", "/about", "/about/index.html"} <= set(second.changed_paths)
    assert not any(path.startswith("/assets/") for path in second.changed_paths)


def test_files_map_to_the_urls_nginx_serves_them_at() -> None:
    assert served_paths(["index.html", "blog/post/index.html", "about.html", "a.css"]) == [
        "/",
        "/a.css",
        "/about",
        "/about.html",
        "/blog/post",
        "/blog/post/",
        "/blog/post/index.html",
        "/index.html",
    ]
    assert served_paths([]) == []
    assert served_paths(None) is None
    assert served_paths([f"p{n}.css" for n in range(MAX_PURGE_PATHS + 1)]) is None


async def test_dropped_and_changed_files_count_and_shared_content_does_not(
    host: LocalHost, tmp_path: Path
) -> None:
    domain = f"dropped-{uuid.uuid4().hex[:8]}.example"
    old, new = new_id("dep"), new_id("dep")
    trees = {
        old: {"index.html": "v1", "gone.html": "bye", "logo.svg": "<svg/>", "same.txt": "x"},
        new: {"index.html": "v2", "logo.svg": "<svg/>", "same.txt": "x", "added.txt": "+"},
    }
    for release, files in trees.items():
        src = tmp_path / release
        for rel, text in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_text(text)
        await host.upload(domain, release, src)
    assert await host.changed_files(domain, old) is None  # nothing served yet
    await host.activate(domain, old)

    assert await host.changed_files(domain, new) == ["added.txt", "gone.html", "index.html"]
    assert await host.changed_files(domain, old) == []
