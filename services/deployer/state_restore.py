"""Putting a web host's release state back from its archive (state_archive.py).

Objects are stored under their content hash; a release is one immutable directory named by
its id. So a restore only adds what the host lacks: each object is checked against its
name before it is stored, and each missing release is built from hardlinks beside its
place, as an upload builds it (``.tmp-<id>``). Only once the whole stream has been read
and its SHA-256 is the one the backup recorded are the releases renamed into place, the
sites' ``current`` links switched, their rules written (one ``nginx -t`` for all, then
one reload) and their certificate files put back (layout.write_certificates: nginx reads
them per handshake); a damaged archive leaves nothing behind but verified objects
(garbage the next collection removes). Running a restore twice changes nothing.

Stdlib only, like state_archive.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from services.deployer.layout import (
    CURRENT,
    OBJECTS,
    RELEASE_ID,
    RELEASES,
    TLS,
    TMP_PREFIX,
    make_dirs,
    read_current,
    served_names,
    write_certificates,
)
from services.deployer.nginx_rules import reload_nginx, replace_rules
from services.deployer.objects import (
    DIR_MODE,
    CorruptObject,
    Entry,
    ObjectStore,
)
from services.deployer.state_archive import CHUNK_BYTES, DOMAIN, END, BadArchive

_KEY = re.compile(r"^[0-9a-f]{64}(?:-x)?$")
# Largest member read into memory: a release's file list, a `current` or a rules file.
_MAX_TEXT_MEMBER = 256 * 1024 * 1024
# A certificate file: key and full chain (tls.py's MAX_PEM_BYTES, and the key).
_MAX_PEM = 256 * 1024


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
        while self._raw.read(CHUNK_BYTES):
            pass


@dataclass
class _Held:
    """What the archive holds besides objects: releases built (not yet in place), each
    site's archived ``current``, rules files, certificate files by served name."""

    built: list[tuple[Path, Path]] = field(default_factory=list)
    current: dict[str, str] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)
    tls: dict[str, bytes] = field(default_factory=dict)
    end: dict[str, Any] | None = None


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
    # Releases are built beside their place (.tmp-<id>) and renamed in only once the whole
    # archive has checked out: a damaged one leaves nothing but verified objects behind.
    held = _Held()
    built = held.built
    try:
        try:
            with tarfile.open(fileobj=reader, mode="r|gz") as tar:
                for member in tar:
                    _read_member(tar, member, store, sites_root, result, held)
            reader.drain()
        except (tarfile.TarError, EOFError, zlib.error, UnicodeDecodeError) as exc:
            raise BadArchive(f"the archive is damaged or truncated: {exc}") from None
        _check_end(held, result)
        digest = reader.digest.hexdigest()
        if sha256 is not None and digest != sha256:
            raise BadArchive(
                f"the archive's SHA-256 is {digest}, the backup recorded {sha256}: nothing "
                "served was changed"
            )
        while built:
            tmp, final = built.pop(0)
            os.rename(tmp, final)
    finally:
        for tmp, _ in built:
            shutil.rmtree(tmp, ignore_errors=True)
    result.update(_switch(sites_root, held, current, nginx_command, force))
    result["sha256"], result["size"] = digest, reader.size
    return result


def _read_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    store: ObjectStore,
    sites_root: Path,
    result: dict[str, Any],
    held: _Held,
) -> None:
    kind, _, name = member.name.partition("/")
    if not member.isfile():
        raise BadArchive(f"archive member {member.name!r} is not a regular file")
    if held.end is not None:
        raise BadArchive(f"archive member {member.name!r} follows the end marker")
    data = tar.extractfile(member)
    assert data is not None  # a regular file
    if member.name == END:
        try:
            held.end = dict(json.loads(_text(member, data)))
        except (ValueError, TypeError) as exc:
            raise BadArchive(f"the end marker is malformed: {exc}") from None
    elif kind == "objects":
        stored = _restore_object(store, name, data, member.size)
        result["objects_stored" if stored else "objects_present"] += 1
    elif kind == "releases":
        release = _build_release(store, sites_root, name, _text(member, data))
        if release is not None:
            held.built.append(release)
        result["releases_built" if release else "releases_present"] += 1
    elif kind == "current":
        release_id = _text(member, data).strip()
        if not RELEASE_ID.match(release_id):
            raise BadArchive(f"current/{name} names no release: {release_id!r}")
        held.current[_domain(name)] = release_id
    elif kind == "nginx" and name.endswith(".conf"):
        held.rules[_domain(name.removesuffix(".conf"))] = _text(member, data)
    elif kind == "tls" and name.endswith(".pem"):
        if member.size > _MAX_PEM:
            raise BadArchive(f"{member.name} is too large ({member.size} bytes)")
        held.tls[_domain(name.removesuffix(".pem"))] = data.read()
    else:
        raise BadArchive(f"unexpected archive member {member.name!r}")


def _check_end(held: _Held, result: dict[str, Any]) -> None:
    """The stream ended with its end marker, after as many objects and releases as it
    announces."""
    if held.end is None:
        raise BadArchive("the archive is truncated: its end marker is missing")
    objects = result["objects_stored"] + result["objects_present"]
    releases = result["releases_built"] + result["releases_present"]
    if (held.end.get("objects"), held.end.get("releases")) != (objects, releases):
        raise BadArchive(
            f"the archive announces {held.end.get('objects')} objects and "
            f"{held.end.get('releases')} releases but holds {objects} and {releases}"
        )


def _switch(
    sites_root: Path,
    held: _Held,
    current: dict[str, str] | None,
    nginx_command: list[str] | None,
    force: bool,
) -> dict[str, Any]:
    archived = held.current
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
    if not force:  # those sites keep serving what they serve, rules and certificates too
        plan = {d: r for d, r in plan.items() if d not in conflicts}
        outcome["plan"] = plan
    changed = replace_rules(sites_root, {d: held.rules.get(d) for d in plan}, nginx_command)
    certificates = _restore_certificates(sites_root, held.tls, plan)
    activated = []
    for domain, release_id in plan.items():
        if served[domain] != release_id:
            _activate(sites_root / domain, release_id)
            activated.append(domain)
    reloaded = bool(changed and nginx_command)
    if reloaded:
        assert nginx_command is not None
        reload_nginx(sites_root, nginx_command)
    outcome.update(
        activated=activated, rules_changed=changed, reloaded=reloaded, certificates=certificates
    )
    return outcome


def _restore_certificates(
    sites_root: Path, tls: dict[str, bytes], plan: dict[str, str]
) -> list[str]:
    """Write each served name's certificate file the archive holds, unless the host has
    that very file (nginx reads them per handshake: no reload). Returns the names written."""
    written = []
    for domain in plan:
        for name in served_names(domain):
            pem = tls.get(name)
            if pem is None:
                continue
            try:
                if (sites_root / TLS / f"{name}.pem").read_bytes() == pem:
                    continue
            except OSError:  # none yet (or unreadable): write it
                pass
            write_certificates(sites_root, [name], pem)
            written.append(name)
    return written


def _domain(name: str) -> str:
    if not DOMAIN.match(name):
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
    if store.object_path(key).exists():
        return False
    try:
        store.receive(key, data, size, [])
    except EOFError:
        raise BadArchive(f"objects/{key} ends early") from None
    except CorruptObject:
        raise BadArchive(f"objects/{key} does not hash to its name") from None
    return True


def _build_release(
    store: ObjectStore, sites_root: Path, name: str, text: str
) -> tuple[Path, Path] | None:
    """Build one release from its file list beside its place, unless the host has it;
    returns (where it was built, its place), or None if the host had it."""
    domain, _, file_name = name.partition("/")
    release_id = file_name.removesuffix(".json")
    if not RELEASE_ID.match(release_id) or not file_name.endswith(".json"):
        raise BadArchive(f"releases/{name} is not a release")
    final = sites_root / _domain(domain) / RELEASES / release_id
    if final.is_dir():
        return None
    try:
        manifest = json.loads(text)
        entries = [Entry(str(p), str(h), int(m), int(s)) for p, h, m, s in manifest["files"]]
        mtime_ns = int(manifest["mtime_ns"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BadArchive(f"releases/{name} is malformed: {exc}") from None
    make_dirs(final.parent)
    tmp = final.with_name(TMP_PREFIX + final.name)
    if tmp.exists():  # debris of a restore or upload that died
        shutil.rmtree(tmp)
    tmp.mkdir()
    os.chmod(tmp, DIR_MODE)
    try:
        missing = store.materialize(entries, tmp)  # links pin the objects (objects.py)
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
    return tmp, final


def _activate(site_dir: Path, release_id: str) -> None:
    tmp = site_dir / f"{CURRENT}.tmp-{secrets.token_hex(6)}"
    os.symlink(f"{RELEASES}/{release_id}", tmp)
    try:
        os.rename(tmp, site_dir / CURRENT)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
