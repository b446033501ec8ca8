"""Content-addressed objects on a web host: release manifests, the host's object store,
materializing a release as hardlinks into it, and collecting objects no release uses.

Stdlib only and free of the rest of Sitefleet, so a remote host can run this same code as
its helper (the SSH transport sends manifests and missing objects, the host does the rest).

Store layout (beside the sites, on the same filesystem, so hardlinks work)::

    <objects_root>/<key[:2]>/<key>      an object: immutable, 0444 (0555 if executable)
    <objects_root>/<key[:2]>/<key>.<n>  copy n >= 1, started when copy n-1 is full
    <objects_root>/.tmp/                objects being written

``key`` is the SHA-256 of the content in hex, plus ``-x`` for an executable file: a hardlink
shares its inode's mode, so the same bytes at 0444 and at 0555 are two objects. The store's
directories are 0700: nginx's workers (``nobody``) cannot even traverse them, and no entry
is ever called ``current``, the only name nginx's root (``<sites>/$host/current``) ends in.

Invariants:
- an object's name says its content; an object is never rewritten or replaced;
- every file of a release is a hardlink to an object, so an object's link count is
  1 + the release files using it, and a count of 1 means no release uses it;
- collecting an object only unlinks the store's name: a release that links it keeps the
  inode, so collection can never change or remove what a release serves.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

FILE_MODE = 0o644
EXEC_MODE = 0o755
DIR_MODE = 0o755
# Objects are read-only for everyone; the store's own directories are private.
OBJECT_MODE = 0o444
EXEC_OBJECT_MODE = 0o555
STORE_DIR_MODE = 0o700
EXEC_SUFFIX = "-x"
# EXT4_LINK_MAX: link(2) fails with EMLINK at this many links to one inode.
EXT4_LINK_MAX = 65_000
TMP_DIR = ".tmp"
# Seconds after which a temp object is debris of a writer that died (a live one takes ms).
TMP_DEBRIS_AGE = 3600
_KEY = re.compile(r"^[0-9a-f]{64}(?:-x)?$")
_COPY_NAME = re.compile(r"^[0-9a-f]{64}(?:-x)?(?:\.[1-9][0-9]*)?$")
_CHUNK = 1024 * 1024


class UnsafeEntry(ValueError):
    """The tree holds something other than regular files and directories."""


class CorruptObject(ValueError):
    """Bytes offered for an object do not hash to its key."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of a release: relative POSIX path, content hash, normalized mode, bytes."""

    path: str
    sha256: str
    mode: int
    size: int

    @property
    def key(self) -> str:
        return self.sha256 + EXEC_SUFFIX if self.mode == EXEC_MODE else self.sha256


def build_manifest(src_dir: Path) -> list[Entry]:
    """Every regular file under ``src_dir``, hashed in one read, sorted by path.

    Modes are normalized to 0644 / 0755 (any execute bit). Raises ``UnsafeEntry`` for a
    symlink, device, FIFO or socket anywhere in the tree. Empty directories are not kept:
    a release's directories are the ones its files need.
    """
    entries: list[Entry] = []
    pending = [("", os.fspath(src_dir))]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as listing:
            for item in listing:
                rel = prefix + item.name
                st = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    pending.append((rel + "/", item.path))
                elif stat.S_ISREG(st.st_mode):
                    mode = EXEC_MODE if st.st_mode & 0o111 else FILE_MODE
                    entries.append(Entry(rel, _hash_file(item.path), mode, st.st_size))
                else:
                    raise UnsafeEntry(f"release entry {rel} is not a regular file or directory")
    entries.sort(key=lambda entry: entry.path)
    return entries


def check_entry(entry: Entry) -> None:
    """Refuse a manifest line that could write outside a release or name a bad object."""
    parts = entry.path.split("/")
    if entry.path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"manifest path {entry.path!r} is not a plain relative path")
    if "\0" in entry.path or entry.mode not in (FILE_MODE, EXEC_MODE):
        raise ValueError(f"manifest entry {entry.path!r} is malformed")
    if not _KEY.match(entry.sha256) or entry.size < 0:
        raise ValueError(f"manifest entry {entry.path!r} has a malformed hash or size")


class ObjectStore:
    """The objects of one web host. Safe for concurrent writers and a concurrent collector:
    every decision is an atomic link(2) or unlink(2), never a check followed by a use."""

    def __init__(self, root: Path, *, max_links: int = EXT4_LINK_MAX) -> None:
        if max_links < 2:
            raise ValueError("max_links must be at least 2 (the store's link plus one)")
        self.root = root
        self._root = os.fspath(root)
        # A copy at this many links is full even if the filesystem would take more; real
        # EMLINK is handled the same way, so this is a ceiling, not the only guard.
        self.max_links = max_links

    def object_path(self, key: str, copy: int = 0) -> Path:
        return Path(self._object_name(key, copy))

    def _object_name(self, key: str, copy: int = 0) -> str:
        # Plain strings on the per-file path: pathlib costs more than the link(2) itself.
        if not _KEY.match(key):
            raise ValueError(f"object key {key!r} is malformed")
        name = key if copy == 0 else f"{key}.{copy}"
        return f"{self._root}/{key[:2]}/{name}"

    def materialize(self, entries: Iterable[Entry], dest: Path) -> list[Entry]:
        """Hardlink every object the store has into ``dest`` (dirs made 0755); return the
        entries whose objects it lacks, in order. ``dest`` must exist and be empty.

        A linked object is pinned at once: from then on a collector cannot take it from
        this release, so "which objects are missing" and "use the present ones" are one
        answer, with no window in between."""
        missing = []
        made = {""}
        base = os.fspath(dest)
        for entry in entries:
            check_entry(entry)
            parent = entry.path.rpartition("/")[0]
            if parent not in made:
                _make_dirs(dest, parent, made)
            if not self.link(entry.key, f"{base}/{entry.path}"):
                missing.append(entry)
        return missing

    def fill(self, missing: Iterable[Entry], src_dir: Path, dest: Path) -> tuple[int, int]:
        """Store the objects of ``missing`` from the same paths under ``src_dir`` and link
        them into ``dest``; returns (objects written, their bytes). Content that occurs at
        several paths is written once."""
        files = size = 0
        for entry in missing:
            target = dest / entry.path
            if self.link(entry.key, target):  # written for an earlier path of this release
                continue
            self.add(entry.key, src_dir / entry.path, target)
            files, size = files + 1, size + entry.size
        return files, size

    def link(self, key: str, dest: str | Path) -> bool:
        """Hardlink the object ``key`` to ``dest``; False if the store lacks it.

        A copy that is full (``max_links``, or EMLINK from the filesystem) passes on to the
        next copy, which is started from the full one when it does not exist yet."""
        copy = 0
        while True:
            obj = self._object_name(key, copy)
            try:
                if os.stat(obj).st_nlink < self.max_links:
                    os.link(obj, dest)
                    return True
            except FileNotFoundError:
                # Copy 0 gone: the object is missing (never stored, or just collected).
                # A later copy gone: start it from the full copy before it.
                if copy == 0 or not self._start_copy(key, copy):
                    return False
                continue
            except OSError as exc:
                if exc.errno != errno.EMLINK:
                    raise
            copy += 1

    def add(self, key: str, src: Path, dest: str | Path) -> None:
        """Store ``src`` (verified against ``key``) as object ``key`` and link it to
        ``dest``. Two deployments adding the same object at once both succeed: the first
        link into the store wins, the content is the same either way."""
        with open(src, "rb") as reader:
            try:
                self.receive(key, reader, None, [dest])
            except CorruptObject:
                raise CorruptObject(f"{src} does not hash to object {key}") from None

    def receive(
        self, key: str, reader: IO[bytes], size: int | None, dests: Sequence[str | Path]
    ) -> None:
        """Store the next ``size`` bytes of ``reader`` (all of it if None), verified against
        ``key``, as object ``key`` and link it at every one of ``dests``. The bytes are
        written once, into a temp file that becomes the object: file creation, not copying,
        is what costs on a web host's disk. ``size`` bytes are consumed even when they do
        not hash to ``key`` (``CorruptObject``), so a stream stays in step."""
        final = self._object_name(key)  # checks the key before it names a temp file
        tmp = self._write_tmp(reader, key, size)
        try:
            # link(2), not rename(2): rename would replace an existing object's inode, and
            # the releases linking the old one would no longer count toward its links.
            try:
                os.link(tmp, final)
            except FileExistsError:
                pass
            except FileNotFoundError:  # the object's shard directory is new
                os.makedirs(os.path.dirname(final), mode=STORE_DIR_MODE, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, final)
            # Our own object cannot be collected here (``tmp`` is a second link to it), but
            # another writer's, found in place, can: then our inode serves the release.
            for dest in dests:
                if not self.link(key, dest):
                    os.link(tmp, dest)
        finally:
            os.unlink(tmp)

    def collect(self, keys: Iterable[str] | None = None) -> list[str]:
        """Delete the objects no release links to (link count 1); returns their names.

        With ``keys``, look only at those objects (e.g. the ones a pruned release used);
        without, scan the whole store and also remove temp files of writers that died."""
        removed = []
        paths = self._all_objects() if keys is None else self._copies(keys)
        for path in paths:
            try:
                if os.lstat(path).st_nlink == 1:
                    # If a release links it meanwhile, it keeps the inode: only the store's
                    # name goes, and the next upload of this content stores it again.
                    path.unlink()
                    removed.append(path.name)
            except FileNotFoundError:
                continue
        if keys is None:
            self._remove_tmp_debris()
        return removed

    def freed_by(self, trees: Iterable[Path]) -> set[str]:
        """Keys of the objects that no link outside ``trees`` (and the store's own) uses:
        what deleting these trees leaves unused. Reads only those files (to hash them).

        A file is an object's if its link count is exactly 1 + its links inside ``trees``;
        a file with no store link (an old copied release, a collected object) is not."""
        links: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> links inside trees
        first: dict[tuple[int, int], tuple[os.stat_result, str]] = {}
        for tree in trees:
            for dirpath, _, filenames in os.walk(tree):
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode):
                        inode = (st.st_dev, st.st_ino)
                        links[inode] = links.get(inode, 0) + 1
                        first.setdefault(inode, (st, path))
        keys = set()
        for inode, (st, path) in first.items():
            if st.st_nlink == links[inode] + 1:
                suffix = EXEC_SUFFIX if st.st_mode & 0o111 else ""
                keys.add(_hash_file(path) + suffix)
        return keys

    def _start_copy(self, key: str, copy: int) -> bool:
        try:
            reader = open(self._object_name(key, copy - 1), "rb")  # noqa: SIM115
        except FileNotFoundError:
            return False
        with reader:
            tmp = self._write_tmp(reader, key, None)
        try:
            with contextlib.suppress(FileExistsError):  # another writer started it first
                os.link(tmp, self._object_name(key, copy))
        finally:
            os.unlink(tmp)
        return True

    def _write_tmp(self, reader: IO[bytes], key: str, size: int | None) -> str:
        """A temp file in the store holding what ``reader`` gives (``size`` bytes, or to its
        end), read-only, checked to hash to ``key``."""
        tmp_dir = f"{self._root}/{TMP_DIR}"
        tmp = f"{tmp_dir}/{key}.{secrets.token_hex(8)}"
        mode = EXEC_OBJECT_MODE if key.endswith(EXEC_SUFFIX) else OBJECT_MODE
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileNotFoundError:  # a new store
            for directory in (self._root, tmp_dir):
                os.makedirs(directory, mode=STORE_DIR_MODE, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        digest = hashlib.sha256()
        left = size
        try:
            # No fsync: a crash loses at most temp files; the object appears by link(2)
            # only once it is whole.
            with open(fd, "wb") as writer:
                while left is None or left > 0:
                    chunk = reader.read(_CHUNK if left is None else min(left, _CHUNK))
                    if not chunk:
                        if left is None:
                            break
                        raise EOFError(f"the stream ended with {left} bytes of object {key} due")
                    digest.update(chunk)
                    writer.write(chunk)
                    if left is not None:
                        left -= len(chunk)
            os.chmod(tmp, mode)  # whatever the umask
            if digest.hexdigest() != key.removesuffix(EXEC_SUFFIX):
                raise CorruptObject(f"the bytes offered do not hash to object {key}")
        except BaseException:  # a short stream, a read error, a bad hash: no temp file left
            os.unlink(tmp)
            raise
        return tmp

    def _copies(self, keys: Iterable[str]) -> Iterator[Path]:
        for key in set(keys):
            yield self.object_path(key)
            copy = 1
            while (path := self.object_path(key, copy)).exists():
                yield path
                copy += 1

    def _all_objects(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for shard in os.scandir(self.root):
            if shard.name == TMP_DIR or not shard.is_dir(follow_symlinks=False):
                continue
            for item in os.scandir(shard.path):
                if _COPY_NAME.match(item.name):
                    yield Path(item.path)

    def _remove_tmp_debris(self) -> None:
        tmp_dir = self.root / TMP_DIR
        if not tmp_dir.is_dir():
            return
        cutoff = time.time() - TMP_DEBRIS_AGE
        for item in os.scandir(tmp_dir):
            with contextlib.suppress(FileNotFoundError):
                if item.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(item.path)


def _hash_file(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with open(fd, "rb") as reader:
        # One read for the usual small file (file_digest allocates a 256 KiB buffer per call).
        head = reader.read(_CHUNK)
        digest = hashlib.sha256(head)
        if len(head) == _CHUNK:
            while chunk := reader.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


def _make_dirs(root: Path, rel: str, made: set[str]) -> None:
    """mkdir -p ``root/rel`` at 0755 whatever the umask (nginx runs as nobody)."""
    parts = rel.split("/")
    for depth in range(1, len(parts) + 1):
        sub = "/".join(parts[:depth])
        if sub in made:
            continue
        directory = root / sub
        directory.mkdir()
        os.chmod(directory, DIR_MODE)
        made.add(sub)
