"""deploy() of packs with build steps: built sites go live through the real nginx; a
hostile or broken step fails the deployment with its code and releases nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.deployer.health import release_marker
from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from shared.messages import DeploymentFailed, DeploymentSucceeded
from shared.template_packs import TemplateCatalog
from tests.deployer.conftest import DEMO_FILES, Fetch, write_pack
from tests.deployer.test_deploy import Deployer, make_job
from tests.deployer.test_sandbox import processes_with, sleep_marker

GENERATE_PAGES = """
import pathlib
for name in pathlib.Path('/src/_pages.txt').read_text().split():
    pathlib.Path(name).mkdir()
    pathlib.Path(name, 'index.html').write_text(f'<h1>{name} (generated)</h1>')
"""

# The demo pages (they embed the release id) and an asset of this module's own: sites share
# the web host's object store, and a common asset stored here would change what other
# tests' first deployments upload.
PACK_FILES = {
    **{k: v for k, v in DEMO_FILES.items() if not k.startswith("assets/")},
    "assets/built.css": f"/* {uuid.uuid4()} */\n",
    "_pages.txt": "menu\ncontact\n",
}

FOREVER = sleep_marker()
CANCELLED = sleep_marker()

BUILDS: dict[str, list[Any]] = {
    "built": [
        {"run": ["python3", "-c", GENERATE_PAGES]},
        {"run": ["sh", "-c", "echo built > built.txt"]},
        {"run": ["sed", "-i", "s|</body>|<p>post-processed</p></body>|", "index.html"]},
    ],
    "escape": [{"run": ["ln", "-s", "/etc/passwd", "passwd.txt"]}],
    "fifo": [{"run": ["mkfifo", "feed"]}],
    "huge": [{"run": ["sh", "-c", "head -c 1000000000 /dev/zero > huge.bin"]}],
    "many": [{"run": ["sh", "-c", "for n in 1 2 3 4 5 6; do head -c 200000 /dev/zero > $n; done"]}],
    "forever": [{"run": ["sleep", FOREVER], "timeout": 0.5}],
    "bomb": [
        {"run": ["sh", "-c", "bomb() { bomb | bomb & }; bomb; exec sleep 1000"], "timeout": 1}
    ],
    "cancelled": [{"run": ["sleep", CANCELLED]}],
    "bad": [{"run": "sh -c 'echo built > built.txt'"}],
}


@pytest.fixture(scope="module")
async def listener() -> AsyncIterator[tuple[int, list[object]]]:
    """A TCP server on this machine's loopback, recording who connects."""
    arrived: list[object] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrived.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], arrived
    server.close()
    await server.wait_closed()


@pytest.fixture(scope="module")
def build_catalog(
    tmp_path_factory: pytest.TempPathFactory, listener: tuple[int, list[object]]
) -> TemplateCatalog:
    root = tmp_path_factory.mktemp("build-templates")
    connect = f"import socket; socket.create_connection(('127.0.0.1', {listener[0]}), timeout=2)"
    for name, build in {**BUILDS, "network": [{"run": ["python3", "-c", connect]}]}.items():
        pack = write_pack(root, name, PACK_FILES)
        manifest = json.loads((pack / "manifest.json").read_text())
        (pack / "manifest.json").write_text(json.dumps({**manifest, "build": build}))
    return TemplateCatalog(root)


@pytest.fixture
def deployer(
    build_catalog: TemplateCatalog, host: LocalHost, settings: DeployerSettings
) -> Deployer:
    small = {
        "build_timeout": 10,
        "build_max_file_bytes": 1024 * 1024,
        "build_max_processes": 16,
        "build_memory_bytes": 256 * 1024 * 1024,
        "max_release_bytes": 1024 * 1024,
    }
    return Deployer(build_catalog, host, settings.model_copy(update=small))


async def test_a_built_site_goes_live(
    deployer: Deployer, domain: str, fetch: Fetch, settings: DeployerSettings
) -> None:
    job = make_job(domain, template="built")

    final = await deployer(job)

    assert isinstance(final, DeploymentSucceeded), final.error
    assert [p.name for p in final.phases][:2] == ["build", "upload"]
    assert final.stats is not None and final.stats.files == 4 + 3  # rendered + generated
    home = await fetch(domain)
    assert release_marker(home.text) == job.deployment_id
    assert "<h1>Harbour Lane</h1>" in home.text and "<p>post-processed</p>" in home.text
    assert (await fetch(domain, "/built.txt")).text == "built\n"
    assert (await fetch(domain, "/contact/")).text == "<h1>contact (generated)</h1>"
    assert not (settings.work_root / job.deployment_id).exists()


async def test_a_symlink_to_etc_passwd_fails_and_the_live_site_stays(
    deployer: Deployer, domain: str, fetch: Fetch, host: LocalHost
) -> None:
    live = make_job(domain, template="built", params={"title": "Still here"})
    assert isinstance(await deployer(live), DeploymentSucceeded)

    final = await deployer(make_job(domain, generation=2, template="escape"))

    assert isinstance(final, DeploymentFailed)
    assert final.error is not None and final.error.code == "output_symlink_escape"
    assert "/etc/passwd" in final.error.message
    assert [(p.name, p.status) for p in final.phases] == [("build", "failed")]
    assert await host.releases(domain) == [live.deployment_id]
    assert "Still here" in (await fetch(domain)).text
    assert (await fetch(domain, "/passwd.txt")).status_code == 404


@pytest.mark.parametrize(
    ("template", "code"),
    [
        ("fifo", "output_special_file"),
        ("huge", "build_file_too_large"),
        ("many", "release_too_large"),
        ("forever", "build_timeout"),
        ("bomb", "build_timeout"),
        ("bad", "build_invalid"),
    ],
)
async def test_a_bad_build_fails_the_deployment(
    deployer: Deployer, domain: str, host: LocalHost, template: str, code: str
) -> None:
    job = make_job(domain, template=template)

    final = await deployer(job)

    assert isinstance(final, DeploymentFailed)
    assert final.error is not None and final.error.code == code, final.error
    assert await host.releases(domain) == []
    assert not (deployer.settings.work_root / job.deployment_id).exists()
    assert processes_with(FOREVER) == []


async def test_a_step_that_reaches_for_the_network_fails_the_deployment(
    deployer: Deployer,
    domain: str,
    host: LocalHost,
    listener: tuple[int, list[object]],
) -> None:
    _, arrived = listener

    final = await deployer(make_job(domain, template="network"))

    assert isinstance(final, DeploymentFailed)
    assert final.error is not None and final.error.code == "build_failed"
    assert "ConnectionRefusedError" in final.error.message
    assert arrived == []
    assert await host.releases(domain) == []


async def test_cancelling_a_deployment_kills_its_build(
    deployer: Deployer, domain: str, host: LocalHost
) -> None:
    job = make_job(domain, template="cancelled")
    task = asyncio.create_task(deployer(job))
    for _ in range(500):
        if processes_with(CANCELLED):
            break
        await asyncio.sleep(0.01)
    assert processes_with(CANCELLED), "the build step never started"

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert processes_with(CANCELLED) == []
    assert not (deployer.settings.work_root / job.deployment_id).exists()
    assert await host.releases(domain) == []
