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
