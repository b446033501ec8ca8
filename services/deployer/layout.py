"""A web host's directory layout, stdlib only: imported by the deployer (release.py) and
shipped with the SSH host agent, so both sides read and write exactly the same tree.

    <sites_root>/<domain>/releases/<release_id>/   a release (hardlinks into the store)
    <sites_root>/<domain>/releases/.tmp-<id>/      a release being built (renamed when whole)
    <sites_root>/<domain>/current -> releases/<id> what nginx serves
    <sites_root>/.nginx/<domain>.conf              the site's nginx rules, if its template
                                                   has a rule profile (nginx_rules.py)
    <sites_root>/.acme-challenge/<token>           an HTTP-01 key authorization, served at
                                                   /.well-known/acme-challenge/<token>
    <sites_root>/.acme-challenge/.sites/<domain>/<token>
                                                   a hardlink of it: which site published it
                                                   (so the site's removal withdraws it)
    <sites_root>/.tls/<name>.pem                   private key + full chain for one served
                                                   name, loaded by nginx per TLS handshake

Who may read ``.tls/``: its directory's owner and, when it is set-group-id, its group are
the users nginx's workers run as (made so by whoever sets nginx up: ``cli/devstack`` for the
project's own nginx, ``sitefleet host bootstrap`` for hosts). A certificate file is written
0600, or 0640 in a set-group-id directory, and given the directory's owner and group when
the writer is root.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
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
# HTTP-01 answers and certificates (names no domain can have).
ACME_CHALLENGES = ".acme-challenge"
CHALLENGE_SITES = ".sites"
TLS = ".tls"
# RFC 8555 §8.3: a token is base64url with at least 128 bits of entropy (22 characters); the
# key authorization is "<token>.<base64url SHA-256 JWK thumbprint>" (43 characters).
ACME_TOKEN = re.compile(r"^[A-Za-z0-9_-]{22,128}$")
KEY_AUTHORIZATION = re.compile(r"^(?P<token>[A-Za-z0-9_-]{22,128})\.[A-Za-z0-9_-]{43}$")
# A served name (apex, www., proxy.): lower-case host name, one plain path component.
TLS_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,252}$")
CHALLENGE_MODE = 0o644


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


def check_challenge(token: str, key_authorization: str | None) -> None:
    """``ValueError`` unless ``token`` is a base64url ACME token and ``key_authorization``
    (when given) is ``<token>.<thumbprint>`` for it."""
    # fullmatch: "$" would also accept a trailing newline.
    if not isinstance(token, str) or not ACME_TOKEN.fullmatch(token):
        raise ValueError("the ACME token is not 22-128 base64url characters")
    if key_authorization is None:
        return
    found = isinstance(key_authorization, str) and KEY_AUTHORIZATION.fullmatch(key_authorization)
    if not found or found["token"] != token:
        raise ValueError("the key authorization is not <token>.<base64url SHA-256 thumbprint>")


def _site_component(domain: str) -> str:
    if not TLS_NAME.fullmatch(domain):
        raise ValueError(f"domain {domain!r} is not a plain host name")
    return domain


def publish_challenge(sites_root: Path, domain: str, token: str, key_authorization: str) -> None:
    """Serve ``key_authorization`` at /.well-known/acme-challenge/<token> (replaced whole:
    tmp + rename), and remember that ``domain`` published it. Idempotent."""
    check_challenge(token, key_authorization)
    challenges = sites_root / ACME_CHALLENGES
    mine = challenges / CHALLENGE_SITES / _site_component(domain)
    make_dirs(mine)
    tmp = challenges / f".{token}.tmp-{secrets.token_hex(6)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, CHALLENGE_MODE)
        with open(fd, "wb") as out:
            os.fchmod(out.fileno(), CHALLENGE_MODE)  # whatever the umask
            out.write(key_authorization.encode())
        os.rename(tmp, challenges / token)
    finally:
        tmp.unlink(missing_ok=True)
    marker = mine / token
    marker.unlink(missing_ok=True)
    os.link(challenges / token, marker)


def withdraw_challenge(sites_root: Path, domain: str, token: str) -> None:
    """Stop serving ``token``. Idempotent."""
    check_challenge(token, None)
    challenges = sites_root / ACME_CHALLENGES
    (challenges / token).unlink(missing_ok=True)
    (challenges / CHALLENGE_SITES / _site_component(domain) / token).unlink(missing_ok=True)


def served_names(domain: str) -> list[str]:
    """The names nginx serves a site under (its catch-all map): apex, www., proxy."""
    return [domain, f"www.{domain}", f"proxy.{domain}"]


def write_certificates(sites_root: Path, names: list[str], pem: bytes) -> None:
    """``.tls/<name>.pem`` = ``pem`` (key + full chain) for each name, each replaced whole
    (tmp + rename: nginx's next handshake reads the old file or the new one, never half),
    readable by nginx's workers only (see the module docstring). Idempotent."""
    for name in names:
        if not TLS_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a plain host name")
    tls_dir = sites_root / TLS
    if not tls_dir.is_dir():
        make_dirs(sites_root)
        tls_dir.mkdir(mode=0o700, exist_ok=True)
    info = os.stat(tls_dir)
    mode = 0o640 if info.st_mode & stat.S_ISGID else 0o600
    for name in names:
        tmp = tls_dir / f".{name}.pem.tmp-{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as out:
                if os.geteuid() == 0:
                    os.fchown(out.fileno(), info.st_uid, info.st_gid)
                os.fchmod(out.fileno(), mode)
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, tls_dir / f"{name}.pem")
        finally:
            tmp.unlink(missing_ok=True)


def remove_tls(sites_root: Path, domain: str) -> None:
    """A removed site's certificates and published challenges gone. Idempotent."""
    for name in served_names(_site_component(domain)):
        (sites_root / TLS / f"{name}.pem").unlink(missing_ok=True)
    challenges = sites_root / ACME_CHALLENGES
    mine = challenges / CHALLENGE_SITES / domain
    if mine.is_dir() and not mine.is_symlink():
        for marker in mine.iterdir():
            if ACME_TOKEN.fullmatch(marker.name):
                (challenges / marker.name).unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
        mine.rmdir()
