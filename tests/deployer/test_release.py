import os
import stat
import uuid
from pathlib import Path

import pytest

from services.deployer.health import release_marker
from services.deployer.release import LocalHost
from shared.errors import Invalid, NotFound
from shared.ids import new_id
from tests.deployer.conftest import Fetch


def make_release(root: Path, release_id: str, title: str, *, script: str = "") -> Path:
    """Two files; ``app.js`` is the same in every release made with the same ``script``
    (a fresh one per call by default: the host's object store is shared by all tests)."""
    src = root / release_id
    (src / "assets").mkdir(parents=True)
    (src / "index.html").write_text(
        f'<html><head><meta name="sitefleet-release" content="{release_id}"></head>'
        f"<body><h1>{title}</h1></body></html>"
    )
    (src / "assets" / "app.js").write_text(script or f"console.log('{uuid.uuid4()}')\n")
    return src


async def test_upload_then_activate_serves_the_new_release_through_nginx(
    host: LocalHost, domain: str, fetch: Fetch, tmp_path: Path
) -> None:
    first, second = new_id("dep"), new_id("dep")

    stats = await host.upload(domain, first, make_release(tmp_path, first, "First"))
    assert (stats.files, stats.uploaded_files) == (2, 2)
    assert stats.bytes == stats.uploaded_bytes > 0
    assert (await fetch(domain)).status_code == 404  # uploaded is not live yet

    await host.activate(domain, first)
    page = await fetch(domain)
    assert page.status_code == 200
    assert "<h1>First</h1>" in page.text
    assert await host.current_release(domain) == first

    script = (host.sites_root / domain / "releases" / first / "assets" / "app.js").read_text()
    await host.upload(domain, second, make_release(tmp_path, second, "Second", script=script))
    await host.activate(domain, second)
    page = await fetch(domain)
    assert "<h1>Second</h1>" in page.text
    assert release_marker(page.text) == second
    assert (await fetch(f"www.{domain}", "/assets/app.js")).text == script
    assert os.readlink(host.sites_root / domain / "current") == f"releases/{second}"
    assert await host.releases(domain) == [first, second]


async def test_upload_is_idempotent_and_world_readable_but_immutable(
    host: LocalHost, domain: str, tmp_path: Path
) -> None:
    release = new_id("dep")
    src = make_release(tmp_path, release, "Once")
    # Debris of an earlier attempt that died mid-copy.
    stale = host.sites_root / domain / "releases" / f".tmp-{release}"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")

    first = await host.upload(domain, release, src)
    again = await host.upload(domain, release, src)

    assert first.uploaded_files == 2
    assert (again.files, again.uploaded_files, again.uploaded_bytes) == (2, 0, 0)
    assert not stale.exists()
    tree = host.sites_root / domain / "releases" / release
    assert sorted(p.name for p in tree.rglob("*")) == ["app.js", "assets", "index.html"]
    # Files are hardlinks to the host's immutable objects: readable by nginx, by no one
    # writable.
    for path in [tree, *tree.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o444)


async def test_activating_a_release_that_is_not_there_fails(host: LocalHost, domain: str) -> None:
    with pytest.raises(NotFound) as info:
        await host.activate(domain, new_id("dep"))
    assert info.value.code == "release_not_found"
    assert await host.current_release(domain) is None


async def test_prune_keeps_the_newest_and_never_the_current(
    host: LocalHost, domain: str, tmp_path: Path
) -> None:
    ids = [new_id("dep") for _ in range(5)]
    for release in ids:
        await host.upload(domain, release, make_release(tmp_path, release, release))
    await host.activate(domain, ids[0])  # a rollback to the oldest

    removed = await host.prune(domain, keep=3)

    assert removed == ids[1:3]
    assert await host.releases(domain) == [ids[0], ids[3], ids[4]]
    assert await host.current_release(domain) == ids[0]

    assert await host.prune(domain, keep=1) == [ids[3], ids[4]]
    assert await host.releases(domain) == [ids[0]]


async def test_remove_site_stops_serving_and_deletes_everything(
    host: LocalHost, domain: str, fetch: Fetch, tmp_path: Path
) -> None:
    release = new_id("dep")
    await host.upload(domain, release, make_release(tmp_path, release, "Gone soon"))
    await host.activate(domain, release)
    assert (await fetch(domain)).status_code == 200

    await host.remove_site(domain)

    assert (await fetch(domain)).status_code == 404
    assert not (host.sites_root / domain).exists()
    await host.remove_site(domain)  # a redelivered removal is fine


@pytest.mark.parametrize(
    "bad_domain",
    ["../etc", "Example.com", "example.com.", "a/b.example.com", "localhost", "", ".."],
)
async def test_domains_are_checked_before_they_touch_a_path(
    host: LocalHost, bad_domain: str, tmp_path: Path
) -> None:
    before = sorted(host.sites_root.rglob("*"))
    with pytest.raises(Invalid):
        await host.upload(bad_domain, new_id("dep"), tmp_path)
    with pytest.raises(Invalid):
        await host.activate(bad_domain, new_id("dep"))
    with pytest.raises(Invalid):
        await host.remove_site(bad_domain)
    assert sorted(host.sites_root.rglob("*")) == before


@pytest.mark.parametrize(
    "bad_release", ["../../x", "current", "dep_xyz", "DEP_" + "0" * 28, "dep_" + "0" * 28 + "/.."]
)
async def test_release_ids_are_checked_before_they_touch_a_path(
    host: LocalHost, domain: str, bad_release: str, tmp_path: Path
) -> None:
    with pytest.raises(Invalid) as info:
        await host.upload(domain, bad_release, tmp_path)
    assert info.value.code == "invalid_release_id"
    with pytest.raises(Invalid):
        await host.activate(domain, bad_release)
    assert not (host.sites_root / domain).exists()


async def test_a_release_with_a_symlink_is_refused(
    host: LocalHost, domain: str, tmp_path: Path
) -> None:
    release = new_id("dep")
    src = make_release(tmp_path, release, "Linked")
    os.symlink("/etc/passwd", src / "passwd")
    with pytest.raises(Invalid) as info:
        await host.upload(domain, release, src)
    assert info.value.code == "invalid_release"
    assert await host.releases(domain) == []
