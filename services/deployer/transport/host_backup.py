"""A web host's side of ``sitefleet backup`` / ``restore``: the host's release state (the
objects its releases use, each release's file list, each site's ``current`` and its nginx
rules file) written as one tar stream, and such a stream put back.

Stdlib only, like the host agent: the CLI runs it in its own process for a local host, and
on an SSH host with the host's ``python3 -I -c BOOTSTRAP`` (this module and the ones it
imports sent as source on stdin, then one JSON request line), over one exec per host.

Archive members, in stream order (a restore reads them once, front to back)::

    objects/<key>                         an object a release uses, once, before the first
                                          release that needs it (key: objects.py)
    releases/<domain>/<release_id>.json   {"mtime_ns": ..., "files": [[path, sha256,
                                          mode, size], ...]}  (the upload's manifest)
    current/<domain>                      the release id ``current`` points at
    nginx/<domain>.conf                   the site's rules file (nginx_rules.py)

Objects are stored under their content hash; a release is one immutable directory named by
its id. So a restore only adds what the host lacks: each object is checked against its
name before it is stored, each missing release is built from hardlinks as an upload builds
it (``.tmp-<id>`` renamed whole), and nothing that is served changes until the whole
stream has been read and its SHA-256 is the one the backup recorded. Only then are the
sites' ``current`` links switched and their rules written (one ``nginx -t`` for all, then
one reload). Running a restore twice changes nothing the second time.

Wire protocol over SSH: a chunk is a 4-byte big-endian length and that many bytes; a
zero-length chunk ends a stream. ``export``: stdout carries the archive as chunks, then a
frame (length + JSON) ``{"ok": summary}`` or ``{"error": {"kind", "message"}}``.
``import``: stdin carries the archive as chunks after the request line; stdout one frame.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import struct
import sys
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from services.deployer.layout import (
    CURRENT,
    OBJECTS,
    RELEASE_ID,
    RELEASES,
    RULES,
    TMP_PREFIX,
    list_releases,
    make_dirs,
    read_current,
)
from services.deployer.nginx_rules import RulesRefused, reload_nginx, replace_rules
from services.deployer.objects import (
    DIR_MODE,
    EXEC_MODE,
    EXEC_OBJECT_MODE,
    EXEC_SUFFIX,
    FILE_MODE,
    OBJECT_MODE,
    STORE_DIR_MODE,
    TMP_DIR,
    Entry,
    ObjectStore,
)

# Run by the host's python3 with ``-I -c``: loads the modules sent on stdin under their
# package names, then runs the last one's main() (this module's).
BOOTSTRAP = """\
import sys, types
r = sys.stdin.buffer
for p in ("services", "services.deployer", "services.deployer.transport"):
    m = types.ModuleType(p); m.__path__ = []; sys.modules[p] = m
for _ in range(int(r.readline())):
    n, k = r.readline().split()
    m = types.ModuleType(n.decode()); sys.modules[m.__name__] = m
    exec(compile(r.read(int(k)), m.__name__, "exec"), m.__dict__)
m.main()
"""

CHUNK = struct.Struct("!I")
_CHUNK_BYTES = 1024 * 1024
_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9.-]{0,252}$")
_KEY = re.compile(r"^[0-9a-f]{64}(?:-x)?$")
_COPY = re.compile(r"^([0-9a-f]{64}(?:-x)?)(?:\.[1-9][0-9]*)?$")
# Largest member read into memory: a release's file list, a `current` or a rules file.
_MAX_TEXT_MEMBER = 256 * 1024 * 1024


class BadArchive(ValueError):
    """The stream is not a host archive this code wrote, or it was damaged."""


# -- backup ---------------------------------------------------------------------------


def export_state(sites_root: Path, objects_root: Path | None, out: IO[bytes]) -> dict[str, Any]:
    """Write the host's release state to ``out`` as a gzipped tar stream; return what it
    holds: ``{"sites": {domain: {"current", "releases", "rules"}}, "objects", "bytes"}``.

    Objects that no release uses (garbage not yet collected) and uploads that died half-way
    are left out. Releases are listed oldest upload first, as pruning orders them."""
    store_root = objects_root or sites_root / OBJECTS
    keys = _store_keys(store_root)
    sent: set[str] = set()
    summary: dict[str, Any] = {"sites": {}, "objects": 0, "bytes": 0}
    with tarfile.open(fileobj=out, mode="w|gz", format=tarfile.PAX_FORMAT) as tar:
        for domain in _site_names(sites_root):
            site_dir = sites_root / domain
            kept = []
            for release_id in list_releases(site_dir / RELEASES):
                release_dir = site_dir / RELEASES / release_id
                try:
                    files = []
                    for rel, path, info in _release_files(release_dir):
                        key = keys.get((info.st_dev, info.st_ino)) or _key_of(path, info)
                        if key not in sent:
                            _add_file(tar, f"objects/{key}", path, info, key)
                            sent.add(key)
                            summary["objects"] += 1
                            summary["bytes"] += info.st_size
                        sha256 = key.removesuffix(EXEC_SUFFIX)
                        mode = EXEC_MODE if key.endswith(EXEC_SUFFIX) else FILE_MODE
                        files.append([rel, sha256, mode, info.st_size])
                    mtime_ns = release_dir.stat().st_mtime_ns
                except FileNotFoundError:
                    # Pruned while the backup ran (never the current release): left out.
                    continue
                manifest = {"mtime_ns": mtime_ns, "files": files}
                _add_bytes(tar, f"releases/{domain}/{release_id}.json", json.dumps(manifest))
                kept.append(release_id)
            current = read_current(site_dir / CURRENT)
            if current is not None and current in kept:
                _add_bytes(tar, f"current/{domain}", current)
            else:
                current = None
            summary["sites"][domain] = {"current": current, "releases": kept, "rules": False}
        rules_dir = sites_root / RULES
        for domain in _rules_names(rules_dir):
            _add_bytes(tar, f"nginx/{domain}.conf", (rules_dir / f"{domain}.conf").read_bytes())
            site = summary["sites"].setdefault(domain, {"current": None, "releases": []})
            site["rules"] = True
    return summary


def _site_names(sites_root: Path) -> list[str]:
    if not sites_root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in os.scandir(sites_root)
        if _DOMAIN.match(entry.name) and entry.is_dir(follow_symlinks=False)
    )


def _rules_names(rules_dir: Path) -> list[str]:
    if not rules_dir.is_dir():
        return []
    names = []
    for entry in os.scandir(rules_dir):
        domain = entry.name.removesuffix(".conf")
        if entry.name.endswith(".conf") and _DOMAIN.match(domain) and entry.is_file():
            names.append(domain)
    return sorted(names)


def _store_keys(store_root: Path) -> dict[tuple[int, int], str]:
    """(device, inode) -> key of every object in the store (copies included): a release's
    files are hardlinks to them, so their key is known without reading them."""
    keys: dict[tuple[int, int], str] = {}
    if not store_root.is_dir():
        return keys
    for shard in os.scandir(store_root):
        if shard.name == TMP_DIR or not shard.is_dir(follow_symlinks=False):
            continue
        for item in os.scandir(shard.path):
            found = _COPY.match(item.name)
            if found:
                info = item.stat(follow_symlinks=False)
                keys[(info.st_dev, info.st_ino)] = found[1]
    return keys


def _release_files(release_dir: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(relative path, path, stat) of each file of a release, sorted; anything but regular
    files and directories is refused (a deploy never makes one)."""
    found = []

    def vanished(error: OSError) -> None:
        raise error  # a release being deleted: the caller leaves it out

    for dirpath, dirnames, filenames in os.walk(release_dir, onerror=vanished):
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                found.append((path.relative_to(release_dir).as_posix(), path, info))
            elif not stat.S_ISDIR(info.st_mode):
                raise BadArchive(f"{path} is neither a file nor a directory; not backed up")
    return iter(sorted(found, key=lambda item: item[0]))


def _key_of(path: Path, info: os.stat_result) -> str:
    """A file the store no longer names (collected while a release still linked it): hash
    it, so the archive names its content all the same."""
    digest = hashlib.sha256()
    with open(path, "rb") as reader:
        while chunk := reader.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest() + (EXEC_SUFFIX if info.st_mode & 0o111 else "")


def _add_file(tar: tarfile.TarFile, name: str, path: Path, info: os.stat_result, key: str) -> None:
    member = tarfile.TarInfo(name)
    member.size = info.st_size
    member.mtime = int(info.st_mtime)
    member.mode = EXEC_OBJECT_MODE if key.endswith(EXEC_SUFFIX) else OBJECT_MODE
    with open(path, "rb") as reader:
        tar.addfile(member, reader)


def _add_bytes(tar: tarfile.TarFile, name: str, data: str | bytes) -> None:
    raw = data.encode() if isinstance(data, str) else data
    member = tarfile.TarInfo(name)
    member.size = len(raw)
    member.mode = FILE_MODE
    tar.addfile(member, io.BytesIO(raw))


# -- restore --------------------------------------------------------------------------


class _Hashing(io.RawIOBase):
    """A reader that hashes what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def drain(self) -> None:
        """Read to the end (the tar reader stops at its end-of-archive blocks)."""
        while self._raw.read(_CHUNK_BYTES):
            pass


def import_state(
    sites_root: Path,
    objects_root: Path | None,
    stream: IO[bytes],
    *,
    max_links: int,
    sha256: str | None,
    current: dict[str, str] | None,
    nginx_command: list[str] | None,
    force: bool,
) -> dict[str, Any]:
    """Put the archive read from ``stream`` back (see the module docstring).

    ``current``: the release each site should serve (the restored database's view); a site
    not in it keeps no ``current`` from the archive. None: as the archive says. When a
    wanted release is not in the archive the archive's ``current`` is used (``fallback``).
    Sites whose ``current`` already points elsewhere are switched only with ``force``;
    otherwise they are left as they are (rules too) and returned as ``conflicts``."""
    store = ObjectStore(objects_root or sites_root / OBJECTS, max_links=max_links)
    reader = _Hashing(stream)
    result: dict[str, Any] = {
        "objects_stored": 0,
        "objects_present": 0,
        "releases_built": 0,
        "releases_present": 0,
    }
    archived: dict[str, str] = {}
    rules: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=reader, mode="r|gz") as tar:
            for member in tar:
                kind, _, name = member.name.partition("/")
                if not member.isfile():
                    raise BadArchive(f"archive member {member.name!r} is not a regular file")
                data = tar.extractfile(member)
                assert data is not None  # a regular file
                if kind == "objects":
                    stored = _restore_object(store, name, data, member.size)
                    result["objects_stored" if stored else "objects_present"] += 1
                elif kind == "releases":
                    built = _restore_release(store, sites_root, name, _text(member, data))
                    result["releases_built" if built else "releases_present"] += 1
                elif kind == "current":
                    release_id = _text(member, data).strip()
                    if not RELEASE_ID.match(release_id):
                        raise BadArchive(f"current/{name} names no release: {release_id!r}")
                    archived[_domain(name)] = release_id
                elif kind == "nginx" and name.endswith(".conf"):
                    rules[_domain(name.removesuffix(".conf"))] = _text(member, data)
                else:
                    raise BadArchive(f"unexpected archive member {member.name!r}")
        reader.drain()
    except (tarfile.TarError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise BadArchive(f"the archive is damaged or truncated: {exc}") from None
    digest = reader.digest.hexdigest()
    if sha256 is not None and digest != sha256:
        raise BadArchive(
            f"the archive's SHA-256 is {digest}, the backup recorded {sha256}: nothing served "
            "was changed"
        )
    result.update(_switch(sites_root, archived, rules, current, nginx_command, force))
    result["sha256"], result["size"] = digest, reader.size
    return result


def _switch(
    sites_root: Path,
    archived: dict[str, str],
    rules: dict[str, str],
    current: dict[str, str] | None,
    nginx_command: list[str] | None,
    force: bool,
) -> dict[str, Any]:
    wanted = dict(archived) if current is None else current
    plan: dict[str, str] = {}
    fallback, missing = [], []
    for domain, release_id in sorted(wanted.items()):
        _domain(domain)
        if _is_release(sites_root, domain, release_id):
            plan[domain] = release_id
        elif domain in archived and _is_release(sites_root, domain, archived[domain]):
            plan[domain] = archived[domain]
            fallback.append(domain)
        else:
            missing.append(domain)
    served = {domain: read_current(sites_root / domain / CURRENT) for domain in plan}
    conflicts = {
        domain: served[domain]
        for domain, release_id in plan.items()
        if served[domain] not in (None, release_id)
    }
    outcome: dict[str, Any] = {
        "plan": plan,
        "fallback": fallback,
        "missing": missing,
        "conflicts": conflicts,
    }
    if not force:  # those sites keep serving what they serve, rules included
        plan = {d: r for d, r in plan.items() if d not in conflicts}
        outcome["plan"] = plan
    changed = replace_rules(sites_root, {d: rules.get(d) for d in plan}, nginx_command)
    activated = []
    for domain, release_id in plan.items():
        if served[domain] != release_id:
            _activate(sites_root / domain, release_id)
            activated.append(domain)
    reloaded = bool(changed and nginx_command)
    if reloaded:
        assert nginx_command is not None
        reload_nginx(sites_root, nginx_command)
    outcome.update(activated=activated, rules_changed=changed, reloaded=reloaded)
    return outcome


def _domain(name: str) -> str:
    if not _DOMAIN.match(name):
        raise BadArchive(f"{name!r} is not a plain host name")
    return name


def _text(member: tarfile.TarInfo, data: IO[bytes]) -> str:
    if member.size > _MAX_TEXT_MEMBER:
        raise BadArchive(f"archive member {member.name!r} is too large ({member.size} bytes)")
    return data.read().decode()


def _is_release(sites_root: Path, domain: str, release_id: str) -> bool:
    path = sites_root / domain / RELEASES / release_id
    return bool(RELEASE_ID.match(release_id)) and path.is_dir() and not path.is_symlink()


def _restore_object(store: ObjectStore, key: str, data: IO[bytes], size: int) -> bool:
    """Store one object unless the store has it; False if it had (its bytes are skipped).
    The bytes must hash to ``key``: the store's names never lie."""
    if not _KEY.match(key):
        raise BadArchive(f"objects/{key} is not an object name")
    final = store.object_path(key)
    if final.exists():
        return False
    staging = store.root / TMP_DIR
    for directory in (store.root, staging):
        directory.mkdir(mode=STORE_DIR_MODE, parents=True, exist_ok=True)
    tmp = staging / f"restore-{key}.{secrets.token_hex(8)}"
    digest = hashlib.sha256()
    try:
        with open(tmp, "xb") as out:
            left = size
            while left:
                chunk = data.read(min(left, _CHUNK_BYTES))
                if not chunk:
                    raise BadArchive(f"objects/{key} ends early")
                digest.update(chunk)
                out.write(chunk)
                left -= len(chunk)
        if digest.hexdigest() != key.removesuffix(EXEC_SUFFIX):
            raise BadArchive(f"objects/{key} does not hash to its name")
        os.chmod(tmp, EXEC_OBJECT_MODE if key.endswith(EXEC_SUFFIX) else OBJECT_MODE)
        final.parent.mkdir(mode=STORE_DIR_MODE, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # stored meanwhile: same content
            os.link(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _restore_release(store: ObjectStore, sites_root: Path, name: str, text: str) -> bool:
    """Build one release from its file list, unless the host has it; False if it had."""
    domain, _, file_name = name.partition("/")
    release_id = file_name.removesuffix(".json")
    if not RELEASE_ID.match(release_id) or not file_name.endswith(".json"):
        raise BadArchive(f"releases/{name} is not a release")
    final = sites_root / _domain(domain) / RELEASES / release_id
    if final.is_dir():
        return False
    try:
        manifest = json.loads(text)
        entries = [Entry(str(p), str(h), int(m), int(s)) for p, h, m, s in manifest["files"]]
        mtime_ns = int(manifest["mtime_ns"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BadArchive(f"releases/{name} is malformed: {exc}") from None
    make_dirs(final.parent)
    tmp = final.with_name(TMP_PREFIX + final.name)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    os.chmod(tmp, DIR_MODE)
    try:
        missing = store.materialize(entries, tmp)
        if missing:
            raise BadArchive(
                f"release {release_id} of {domain} needs {len(missing)} object(s) the archive "
                f"does not hold (first: {missing[0].key})"
            )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # The release's mtime orders it for pruning (release.py): keep the original upload time.
    os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.rename(tmp, final)
    return True


def _activate(site_dir: Path, release_id: str) -> None:
    tmp = site_dir / f"{CURRENT}.tmp-{secrets.token_hex(6)}"
    os.symlink(f"{RELEASES}/{release_id}", tmp)
    try:
        os.rename(tmp, site_dir / CURRENT)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- the SSH side -----------------------------------------------------------------------


class ChunkWriter(io.RawIOBase):
    """A writable stream sent as chunks (see the module docstring)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(data):
            self._out.write(CHUNK.pack(len(data)))
            self._out.write(data)
        return len(data)

    def end(self) -> None:
        self._out.write(CHUNK.pack(0))
        self._out.flush()


class ChunkReader(io.RawIOBase):
    """The stream a peer sent as chunks; EOF at the zero-length chunk."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._left = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._done:
            return 0
        if self._left == 0:
            header = self._raw.read(CHUNK.size)
            if len(header) != CHUNK.size:
                raise EOFError("the stream ended without its last chunk")
            (self._left,) = CHUNK.unpack(header)
            if self._left == 0:
                self._done = True
                return 0
        data = self._raw.read(min(len(buffer), self._left))
        if not data:
            raise EOFError("the stream ended inside a chunk")
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


def encode_frame(value: object) -> bytes:
    data = json.dumps(value, separators=(",", ":")).encode()
    return CHUNK.pack(len(data)) + data


def serve(request: dict[str, Any], stdin: IO[bytes], chunks: ChunkWriter) -> Any:
    sites_root = Path(request["sites_root"])
    if not sites_root.is_absolute():
        raise BadArchive(f"sites root {sites_root} is not an absolute path")
    objects_root = Path(request["objects_root"]) if request.get("objects_root") else None
    if request["op"] == "export":
        buffered = io.BufferedWriter(chunks, buffer_size=_CHUNK_BYTES)
        try:
            return export_state(sites_root, objects_root, buffered)
        finally:
            buffered.flush()
    if request["op"] == "import":
        reader = io.BufferedReader(ChunkReader(stdin), buffer_size=_CHUNK_BYTES)
        return import_state(
            sites_root,
            objects_root,
            reader,
            max_links=int(request["max_links"]),
            sha256=request.get("sha256"),
            current=request.get("current"),
            nginx_command=request.get("nginx_command"),
            force=bool(request.get("force")),
        )
    raise BadArchive(f"unknown operation {request['op']!r}")


def main() -> None:
    """One request per process: the request line, then the streams (module docstring)."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    request = json.loads(stdin.readline())
    chunks = ChunkWriter(stdout)
    try:
        reply: dict[str, Any] = {"ok": serve(request, stdin, chunks)}
    except RulesRefused as exc:
        reply = {"error": {"kind": "rules_refused", "message": str(exc)}}
    except BadArchive as exc:
        reply = {"error": {"kind": "bad_archive", "message": str(exc)}}
    except (OSError, ValueError) as exc:
        reply = {"error": {"kind": "io", "message": f"{type(exc).__name__}: {exc}"}}
    if request.get("op") == "export":
        chunks.end()  # the archive's stream ends before the reply, even a failed one
    stdout.write(encode_frame(reply))
    stdout.flush()
