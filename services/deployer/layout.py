"""A web host's directory layout, stdlib only: imported by the deployer (release.py) and
shipped with the SSH host agent, so both sides read and write exactly the same tree.

    <sites_root>/<domain>/releases/<release_id>/   a release (hardlinks into the store)
    <sites_root>/<domain>/releases/.tmp-<id>/      a release being built (renamed when whole)
    <sites_root>/<domain>/current -> releases/<id> what nginx serves
    <sites_root>/.nginx/<domain>.conf              the site's nginx rules, if its template
                                                   has a rule profile (nginx_rules.py)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from services.deployer.objects import DIR_MODE

# shared.ids.new_id(): a short prefix, then 12 hex digits of clock and 16 random.
RELEASE_ID = re.compile(r"^[a-z]{1,16}_[0-9a-f]{28}$")
CURRENT = "current"
RELEASES = "releases"
TMP_PREFIX = ".tmp-"
# The store's default place: beside the sites (same filesystem), a name no domain can have.
OBJECTS = ".objects"
# Per-site nginx rules (nginx_rules.py), included by the catch-all config; no domain's name.
RULES = ".nginx"


def read_current(current: Path) -> str | None:
    try:
        target = os.readlink(current)
    except FileNotFoundError:
        return None
    release_id = Path(target).name
    return release_id if RELEASE_ID.match(release_id) else None


def list_releases(releases_dir: Path) -> list[str]:
    """Release ids, oldest upload first (ids minted in one millisecond do not sort)."""
    if not releases_dir.is_dir():
        return []
    found = []
    for entry in releases_dir.iterdir():
        if RELEASE_ID.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            found.append((entry.stat().st_mtime_ns, entry.name))
    return [name for _, name in sorted(found)]


def make_dirs(path: Path) -> None:
    """mkdir -p with world-readable modes whatever the umask (nginx runs as nobody)."""
    missing = []
    cursor = path
    while not cursor.exists():
        missing.append(cursor)
        cursor = cursor.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, DIR_MODE)


def changed_files(site_dir: Path, release_id: str) -> list[str] | None:
    """Files of release ``release_id`` whose content differs from what ``current`` serves,
    plus the files ``current`` has that the release drops; None if nothing is served yet.

    Both trees are hardlinks into the object store, so one inode means one content: no file
    is read. (A file whose object was copied past the link limit counts as changed: a
    harmless extra CDN purge.)"""
    current = site_dir / CURRENT
    if not current.is_symlink():
        return None
    old, new = _files(current), _files(site_dir / RELEASES / release_id)
    return sorted(path for path in old.keys() | new.keys() if old.get(path) != new.get(path))


def _files(root: Path) -> dict[str, tuple[int, int] | str]:
    """Relative path -> (device, inode) of each file, or the target of each symlink."""
    found: dict[str, tuple[int, int] | str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            path = base / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = os.readlink(path)
            else:
                info = path.stat()
                found[rel] = (info.st_dev, info.st_ino)
    return found
