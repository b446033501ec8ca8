"""The web host's object store, through ``LocalHost``: only missing objects are uploaded,
releases share inodes, pruning collects exactly the unused objects, EMLINK, and the store
is never served by nginx."""

import asyncio
import errno
import hashlib
import io
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import pytest

from services.deployer.objects import (
    EXT4_LINK_MAX,
    TMP_DIR,
    CorruptObject,
    ObjectStore,
    build_manifest,
)
from services.deployer.release import LocalHost
from shared.errors import Invalid
from shared.ids import new_id
from tests.deployer.conftest import Fetch, Nginx


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> Path:
    root.mkdir(parents=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def unique_site(tag: str) -> dict[str, str | bytes]:
    """A small site whose every file is content no other test has (the store is shared)."""
    return {
        "index.html": f"<h1>{tag} home</h1>\n",
        "about/index.html": f"<h1>{tag} about</h1>\n",
        "assets/style.css": f"/* {tag} */ body {{ color: #333; }}\n",
        "assets/logo.bin": tag.encode() + bytes(range(256)) * 16,
    }


def key_of(content: str | bytes) -> str:
    data = content.encode() if isinstance(content, str) else content
    return hashlib.sha256(data).hexdigest()


def inode(path: Path) -> int:
    return path.stat().st_ino


@pytest.fixture
def other_domain(sites_root: Path) -> Iterator[str]:
    name = f"site-{uuid.uuid4().hex[:12]}.example.com"
    yield name
    shutil.rmtree(sites_root / name, ignore_errors=True)


def test_the_manifest_lists_every_file_hashed_with_normalized_modes(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"b.txt": "bee", "a/z.sh": "#!/bin/sh\n", "a/b/c": b""})
    os.chmod(src / "a" / "z.sh", 0o700)
    os.chmod(src / "b.txt", 0o600)

    manifest = build_manifest(src)

    assert [(e.path, e.mode, e.size) for e in manifest] == [
        ("a/b/c", 0o644, 0),
        ("a/z.sh", 0o755, 10),
        ("b.txt", 0o644, 3),
    ]
    assert manifest[2].sha256 == key_of("bee")
    assert manifest[1].key == key_of("#!/bin/sh\n") + "-x"


async def test_a_redeploy_that_changes_one_file_uploads_exactly_one_object(
    host: LocalHost, domain: str, fetch: Fetch, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex
    files = unique_site(tag)
    first, second = new_id("dep"), new_id("dep")
    await host.upload(domain, first, write_tree(tmp_path / first, files))
    changed = {**files, "index.html": f"<h1>{tag} home, new</h1>\n"}

    stats = await host.upload(domain, second, write_tree(tmp_path / second, changed))
    await host.activate(domain, second)

    assert (stats.files, stats.uploaded_files) == (4, 1)
    assert stats.uploaded_bytes == len(changed["index.html"])
    assert stats.bytes == sum(len(c) for c in changed.values())
    releases = host.sites_root / domain / "releases"
    for rel in ["about/index.html", "assets/style.css", "assets/logo.bin"]:
        assert inode(releases / first / rel) == inode(releases / second / rel)
        assert inode(releases / second / rel) == inode(host.store.object_path(key_of(files[rel])))
    assert inode(releases / first / "index.html") != inode(releases / second / "index.html")
    assert (await fetch(domain)).text == changed["index.html"]
    assert (await fetch(domain, "/assets/logo.bin")).content == files["assets/logo.bin"]


async def test_content_at_several_paths_is_one_object(
    host: LocalHost, domain: str, tmp_path: Path
) -> None:
    same = f"same {uuid.uuid4()}\n"
    src = write_tree(tmp_path / "src", {"a.txt": same, "b/a.txt": same, "c.txt": same})

    stats = await host.upload(domain, new_id("dep"), src)

    assert (stats.files, stats.uploaded_files, stats.uploaded_bytes) == (3, 1, len(same))
    assert host.store.object_path(key_of(same)).stat().st_nlink == 4


async def test_sites_from_the_same_template_share_their_objects(
    host: LocalHost, domain: str, other_domain: str, tmp_path: Path
) -> None:
    files = unique_site(uuid.uuid4().hex)
    src = write_tree(tmp_path / "src", files)

    one = await host.upload(domain, new_id("dep"), src)
    two = await host.upload(other_domain, new_id("dep"), src)

    assert one.uploaded_files == 4 and two.uploaded_files == 0
    trees = [p for d in (domain, other_domain) for p in (host.sites_root / d).rglob("*")]
    inodes = {p.stat().st_ino for p in trees if p.is_file()}
    # Disk holds each content once, whatever the number of sites using it.
    assert len(inodes) == len(files)


async def test_concurrent_uploads_of_the_same_objects_all_succeed_and_share_them(
    host: LocalHost, sites_root: Path, tmp_path: Path
) -> None:
    files = unique_site(uuid.uuid4().hex)
    src = write_tree(tmp_path / "src", files)
    domains = [f"site-{uuid.uuid4().hex[:12]}.example.com" for _ in range(8)]
    try:
        results = await asyncio.gather(*(host.upload(d, new_id("dep"), src) for d in domains))

        assert all(r.files == 4 for r in results)
        index = host.store.object_path(key_of(files["index.html"]))
        # One inode: the store's name plus one link per site, whoever won the race.
        assert index.stat().st_nlink == 1 + len(domains)
        assert not any((host.store.root / ".tmp").iterdir())
    finally:
        for name in domains:
            shutil.rmtree(sites_root / name, ignore_errors=True)


async def test_pruning_collects_only_objects_no_kept_release_uses(
    host: LocalHost, domain: str, other_domain: str, fetch: Fetch, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex
    shared = f"/* shared {tag} */\n"
    ids = [new_id("dep") for _ in range(5)]
    own = {r: f"<h1>{tag} {r}</h1>\n" for r in ids}
    for release in ids:
        src = write_tree(tmp_path / release, {"index.html": own[release], "app.css": shared})
        await host.upload(domain, release, src)
    # Another site uses one of the releases' pages too: it must survive this site's pruning.
    elsewhere = write_tree(tmp_path / "elsewhere", {"index.html": own[ids[1]]})
    await host.upload(other_domain, new_id("dep"), elsewhere)
    await host.activate(domain, ids[0])  # a rollback to the oldest

    removed = await host.prune(domain, keep=3)

    assert removed == ids[1:3]
    store = host.store
    assert not store.object_path(key_of(own[ids[2]])).exists()  # used by nothing left
    for kept in (ids[0], ids[3], ids[4], ids[1]):  # the last one: used by the other site
        assert store.object_path(key_of(own[kept])).exists()
    assert store.object_path(key_of(shared)).stat().st_nlink == 1 + 3
    # Every kept release is still whole, the current one still served byte for byte.
    for kept in (ids[0], ids[3], ids[4]):
        assert (host.sites_root / domain / "releases" / kept / "index.html").read_text() == own[
            kept
        ]
    assert (await fetch(domain)).text == own[ids[0]]
    assert (await fetch(domain, "/app.css")).text == shared

    await host.remove_site(domain)

    for release in ids:
        assert store.object_path(key_of(own[release])).exists() == (release == ids[1])
    assert not store.object_path(key_of(shared)).exists()


async def test_pruning_collects_objects_linked_several_times_and_executables(
    host: LocalHost, domain: str, tmp_path: Path
) -> None:
    twice, script = f"twice {uuid.uuid4()}\n", f"#!/bin/sh\necho {uuid.uuid4()}\n"
    old, new = new_id("dep"), new_id("dep")
    src = write_tree(tmp_path / old, {"a.txt": twice, "b/a.txt": twice, "run.sh": script})
    os.chmod(src / "run.sh", 0o755)
    await host.upload(domain, old, src)
    await host.upload(domain, new, write_tree(tmp_path / new, {"index.html": "new"}))
    await host.activate(domain, new)
    executable = host.store.object_path(key_of(script) + "-x")
    assert stat.S_IMODE(executable.stat().st_mode) == 0o555

    assert await host.prune(domain, keep=1) == [old]

    assert not host.store.object_path(key_of(twice)).exists()
    assert not executable.exists()


async def test_a_full_collection_removes_objects_of_releases_deleted_by_hand(
    host: LocalHost, domain: str, tmp_path: Path
) -> None:
    content = f"orphan {uuid.uuid4()}\n"
    release = new_id("dep")
    await host.upload(domain, release, write_tree(tmp_path / "src", {"a.txt": content}))
    shutil.rmtree(host.sites_root / domain / "releases" / release)  # not through prune
    obj = host.store.object_path(key_of(content))
    assert obj.exists()

    removed = await host.collect_garbage()

    assert obj.name in removed
    assert not obj.exists()


async def test_a_full_object_starts_another_copy(
    sites_root: Path, domain: str, fetch: Fetch, tmp_path: Path
) -> None:
    # Three links per copy: the store's own plus two releases.
    host = LocalHost(sites_root, max_links=3)
    content = f"popular {uuid.uuid4()}\n"
    ids = [new_id("dep") for _ in range(5)]
    for release in ids:
        src = write_tree(tmp_path / release, {"index.html": content})
        stats = await host.upload(domain, release, src)
        assert stats.uploaded_files == (1 if release == ids[0] else 0)  # a copy is no upload

    key = key_of(content)
    copies = [host.store.object_path(key, n) for n in range(3)]
    assert [p.stat().st_nlink for p in copies] == [3, 3, 2]
    assert [stat.S_IMODE(p.stat().st_mode) for p in copies] == [0o444] * 3
    releases = host.sites_root / domain / "releases"
    assert [inode(releases / r / "index.html") for r in ids] == [
        inode(copies[0]),
        inode(copies[0]),
        inode(copies[1]),
        inode(copies[1]),
        inode(copies[2]),
    ]
    await host.activate(domain, ids[4])
    assert (await fetch(domain)).text == content

    await host.prune(domain, keep=1)

    assert [p.exists() for p in copies] == [False, False, True]


async def test_real_emlink_starts_another_copy(
    sites_root: Path, domain: str, tmp_path: Path
) -> None:
    # A store of its own, on the sites' filesystem: filling an object to ext4's limit is
    # 65,000 links (about a second), and no other test should meet that object.
    objects_root = sites_root / f".objects-emlink-{uuid.uuid4().hex[:8]}"
    host = LocalHost(sites_root, objects_root=objects_root, max_links=10 * EXT4_LINK_MAX)
    content = f"linked to the limit {uuid.uuid4()}\n"
    try:
        await host.upload(domain, new_id("dep"), write_tree(tmp_path / "a", {"f": content}))
        obj = host.store.object_path(key_of(content))
        filler = objects_root / "filler"
        filler.mkdir()
        try:
            for n in range(EXT4_LINK_MAX):
                os.link(obj, filler / str(n))
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
        else:
            pytest.skip("this filesystem has no 65,000-link limit")

        release = new_id("dep")
        await host.upload(domain, release, write_tree(tmp_path / "b", {"f": content}))

        served = host.sites_root / domain / "releases" / release / "f"
        assert served.read_text() == content
        assert inode(served) == inode(host.store.object_path(key_of(content), 1))
    finally:
        shutil.rmtree(objects_root, ignore_errors=True)


async def test_a_fifo_in_the_build_is_refused(host: LocalHost, domain: str, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"index.html": "hi"})
    os.mkfifo(src / "pipe")
    with pytest.raises(Invalid) as info:
        await host.upload(domain, new_id("dep"), src)
    assert info.value.code == "invalid_release"
    assert await host.releases(domain) == []


async def raw_get(port: int, host_header: str, path: str) -> tuple[int, bytes]:
    """One HTTP/1.0 request sent byte for byte (no client normalizes the path or Host)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: {host_header}\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_the_object_store_is_never_served(
    host: LocalHost, domain: str, nginx: Nginx, tmp_path: Path
) -> None:
    secret = f"only through a release {uuid.uuid4()}\n"
    release = new_id("dep")
    await host.upload(domain, release, write_tree(tmp_path / "src", {"index.html": secret}))
    await host.activate(domain, release)
    key = key_of(secret)
    assert host.store.root == host.sites_root / ".objects"
    assert stat.S_IMODE(host.store.root.stat().st_mode) == 0o700
    with pytest.raises(Invalid):
        await host.upload(".objects", new_id("dep"), tmp_path / "src")

    status, body = await raw_get(nginx.port, domain, "/")
    assert (status, body.decode()) == (200, secret)  # the probe itself works
    object_paths = [f"/{key[:2]}/{key}", f"/current/{key[:2]}/{key}", f"/{key[:2]}/"]
    attempts = [(h, p) for h in (".objects", "objects", "www..objects") for p in object_paths]
    attempts += [
        (domain, f"/../../.objects/{key[:2]}/{key}"),
        (domain, f"/..%2f..%2f.objects/{key[:2]}/{key}"),
        (domain, f"/%2e%2e/%2e%2e/.objects/{key[:2]}/{key}"),
        ("proxy..objects", f"/{key[:2]}/{key}"),
        ("www.objects", f"/{key[:2]}/{key}"),
    ]
    for host_header, path in attempts:
        status, body = await raw_get(nginx.port, host_header, path)
        assert status in (400, 403, 404), (host_header, path, status)
        assert secret.encode() not in body


async def test_collection_racing_uploads_and_pruning_never_breaks_a_release(
    host: LocalHost, domain: str, other_domain: str, fetch: Fetch, tmp_path: Path
) -> None:
    # Two sites redeploy, alternating between two asset sets they share, pruning to one
    # release each time: an asset set keeps falling out of use and being used again while
    # a full collection runs over and over, all in worker threads at once.
    asset_sets = [{f"assets/{n}.css": f"/* {uuid.uuid4()} */\n" for n in range(10)} for _ in "xy"]
    done = asyncio.Event()
    kept: dict[str, dict[str, str | bytes]] = {}

    async def redeploy(site: str, phase: int) -> None:
        for n in range(10):
            release = new_id("dep")
            files = {**asset_sets[(n + phase) % 2], "index.html": f"{site} {n} {uuid.uuid4()}"}
            await host.upload(site, release, write_tree(tmp_path / release, files))
            await host.activate(site, release)
            await host.prune(site, keep=1)
            kept[site] = files

    async def collect() -> int:
        rounds = 0
        while not done.is_set():
            await host.collect_garbage()
            rounds += 1
        return rounds

    collector = asyncio.create_task(collect())
    try:
        await asyncio.gather(redeploy(domain, 0), redeploy(other_domain, 1))
    finally:
        done.set()
    assert await collector > 1

    for site, files in kept.items():
        for rel, content in files.items():
            assert (await fetch(site, f"/{rel}")).text == content
        release = await host.current_release(site)
        assert release is not None
        tree = host.sites_root / site / "releases" / release
        assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()) == sorted(
            files
        )


class CollectingStore(ObjectStore):
    """A store whose collector runs just before each link(): the worst moment for it."""

    def link(self, key: str, dest: Path) -> bool:
        self.collect([key])
        return super().link(key, dest)


def test_an_object_collected_while_it_is_being_added_still_reaches_the_release(
    tmp_path: Path,
) -> None:
    store = CollectingStore(tmp_path / "objects")
    content = b"stored long ago, used by nothing"
    src = write_tree(tmp_path / "src", {"f": content})
    ObjectStore(store.root).add(key_of(content), src / "f", tmp_path / "old-release-file")
    (tmp_path / "old-release-file").unlink()  # its release was deleted: link count 1 now
    release = tmp_path / "release"
    release.mkdir()

    # Another writer's copy is in place (our link into the store meets EEXIST), and the
    # collector removes it before we link it into the release: ours must serve instead.
    store.add(key_of(content), src / "f", release / "f")

    assert (release / "f").read_bytes() == content
    assert not any((store.root / ".tmp").iterdir())


def test_objects_found_present_are_pinned_before_the_answer(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    files = {"a": "kept by this upload", "b": "not there yet"}
    src = write_tree(tmp_path / "src", files)
    entries = build_manifest(src)
    store.add(entries[0].key, src / "a", tmp_path / "a-elsewhere")
    (tmp_path / "a-elsewhere").unlink()  # unused: collectable until something links it
    staging = tmp_path / "staging"
    staging.mkdir()

    missing = store.materialize(entries, staging)
    store.collect()  # a collection right after the answer

    assert [e.path for e in missing] == ["b"]
    assert (staging / "a").read_text() == files["a"]
    assert store.object_path(entries[0].key).stat().st_nlink == 2
    assert store.fill(missing, src, staging) == (1, len(files["b"]))
    assert (staging / "b").read_text() == files["b"]


class _FailingStream(io.RawIOBase):
    """Gives ``good`` bytes, then fails as a broken pipe or disk would."""

    def __init__(self, good: bytes) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.left:
            raise OSError(errno.EIO, "read failed")
        n = min(len(buffer), len(self.left))
        buffer[:n] = self.left[:n]
        self.left = self.left[n:]
        return n


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (lambda data: io.BytesIO(data[:100]), EOFError),  # the stream ends early
        (lambda data: io.BufferedReader(_FailingStream(data[:100])), OSError),
        (lambda data: io.BytesIO(b"x" * len(data)), CorruptObject),  # bytes of another hash
    ],
)
def test_an_object_that_cannot_be_received_leaves_nothing_behind(
    tmp_path: Path, stream: Callable[[bytes], IO[bytes]], error: type[BaseException]
) -> None:
    store = ObjectStore(tmp_path / "objects")
    data = os.urandom(4096)
    dest = tmp_path / "release-file"

    with pytest.raises(error):
        store.receive(key_of(data), stream(data), len(data), [dest])

    assert not store.object_path(key_of(data)).exists() and not dest.exists()
    assert list((store.root / TMP_DIR).iterdir()) == []
    store.receive(key_of(data), io.BytesIO(data), len(data), [dest])  # the retry works
    assert dest.read_bytes() == data
