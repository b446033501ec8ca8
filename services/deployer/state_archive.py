"""A web host's release state as one archive (``sitefleet backup``): the objects its
releases use, each release's file list, each site's ``current``, its nginx rules file and
its certificate files, written as a gzipped tar stream. state_restore.py puts it back.

Stdlib only: run in the CLI's process for a local host and on SSH hosts by the host's
python3 (transport/host_backup.py ships it).

Archive members, in stream order (a restore reads them once, front to back)::

    objects/<key>                         an object a release uses, once, before the first
                                          release that needs it (key: objects.py)
    releases/<domain>/<release_id>.json   {"mtime_ns": ..., "files": [[path, sha256,
                                          mode, size], ...]}  (the upload's manifest)
    current/<domain>                      the release id ``current`` points at
    nginx/<domain>.conf                   the site's rules file (nginx_rules.py)
    tls/<name>.pem                        a served name's key and certificate chain
                                          (layout.py; 0600 in the archive)
    end.json                              {"objects": n, "releases": n}: the archive is
                                          whole (tar itself ends quietly when cut short)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from services.deployer.layout import (
    CURRENT,
    OBJECTS,
    RELEASES,
    RULES,
    TLS,
    list_releases,
    read_current,
    served_names,
)
from services.deployer.objects import (
    EXEC_MODE,
    EXEC_OBJECT_MODE,
    EXEC_SUFFIX,
    FILE_MODE,
    OBJECT_MODE,
    TMP_DIR,
)

CHUNK_BYTES = 1024 * 1024
# The last member: what came before it, so a stream cut short is known to be.
END = "end.json"
DOMAIN = re.compile(r"^[a-z0-9][a-z0-9.-]{0,252}$")
_COPY = re.compile(r"^([0-9a-f]{64}(?:-x)?)(?:\.[1-9][0-9]*)?$")


class BadArchive(ValueError):
    """The stream is not a host archive this code wrote, or it was damaged."""


def export_state(sites_root: Path, objects_root: Path | None, out: IO[bytes]) -> dict[str, Any]:
    """Write the host's release state to ``out`` as a gzipped tar stream; return what it
    holds: ``{"sites": {domain: {"current", "releases", "rules", "tls"}}, "objects",
    "bytes"}`` (``tls``: the served names with a certificate file).

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
            summary["sites"][domain] = {
                "current": current,
                "releases": kept,
                "rules": False,
                "tls": [],
            }
        rules_dir = sites_root / RULES
        for domain in _rules_names(rules_dir):
            _add_bytes(tar, f"nginx/{domain}.conf", (rules_dir / f"{domain}.conf").read_bytes())
            _site(summary, domain)["rules"] = True
        tls_dir = sites_root / TLS
        by_name = {name: d for d in summary["sites"] for name in served_names(d)}
        for name in _names(tls_dir, ".pem"):
            pem = (tls_dir / f"{name}.pem").read_bytes()
            _add_bytes(tar, f"tls/{name}.pem", pem, mode=0o600)
            _site(summary, by_name.get(name, name))["tls"].append(name)
        releases = sum(len(site["releases"]) for site in summary["sites"].values())
        end = {"objects": summary["objects"], "releases": releases}
        _add_bytes(tar, END, json.dumps(end))
    return summary


def _site(summary: dict[str, Any], domain: str) -> dict[str, Any]:
    empty: dict[str, Any] = {"current": None, "releases": [], "rules": False, "tls": []}
    site: dict[str, Any] = summary["sites"].setdefault(domain, empty)
    return site


def _site_names(sites_root: Path) -> list[str]:
    if not sites_root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in os.scandir(sites_root)
        if DOMAIN.match(entry.name) and entry.is_dir(follow_symlinks=False)
    )


def _rules_names(rules_dir: Path) -> list[str]:
    return _names(rules_dir, ".conf")


def _names(directory: Path, suffix: str) -> list[str]:
    """The host names of ``<name><suffix>`` files in ``directory`` (not temp files)."""
    if not directory.is_dir():
        return []
    names = []
    for entry in os.scandir(directory):
        name = entry.name.removesuffix(suffix)
        if entry.name.endswith(suffix) and DOMAIN.match(name) and entry.is_file():
            names.append(name)
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
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest() + (EXEC_SUFFIX if info.st_mode & 0o111 else "")


def _add_file(tar: tarfile.TarFile, name: str, path: Path, info: os.stat_result, key: str) -> None:
    member = tarfile.TarInfo(name)
    member.size = info.st_size
    member.mtime = int(info.st_mtime)
    member.mode = EXEC_OBJECT_MODE if key.endswith(EXEC_SUFFIX) else OBJECT_MODE
    with open(path, "rb") as reader:
        tar.addfile(member, reader)


def _add_bytes(tar: tarfile.TarFile, name: str, data: str | bytes, mode: int = FILE_MODE) -> None:
    raw = data.encode() if isinstance(data, str) else data
    member = tarfile.TarInfo(name)
    member.size = len(raw)
    member.mode = mode
    tar.addfile(member, io.BytesIO(raw))
