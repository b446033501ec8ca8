"""``SshHost`` against a real sshd on 127.0.0.1 whose "remote" sites root is the one the real
nginx serves: releases, the object store, pruning, round trips, unreachable hosts, atomic
switches and the whole deploy pipeline, all through SSH."""

import asyncio
import bisect
import hashlib
import os
import re
import stat
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from cli.devstack import procs
from services.deployer import layout, nginx_rules, objects
from services.deployer import release as release_py
from services.deployer.deploy import deploy
from services.deployer.health import release_marker
from services.deployer.objects import ObjectStore, build_manifest
from services.deployer.settings import DeployerSettings
from services.deployer.transport import host_agent
from services.deployer.transport.ssh import SshHost
from shared.errors import Invalid, NotFound, Transient
from shared.ids import new_id
from shared.messages import DeploymentReport, DeploymentSucceeded
from shared.template_packs import TemplateCatalog
from tests.deployer.conftest import Fetch, Nginx
from tests.deployer.test_atomicity import PAGE, Fetched, _no_switch_during, file_body, visit
from tests.deployer.test_deploy import make_job, proceed
from tests.fixtures.sshd import Sshd
from tests.fixtures.tcp_proxy import TcpProxy


def ssh_host(server: Sshd, sites_root: Path, **options: Any) -> SshHost:
    fields: dict[str, Any] = {
        "address": "127.0.0.1",
        "port": server.port,
        "username": server.username,
        "client_key": server.client_key,
        "host_keys": [server.host_key],
        "sites_root": str(sites_root),
        "connect_timeout": 5.0,
        "command_timeout": 20.0,
        **options,
    }
    return SshHost("web-test", **fields)


@pytest.fixture
async def host(sshd: Sshd, sites_root: Path) -> AsyncIterator[SshHost]:
    connected = ssh_host(sshd, sites_root)
    yield connected
    await connected.close()


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> Path:
    root.mkdir(parents=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def unique_site(release_id: str, tag: str) -> dict[str, str | bytes]:
    """Content no other test has (the host's object store is shared by the session)."""
    return {
        "index.html": (
            f'<html><head><meta name="sitefleet-release" content="{release_id}"></head>'
            f"<body><h1>{tag} home</h1></body></html>"
        ),
        "about/index.html": f"<h1>{tag} about</h1>\n",
        "assets/style.css": f"/* {tag} */ body {{ color: #333; }}\n",
        "assets/logo.bin": tag.encode() + bytes(range(256)) * 16,
    }


def key_of(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def store_of(sites_root: Path) -> ObjectStore:
    return ObjectStore(sites_root / release_py.OBJECTS)


async def test_upload_then_activate_through_ssh_serves_the_release_through_nginx(
    host: SshHost, domain: str, fetch: Fetch, sites_root: Path, tmp_path: Path
) -> None:
    release = new_id("dep")
    tag = uuid.uuid4().hex
    src = write_tree(tmp_path / release, unique_site(release, tag))
    (src / "bin").mkdir()
    (src / "bin" / "run.sh").write_text(f"#!/bin/sh\necho {tag}\n")
    (src / "bin" / "run.sh").chmod(0o755)

    stats = await host.upload(domain, release, src)

    assert (stats.files, stats.uploaded_files) == (5, 5)
    assert stats.bytes == stats.uploaded_bytes == sum(e.size for e in build_manifest(src))
    assert (await fetch(domain)).status_code == 404  # uploaded is not live yet
    await host.activate(domain, release)
    page = await fetch(domain)
    assert page.status_code == 200 and f"<h1>{tag} home</h1>" in page.text
    assert release_marker(page.text) == release
    logo = await fetch(f"www.{domain}", "/assets/logo.bin")
    assert logo.content == (src / "assets" / "logo.bin").read_bytes()
    assert await host.current_release(domain) == release
    assert await host.releases(domain) == [release]
    assert os.readlink(sites_root / domain / "current") == f"releases/{release}"
    # The same layout as LocalHost: immutable hardlinks into the host's object store.
    tree = sites_root / domain / "releases" / release
    for path in [tree, *tree.rglob("*")]:
        expected = 0o755 if path.is_dir() else 0o444
        if path.name == "run.sh":
            expected = 0o555
        assert stat.S_IMODE(path.stat().st_mode) == expected
    store = store_of(sites_root)
    for entry in build_manifest(src):
        assert (tree / entry.path).stat().st_ino == store.object_path(entry.key).stat().st_ino


async def test_a_redeploy_that_changes_one_file_sends_exactly_one_object(
    host: SshHost, domain: str, fetch: Fetch, tmp_path: Path
) -> None:
    first, second = new_id("dep"), new_id("dep")
    files = unique_site(first, uuid.uuid4().hex)
    await host.upload(domain, first, write_tree(tmp_path / first, files))
    changed = {**files, "index.html": f'<meta name="sitefleet-release" content="{second}">v2'}

    stats = await host.upload(domain, second, write_tree(tmp_path / second, changed))
    again = await host.upload(domain, second, tmp_path / second)

    assert (stats.files, stats.uploaded_files) == (4, 1)
    assert stats.uploaded_bytes == len(changed["index.html"])
    assert (again.files, again.uploaded_files, again.uploaded_bytes) == (4, 0, 0)
    await host.activate(domain, second)
    assert release_marker((await fetch(domain)).text) == second
    assert (await fetch(domain, "/about/")).text == files["about/index.html"]


async def test_prune_over_ssh_keeps_current_and_the_newest_and_collects_their_objects(
    host: SshHost, domain: str, sites_root: Path, tmp_path: Path
) -> None:
    ids = [new_id("dep") for _ in range(5)]
    own_keys = {}
    for release in ids:
        src = write_tree(tmp_path / release, unique_site(release, uuid.uuid4().hex))
        own_keys[release] = {e.key for e in build_manifest(src)}
        await host.upload(domain, release, src)
    await host.activate(domain, ids[0])  # a rollback to the oldest

    requests = host.requests
    removed = await host.prune(domain, keep=3)

    assert host.requests == requests + 1
    assert removed == ids[1:3]
    assert await host.releases(domain) == [ids[0], ids[3], ids[4]]
    assert await host.current_release(domain) == ids[0]
    store = store_of(sites_root)
    for release in ids:
        kept = release not in removed
        assert {store.object_path(k).exists() for k in own_keys[release]} == {kept}
    with pytest.raises(ValueError):
        await host.prune(domain, keep=0)


async def test_collect_garbage_over_ssh_removes_objects_no_release_uses(
    host: SshHost, sites_root: Path
) -> None:
    content = f"orphan {uuid.uuid4()}".encode()
    key = hashlib.sha256(content).hexdigest()
    orphan = store_of(sites_root).object_path(key)
    orphan.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    orphan.write_bytes(content)  # in the store, linked by no release

    requests = host.requests
    removed = await host.collect_garbage()

    assert key in removed
    assert not orphan.exists()
    assert host.requests == requests + 1


async def test_remove_site_over_ssh_stops_serving_and_deletes_everything(
    host: SshHost, domain: str, fetch: Fetch, sites_root: Path, tmp_path: Path
) -> None:
    release = new_id("dep")
    await host.upload(domain, release, write_tree(tmp_path / release, unique_site(release, "gone")))
    await host.activate(domain, release)
    assert (await fetch(domain)).status_code == 200

    await host.remove_site(domain)

    assert (await fetch(domain)).status_code == 404
    assert not (sites_root / domain).exists()
    await host.remove_site(domain)  # a redelivered removal is fine
    await host.deactivate(domain)
    assert await host.current_release(domain) is None


async def test_activating_a_release_that_is_not_there_fails(host: SshHost, domain: str) -> None:
    with pytest.raises(NotFound) as info:
        await host.activate(domain, new_id("dep"))
    assert info.value.code == "release_not_found"


async def test_round_trips_do_not_grow_with_the_file_count(
    host: SshHost, domain: str, fetch: Fetch, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex
    small, large = new_id("dep"), new_id("dep")
    write_tree(tmp_path / small, {f"p/{n}.txt": f"{tag} {n}\n" for n in range(20)})
    files = {f"p{n % 20}/{n}.txt": f"{tag} {n}\n" * 100 for n in range(2000)}
    write_tree(tmp_path / large, {**files, "index.html": tag})

    before = host.requests
    await host.upload(domain, small, tmp_path / small)
    per_small = host.requests - before
    before = host.requests
    stats = await host.upload(domain, large, tmp_path / large)
    per_large = host.requests - before
    before = host.requests
    await host.activate(domain, large)
    per_activate = host.requests - before

    assert stats.uploaded_files == 2001
    assert per_small == per_large == 1
    assert per_activate == 1
    assert host.connects == 1  # one pooled connection for all of it
    assert host.execs == 1  # and one agent, which served every request
    assert (await fetch(domain, "/p7/1987.txt")).text == files["p7/1987.txt"]


async def test_an_unreachable_host_is_transient_and_works_again_once_it_is_back(
    private_sshd: Sshd, sites_root: Path, domain: str, tmp_path: Path
) -> None:
    nowhere = ssh_host(private_sshd, sites_root, port=procs.free_port())
    with pytest.raises(Transient) as info:
        await nowhere.releases(domain)
    assert info.value.code == "host_unreachable"

    release = new_id("dep")
    src = write_tree(tmp_path / release, unique_site(release, uuid.uuid4().hex))
    private_sshd.stop()
    host = ssh_host(private_sshd, sites_root)
    try:
        with pytest.raises(Transient) as info:
            await host.upload(domain, release, src)
        assert info.value.code == "host_unreachable"
        assert "Connection refused" in info.value.message or "Errno 111" in info.value.message

        private_sshd.start()  # the job's retry: just call again
        stats = await host.upload(domain, release, src)
        assert stats.uploaded_files == 4
        await host.activate(domain, release)
        assert await host.current_release(domain) == release
    finally:
        await host.close()
        await nowhere.close()


async def test_a_lost_pooled_connection_is_transient_and_replaced(
    sshd: Sshd, sites_root: Path, domain: str
) -> None:
    proxy = TcpProxy(sshd.port)
    await proxy.start()
    host = ssh_host(sshd, sites_root, port=proxy.port)
    try:
        assert await host.releases(domain) == []
        await proxy.cut()  # the network path dies, the pooled connection with it
        with pytest.raises(Transient) as info:
            await host.releases(domain)
        assert info.value.code == "host_unreachable"
        await proxy.restore()
        assert await host.releases(domain) == []
        assert host.connects == 2
    finally:
        await host.close()
        await proxy.cut()


async def test_a_host_without_the_python_it_needs_fails_transiently_saying_why(
    sshd: Sshd, sites_root: Path, domain: str
) -> None:
    host = ssh_host(sshd, sites_root, remote_python="/nonexistent/python3")
    try:
        with pytest.raises(Transient) as info:
            await host.releases(domain)
    finally:
        await host.close()
    assert info.value.code == "host_agent_failed"
    assert "/nonexistent/python3" in info.value.message


async def test_an_io_failure_on_the_host_is_transient_and_says_why(
    sshd: Sshd, sites_root: Path, domain: str, tmp_path: Path
) -> None:
    host = ssh_host(sshd, sites_root, objects_root="/dev/null/objects")  # not a directory
    release = new_id("dep")
    src = write_tree(tmp_path / release, unique_site(release, uuid.uuid4().hex))
    try:
        with pytest.raises(Transient) as info:
            await host.upload(domain, release, src)
        # The failed upload may have left object bytes unread: that agent is not reused.
        assert await host.current_release(domain) is None
    finally:
        await host.close()
    assert info.value.code == "host_io_failed"
    assert "Not a directory" in info.value.message
    assert host.execs == 2


async def test_one_agent_serves_request_after_request_and_refusals_keep_it(
    host: SshHost, domain: str, tmp_path: Path
) -> None:
    release = new_id("dep")
    src = write_tree(tmp_path / release, unique_site(release, uuid.uuid4().hex))
    await host.upload(domain, release, src)
    with pytest.raises(NotFound):  # a refused one-reply operation leaves the agent in step
        await host.activate(domain, new_id("dep"))
    await host.activate(domain, release)
    assert await host.current_release(domain) == release
    assert await host.releases(domain) == [release]
    assert (host.requests, host.execs, host.connects) == (5, 1, 1)


async def test_concurrent_operations_use_several_agents_then_reuse_them(
    host: SshHost, domain: str, tmp_path: Path
) -> None:
    await asyncio.gather(*(host.releases(domain) for _ in range(4)))
    started = host.execs
    assert 1 <= started <= 4
    await asyncio.gather(*(host.releases(domain) for _ in range(4)))
    assert host.execs == started  # the pool's agents served the second round


async def test_a_file_changed_after_its_manifest_fails_the_upload_transiently(
    host: SshHost, domain: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = new_id("dep")
    src = write_tree(tmp_path / release, unique_site(release, uuid.uuid4().hex))

    def manifest_then_edit(src_dir: Path) -> list[Any]:
        entries = build_manifest(src_dir)
        (src_dir / "about" / "index.html").write_text("edited by a build step still running")
        return entries

    monkeypatch.setattr("services.deployer.transport.ssh.build_manifest", manifest_then_edit)
    with pytest.raises(Transient) as info:
        await host.upload(domain, release, src)
    assert info.value.code == "release_changed_during_upload"
    assert await host.releases(domain) == []  # nothing half-made is ever listed

    monkeypatch.undo()  # the retry builds again and succeeds
    assert (await host.upload(domain, release, src)).files == 4
    assert await host.releases(domain) == [release]


async def test_content_at_several_paths_is_sent_once_and_linked_at_each(
    host: SshHost, domain: str, sites_root: Path, tmp_path: Path
) -> None:
    release = new_id("dep")
    same = f"same {uuid.uuid4()}\n"
    src = write_tree(tmp_path / release, {"a.txt": same, "b/a.txt": same, "c.txt": same})

    stats = await host.upload(domain, release, src)

    assert (stats.files, stats.uploaded_files, stats.uploaded_bytes) == (3, 1, len(same))
    obj = store_of(sites_root).object_path(key_of(same))
    assert obj.stat().st_nlink == 4  # the store's name and the release's three
    tree = sites_root / domain / "releases" / release
    assert {(tree / p).stat().st_ino for p in ("a.txt", "b/a.txt", "c.txt")} == {obj.stat().st_ino}


async def test_a_file_changed_amid_the_stream_fails_cleanly_and_the_retry_sends_the_rest(
    host: SshHost, domain: str, sites_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object that fails its hash is followed by others: the agent reads them all and
    answers ``corrupt`` (not a dead agent), keeps no temp file, stores nothing that fails its
    hash, and the retry stores every file."""
    release = new_id("dep")
    tag = uuid.uuid4().hex
    files = {f"p{n:02d}.html": f"<p>{tag} {n}</p>" * (n + 1) for n in range(12)}
    src = write_tree(tmp_path / release, files)

    def manifest_then_edit(src_dir: Path) -> list[Any]:
        entries = build_manifest(src_dir)
        (src_dir / "p03.html").write_text("changed after its manifest")
        return entries

    monkeypatch.setattr("services.deployer.transport.ssh.build_manifest", manifest_then_edit)
    with pytest.raises(Transient) as info:
        await host.upload(domain, release, src)
    assert info.value.code == "release_changed_during_upload"
    store = store_of(sites_root)
    assert not store.object_path(key_of("changed after its manifest")).exists()
    assert not any((store.root / objects.TMP_DIR).iterdir())  # no temp file left behind
    assert await host.releases(domain) == []
    monkeypatch.undo()
    (src / "p03.html").write_text(files["p03.html"])

    stats = await host.upload(domain, release, src)

    # The three objects before the bad one were stored; it and the eight after it were not.
    assert (stats.files, stats.uploaded_files) == (12, 9)
    tree = sites_root / domain / "releases" / release
    assert {p: (tree / p).read_text() for p in files} == files


@pytest.mark.parametrize(
    "bad_domain",
    ["../etc", "Example.com", "example.com.", "a/b.example.com", "localhost", "", ".."],
)
async def test_bad_domains_are_refused_before_anything_is_sent(
    sshd: Sshd, sites_root: Path, bad_domain: str, tmp_path: Path
) -> None:
    host = ssh_host(sshd, sites_root)
    for call in (
        host.upload(bad_domain, new_id("dep"), tmp_path),
        host.activate(bad_domain, new_id("dep")),
        host.deactivate(bad_domain),
        host.current_release(bad_domain),
        host.releases(bad_domain),
        host.prune(bad_domain, 3),
        host.remove_site(bad_domain),
    ):
        with pytest.raises(Invalid) as info:
            await call
        assert info.value.code == "invalid_domain"
    assert (host.execs, host.connects) == (0, 0)


@pytest.mark.parametrize(
    "bad_release", ["../../x", "current", "dep_xyz", "DEP_" + "0" * 28, "dep_" + "0" * 28 + "/.."]
)
async def test_bad_release_ids_are_refused_before_anything_is_sent(
    sshd: Sshd, sites_root: Path, domain: str, bad_release: str, tmp_path: Path
) -> None:
    host = ssh_host(sshd, sites_root)
    for call in (host.upload(domain, bad_release, tmp_path), host.activate(domain, bad_release)):
        with pytest.raises(Invalid) as info:
            await call
        assert info.value.code == "invalid_release_id"
    assert (host.execs, host.connects) == (0, 0)
    assert not (sites_root / domain).exists()


def test_the_agent_lays_out_releases_as_release_py_does() -> None:
    # The host cannot import release.py (pydantic): both take the layout from layout.py.
    assert host_agent.RELEASE_ID.pattern == release_py.RELEASE_ID.pattern
    assert (host_agent.CURRENT, host_agent.RELEASES) == (release_py.CURRENT, release_py.RELEASES)
    assert (host_agent.TMP_PREFIX, host_agent.OBJECTS) == (
        release_py.TMP_PREFIX,
        release_py.OBJECTS,
    )
    # Stdlib only: the agent imports nothing of Sitefleet but the modules shipped with it.
    shipped = {
        "services.deployer.objects",
        "services.deployer.layout",
        "services.deployer.nginx_rules",
    }
    for module in (host_agent, layout, objects, nginx_rules):
        source = Path(str(module.__file__)).read_text()
        imports = re.findall(r"^(?:from|import) ([\w.]+)", source, re.MULTILINE)
        ours = {name for name in imports if name.split(".")[0] in {"services", "shared", "cli"}}
        assert ours <= shipped


async def test_release_switches_through_ssh_are_atomic_for_visitors(
    host: SshHost, domain: str, nginx: Nginx, tmp_path: Path
) -> None:
    """tests/deployer/test_atomicity.py's checks, with 30 switches made through SSH."""
    switches, clients = 30, 2
    tag = uuid.uuid4().hex
    ids = [new_id("dep") for _ in range(switches + 1)]
    index = {release: n for n, release in enumerate(ids)}

    def source(release: str) -> Path:
        return write_tree(
            tmp_path / release, {rel: file_body(release, rel, tag) for _, rel in PAGE}
        )

    # Uploaded side by side: each on a channel of its own over the one pooled connection.
    await asyncio.gather(*(host.upload(domain, release, source(release)) for release in ids))
    assert host.connects == 1
    await host.activate(domain, ids[0])
    switch_started, switch_done = [time.monotonic()], [time.monotonic()]
    stop = asyncio.Event()

    async def switch() -> None:
        try:
            await asyncio.sleep(0.05)
            for n in range(1, switches + 1):
                switch_started.append(time.monotonic())
                await host.activate(domain, ids[n])
                switch_done.append(time.monotonic())
                await asyncio.sleep(0.15 if n % 10 == 0 else 0.01)
        finally:
            stop.set()

    switching = asyncio.create_task(switch())
    visits = await asyncio.gather(
        *(visit(nginx.port, domain, index, tag, stop) for _ in range(clients))
    )
    await switching

    pages = [page for pages in visits for page in pages]
    fetches = [f for page in pages for f in page]
    assert [f for f in fetches if f.status != 200 or f.release is None] == []
    stale = [f for f in fetches if served(f) < bisect.bisect_right(switch_done, f.started) - 1]
    assert stale == []
    future = [f for f in fetches if served(f) > bisect.bisect_right(switch_started, f.finished) - 1]
    assert future == []
    backwards = [p for p in pages if [served(f) for f in p] != sorted(served(f) for f in p)]
    assert backwards == []
    quiet = [p for p in pages if _no_switch_during(p, switch_started, switch_done)]
    assert [p for p in quiet if len({f.release for f in p}) != 1] == []
    assert len(switch_done) == switches + 1
    assert len({f.release for f in fetches}) > 1
    assert quiet


def served(fetched: Fetched) -> int:
    assert fetched.release is not None
    return fetched.release


async def test_the_deploy_pipeline_runs_unchanged_on_an_ssh_host(
    sshd: Sshd,
    catalog: TemplateCatalog,
    settings: DeployerSettings,
    domain: str,
    fetch: Fetch,
) -> None:
    settings = settings.model_copy(update={"ssh_sites_root": str(settings.sites_root)})
    host = SshHost.from_settings(
        settings,
        "web-test",
        address="127.0.0.1",
        port=sshd.port,
        username=sshd.username,
        client_key=sshd.client_key,
        host_keys=[sshd.host_key],
    )
    reports: list[DeploymentReport] = []

    async def report(event: DeploymentReport) -> None:
        reports.append(event)

    job = make_job(domain, params={"title": "Over the wire"})
    try:
        await deploy(
            job, catalog=catalog, host=host, report=report, fence=proceed, settings=settings
        )
        assert await host.current_release(domain) == job.deployment_id
    finally:
        await host.close()

    final = reports[-1]
    assert isinstance(final, DeploymentSucceeded), final
    assert [p.name for p in final.phases] == ["build", "upload", "activate", "health_check"]
    assert final.stats is not None and final.stats.files == 5
    page = await fetch(domain)
    assert "<h1>Over the wire</h1>" in page.text
    assert release_marker(page.text) == job.deployment_id
    assert not (settings.work_root / job.deployment_id).exists()
