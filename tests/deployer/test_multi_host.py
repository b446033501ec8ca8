"""Sites on several web hosts: registering hosts (``sitefleet host``), placing a site, and the
two-phase deploy (upload everywhere, then switch everywhere, roll back everywhere) against
two real nginx instances, one host on this machine and one behind the test sshd."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import httpx
import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cli.devstack import procs
from services.deployer.consumer import DeployerHandler
from services.deployer.deploy import deploy
from services.deployer.fence import DatabaseFence
from services.deployer.health import release_marker
from services.deployer.hosts import HostRegistry, SshSpec, add_host, place_site
from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from services.deployer.target import Target
from services.deployer.transport.ssh import SshHost
from shared.db import create_engine, create_sessionmaker
from shared.errors import Transient
from shared.ids import new_id
from shared.messages import (
    DeploymentFailed,
    DeploymentReport,
    DeploymentRequested,
    DeploymentSucceeded,
    Message,
    SiteFilesRemoved,
    SiteRemovalRequested,
)
from shared.models import SiteHost, WebHost
from shared.settings import PROJECT_ROOT
from shared.template_packs import TemplateCatalog
from tests.deployer.conftest import Nginx
from tests.deployer.test_deploy import make_job, proceed
from tests.fixtures.components import run_nginx, world_readable_tempdir
from tests.fixtures.isolation import create_database, drop_database
from tests.fixtures.sshd import Sshd


@dataclass
class WebHostBox:
    """A sites root and the nginx that serves it (what one web host is)."""

    sites_root: Path
    port: int

    async def fetch(self, domain: str, path: str = "/") -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"http://127.0.0.1:{self.port}{path}", headers={"Host": domain})

    def current(self, domain: str) -> str | None:
        link = self.sites_root / domain / "current"
        return Path(os.readlink(link)).name if link.is_symlink() else None


def _box(name: str) -> Iterator[WebHostBox]:
    root = world_readable_tempdir(name)
    server, proc = run_nginx(root)
    yield WebHostBox(server.sites_root, server.port)
    procs.stop(proc)  # type: ignore[arg-type]
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def box_a() -> Iterator[WebHostBox]:
    yield from _box("host-a")


@pytest.fixture(scope="module")
def box_b() -> Iterator[WebHostBox]:
    yield from _box("host-b")


@pytest.fixture(scope="module")
async def hosts_db(run_id: str) -> AsyncIterator[str]:
    """A database of this module's own: registered hosts change where every deploy goes,
    so they must not leak into other tests' deployers."""
    name = f"sitefleet_test_{run_id}_hosts"
    url = await create_database(name)
    yield url
    await drop_database(name)


@pytest.fixture
async def engine(hosts_db: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(hosts_db, application_name="sitefleet-host-tests", pool_size=2)
    yield engine
    async with create_sessionmaker(engine).begin() as session:
        await session.execute(delete(SiteHost))
        await session.execute(delete(WebHost))
    await engine.dispose()


def local_target(box: WebHostBox, name: str = "a") -> Target:
    host = LocalHost(box.sites_root)
    host.name = name
    return Target(host, "127.0.0.1", box.port)


def ssh_target(server: Sshd, box: WebHostBox, name: str = "b") -> Target:
    host = SshHost(
        name,
        address="127.0.0.1",
        port=server.port,
        username=server.username,
        client_key=server.client_key,
        host_keys=[server.host_key],
        sites_root=str(box.sites_root),
        connect_timeout=3.0,
        command_timeout=20.0,
    )
    return Target(host, "127.0.0.1", box.port)


class Runner:
    def __init__(self, catalog: TemplateCatalog, settings: DeployerSettings) -> None:
        self.catalog, self.settings = catalog, settings
        self.reports: list[DeploymentReport] = []

    async def report(self, event: DeploymentReport) -> None:
        self.reports.append(event)

    async def __call__(self, job: DeploymentRequested, targets: list[Target]) -> DeploymentReport:
        self.reports.clear()
        await deploy(
            job,
            catalog=self.catalog,
            targets=targets,
            report=self.report,
            fence=proceed,
            settings=self.settings,
        )
        return self.reports[-1]


@pytest.fixture
def runner(catalog: TemplateCatalog, settings: DeployerSettings) -> Runner:
    return Runner(catalog, settings)


@pytest.fixture
def site_domain(box_a: WebHostBox, box_b: WebHostBox) -> Iterator[str]:
    name = f"multi-{uuid.uuid4().hex[:12]}.example.com"
    yield name
    for box in (box_a, box_b):
        shutil.rmtree(box.sites_root / name, ignore_errors=True)


async def close_all(targets: list[Target]) -> None:
    for target in targets:
        if isinstance(target.host, SshHost):
            await target.host.close()


# --- sitefleet host ---------------------------------------------------------------------


def sitefleet(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROJECT_ROOT / ".venv" / "bin" / "sitefleet"), "host", *args],
        text=True,
        capture_output=True,
        env={**os.environ, "SITEFLEET_DATABASE_URL": database_url},
        timeout=60,
    )


async def test_host_add_pins_the_servers_key_and_refuses_a_host_it_cannot_use(
    sshd: Sshd, hosts_db: str, engine: AsyncEngine, box_b: WebHostBox, tmp_path: Path
) -> None:
    ssh = f"{sshd.username}@127.0.0.1:{sshd.port}"
    added = sitefleet(
        hosts_db,
        *("add", "web-1", "--ssh", ssh, "--key", str(sshd.client_key)),
        *("--sites-root", str(box_b.sites_root), "--http", f"127.0.0.1:{box_b.port}"),
        *("--public-address", "203.0.113.5"),
    )
    assert added.returncode == 0, added.stderr
    assert sshd.host_key in added.stdout

    dead_port = procs.free_port()
    refused = sitefleet(
        hosts_db,
        *("add", "web-2", "--ssh", f"{sshd.username}@127.0.0.1:{dead_port}"),
        *("--key", str(sshd.client_key), "--sites-root", "/srv/sites"),
    )
    assert refused.returncode == 1
    assert f"cannot fetch the host key of 127.0.0.1:{dead_port}" in refused.stderr
    again = sitefleet(hosts_db, "add", "web-1", "--ssh", ssh, "--key", str(sshd.client_key))
    assert again.returncode == 1 and "already exists" in again.stderr
    stranger = tmp_path / "stranger_ed25519"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(stranger)
    stranger.chmod(0o600)
    unknown_key = sitefleet(hosts_db, "add", "web-3", "--ssh", ssh, "--key", str(stranger))
    assert unknown_key.returncode == 1 and "cannot log in" in unknown_key.stderr

    async with create_sessionmaker(engine)() as session:
        rows = list(await session.scalars(select(WebHost)))
    assert [(r.name, r.kind, r.ssh_port, r.host_key) for r in rows] == [
        ("web-1", "ssh", sshd.port, sshd.host_key)
    ]
    assert rows[0].sites_root == str(box_b.sites_root)
    assert (rows[0].http_host, rows[0].http_port) == ("127.0.0.1", box_b.port)
    assert rows[0].public_addresses == ["203.0.113.5"] and rows[0].enabled

    listed = sitefleet(hosts_db, "list")
    assert listed.returncode == 0 and "web-1" in listed.stdout and "0 site(s)" in listed.stdout
    assert sitefleet(hosts_db, "remove", "web-1").returncode == 0
    assert sitefleet(hosts_db, "remove", "web-1").returncode == 1
    assert "web-1" not in sitefleet(hosts_db, "list").stdout


async def test_a_host_that_holds_sites_cannot_be_removed(
    engine: AsyncEngine, hosts_db: str, box_a: WebHostBox
) -> None:
    async with create_sessionmaker(engine).begin() as session:
        await add_host(
            session,
            "keeper",
            ssh=None,
            key_path=None,
            host_key=None,
            sites_root=str(box_a.sites_root),
            objects_root=None,
            http=("127.0.0.1", box_a.port),
            public_addresses=[],
        )
        await place_site(session, new_id("site"), 1)

    removed = sitefleet(hosts_db, "remove", "keeper")
    assert removed.returncode == 1 and "still holds 1 site(s)" in removed.stderr


# --- placement --------------------------------------------------------------------------


async def add_local(engine: AsyncEngine, name: str, box: WebHostBox) -> None:
    async with create_sessionmaker(engine).begin() as session:
        await add_host(
            session,
            name,
            ssh=None,
            key_path=None,
            host_key=None,
            sites_root=str(box.sites_root),
            objects_root=None,
            http=("127.0.0.1", box.port),
            public_addresses=["127.0.0.1"],
        )


async def test_sites_go_to_the_least_loaded_hosts_and_stay_there(
    engine: AsyncEngine, box_a: WebHostBox, box_b: WebHostBox, settings: DeployerSettings
) -> None:
    registry = HostRegistry(engine, settings, local=LocalHost(settings.sites_root))
    one, two, three = new_id("site"), new_id("site"), new_id("site")
    # No host registered: the local web host of the settings, and nothing recorded.
    assert [t.name for t in await registry.targets_for_deploy(one)] == ["local"]

    await add_local(engine, "a", box_a)
    await add_local(engine, "b", box_b)
    placed = [(await registry.targets_for_deploy(s))[0].name for s in (one, two, three)]
    assert sorted(placed[:2]) == ["a", "b"]  # the second site goes to the emptier host
    assert [t.name for t in await registry.targets_for_deploy(two)] == [placed[1]]
    assert [t.name for t in await registry.targets_for_removal(one)] == [placed[0]]

    both = settings.model_copy(update={"hosts_per_site": 2})
    wide = HostRegistry(engine, both, local=LocalHost(settings.sites_root))
    targets = await wide.targets_for_deploy(new_id("site"))
    assert [(t.name, t.http_port) for t in targets] == [("a", box_a.port), ("b", box_b.port)]
    # One transport per host, reused by every job.
    assert targets[0].host is (await wide.targets_for_deploy(new_id("site")))[0].host

    # A host moved to other ports (bootstrapped again) is checked and configured there from
    # the next job on, by the same transport.
    async with create_sessionmaker(engine).begin() as session:
        row = await session.scalar(select(WebHost).where(WebHost.name == "a"))
        assert row is not None
        row.nginx_listen, row.https_port = "127.0.0.1:8081", 8444
    moved = (await wide.targets_for_deploy(new_id("site")))[0]
    assert moved.host is targets[0].host
    assert (moved.https_port, moved.host.nginx_listen) == (8444, "127.0.0.1:8081")
    assert moved.host.nginx_tls_listen == "127.0.0.1:8444"


# --- two-phase deploy -------------------------------------------------------------------


async def test_a_site_on_two_hosts_serves_the_same_release_on_both(
    sshd: Sshd, runner: Runner, site_domain: str, box_a: WebHostBox, box_b: WebHostBox
) -> None:
    targets = [local_target(box_a), ssh_target(sshd, box_b)]
    job = make_job(site_domain, params={"title": "Twice served"})
    try:
        final = await runner(job, targets)
    finally:
        await close_all(targets)

    assert isinstance(final, DeploymentSucceeded), final
    assert [p.name for p in final.phases] == ["build", "upload", "activate", "health_check"]
    assert final.stats is not None and final.stats.files == 5
    # Counted once for the release, summed over the hosts for what was sent.
    assert final.stats.uploaded_files > final.stats.files
    assert final.stats.uploaded_bytes > final.stats.bytes
    for box in (box_a, box_b):
        page = await box.fetch(site_domain)
        assert page.status_code == 200 and "<h1>Twice served</h1>" in page.text
        assert release_marker(page.text) == job.deployment_id


async def test_an_upload_failing_on_one_host_switches_no_host(
    private_sshd: Sshd, runner: Runner, site_domain: str, box_a: WebHostBox, box_b: WebHostBox
) -> None:
    targets = [local_target(box_a), ssh_target(private_sshd, box_b)]
    live = make_job(site_domain, params={"title": "Old"})
    try:
        assert isinstance(await runner(live, targets), DeploymentSucceeded)
        await close_all(targets)
        private_sshd.stop()  # host b stops answering

        with pytest.raises(Transient) as info:
            await runner(make_job(site_domain, generation=2, params={"title": "New"}), targets)
    finally:
        await close_all(targets)

    assert info.value.code == "host_unreachable"
    assert "web host b" in info.value.message
    assert {r.status for r in runner.reports} <= {"building", "uploading"}
    # Host a holds the new release whole, but serves the old one, as does host b.
    assert len(list((box_a.sites_root / site_domain / "releases").iterdir())) == 2
    for box in (box_a, box_b):
        assert box.current(site_domain) == live.deployment_id
        page = await box.fetch(site_domain)
        assert "<h1>Old</h1>" in page.text and release_marker(page.text) == live.deployment_id


async def test_a_health_check_failing_on_one_host_rolls_back_every_host(
    sshd: Sshd,
    runner: Runner,
    site_domain: str,
    box_a: WebHostBox,
    box_b: WebHostBox,
    nginx: Nginx,
) -> None:
    targets = [local_target(box_a), ssh_target(sshd, box_b)]
    live = make_job(site_domain, params={"title": "Keeps serving"})
    # Host b's health check now asks an nginx that does not serve its sites root: 404.
    blind = [targets[0], Target(targets[1].host, "127.0.0.1", nginx.port)]
    try:
        assert isinstance(await runner(live, targets), DeploymentSucceeded)
        final = await runner(make_job(site_domain, generation=2, params={"title": "Bad"}), blind)
    finally:
        await close_all(targets)

    assert isinstance(final, DeploymentFailed)
    assert final.error is not None and final.error.code == "health_check_failed"
    message = final.error.message
    assert "web host b: GET / with Host" in message and "web host a:" not in message
    assert f"rolled back web host a to release {live.deployment_id}" in message
    assert f"rolled back web host b to release {live.deployment_id}" in message
    assert [(p.name, p.status) for p in final.phases][-2:] == [
        ("health_check", "failed"),
        ("rollback", "succeeded"),
    ]
    for box in (box_a, box_b):
        assert box.current(site_domain) == live.deployment_id
        assert "<h1>Keeps serving</h1>" in (await box.fetch(site_domain)).text


async def test_a_rollback_job_switches_every_host(
    sshd: Sshd, runner: Runner, site_domain: str, box_a: WebHostBox, box_b: WebHostBox
) -> None:
    targets = [local_target(box_a), ssh_target(sshd, box_b)]
    first = make_job(site_domain, params={"title": "First"})
    try:
        await runner(first, targets)
        await runner(make_job(site_domain, generation=2, params={"title": "Second"}), targets)
        # A release only one host still holds cannot be rolled back to.
        only_a = make_job(site_domain, generation=3, params={"title": "Only a"})
        await runner(only_a, targets[:1])
        lacking = await runner(
            make_job(site_domain, generation=4, rollback_to=only_a.deployment_id), targets
        )
        final = await runner(
            make_job(site_domain, generation=5, rollback_to=first.deployment_id), targets
        )
    finally:
        await close_all(targets)

    assert isinstance(lacking, DeploymentFailed) and lacking.error is not None
    assert lacking.error.code == "release_not_found" and "web host(s) b" in lacking.error.message
    assert isinstance(final, DeploymentSucceeded)
    for box in (box_a, box_b):
        assert "<h1>First</h1>" in (await box.fetch(site_domain)).text


# --- the deployer's handler: placement, deploy and removal on the site's hosts -----------


class RecordingPublisher:
    """Stands in for the broker publisher: keeps the events the handler emits."""

    def __init__(self) -> None:
        self.events: list[Message] = []

    async def emit(self, event: Message) -> None:
        self.events.append(event)


async def test_the_handler_deploys_to_and_removes_from_every_host_of_the_site(
    sshd: Sshd,
    engine: AsyncEngine,
    catalog: TemplateCatalog,
    settings: DeployerSettings,
    site_domain: str,
    box_a: WebHostBox,
    box_b: WebHostBox,
) -> None:
    await add_local(engine, "a", box_a)
    async with create_sessionmaker(engine).begin() as session:
        await add_host(
            session,
            "b",
            ssh=SshSpec(sshd.username, "127.0.0.1", sshd.port),
            key_path=sshd.client_key,
            host_key=sshd.host_key,
            sites_root=str(box_b.sites_root),
            objects_root=None,
            http=("127.0.0.1", box_b.port),
            public_addresses=["127.0.0.1"],
        )
    both = settings.model_copy(update={"hosts_per_site": 2})
    registry = HostRegistry(engine, both, local=LocalHost(settings.sites_root))
    publisher = RecordingPublisher()
    handler = DeployerHandler(
        catalog=catalog,
        host=registry.local.host,
        hosts=registry,
        publisher=publisher,  # type: ignore[arg-type]
        fence=AlwaysProceed(engine),
        settings=both,
    )
    job = make_job(site_domain, site_id=new_id("site"), params={"title": "Handled"})
    try:
        await handler.deploy(job)
        assert isinstance(publisher.events[-1], DeploymentSucceeded), publisher.events[-1]
        for box in (box_a, box_b):
            assert release_marker((await box.fetch(site_domain)).text) == job.deployment_id
        assert not (settings.sites_root / site_domain).exists()  # the local default: unused

        await handler.remove_site(
            SiteRemovalRequested(tenant_id="ten_1", site_id=job.site_id, domain=site_domain)
        )
    finally:
        await registry.close()

    assert isinstance(publisher.events[-1], SiteFilesRemoved)
    for box in (box_a, box_b):
        assert (await box.fetch(site_domain)).status_code == 404
        assert not (box.sites_root / site_domain).exists()
    async with create_sessionmaker(engine)() as session:
        assert await session.scalar(select(SiteHost).where(SiteHost.site_id == job.site_id)) is None


class AlwaysProceed(DatabaseFence):
    """The real per-site lock, without the site rows the API would have written."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine, lock_timeout=30)

    async def __call__(self, job: DeploymentRequested) -> None:
        return None
