"""The web host's side of the SSH transport: a process per pooled session that serves one
request after another, doing the same file work as ``LocalHost`` (release.py) on the
host's sites root and object store.

Stdlib only. The host has no Sitefleet checkout: ``SshHost`` runs the host's
``python3 -I -c BOOTSTRAP`` (a fixed command line) and sends this module and ``objects.py``
as source on stdin, then requests. Customer data (domains, release ids, paths of a
manifest) only ever travels in the JSON request, never on a command line.

Wire protocol (stdin -> the agent, stdout -> the deployer)::

    stdin   b"<n>\\n" then n times b"<module name> <bytes>\\n" + source     (BOOTSTRAP reads)
            then, as many times as the deployer likes (until it closes stdin):
            frame: request {"op": ..., "sites_root": ..., "objects_root": ..., ...}
            upload only, after the agent's "missing" frame: the missing objects' bytes,
            concatenated in the order asked, each exactly its manifest size
    stdout  frame: {"ok": result} | {"error": {"kind": ..., "message": ...}}
            upload: first {"missing": [key, ...]} (or the final frame at once if the
            release is already there or the request is refused), then the final frame

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON. Error kinds:
``not_found`` (no such release), ``invalid`` (a refused argument or manifest line),
``corrupt`` (bytes that do not hash to their object), ``io`` (an OSError on the host),
``rules_refused`` (``nginx -t`` refused a site's rules; the previous ones are back).
Anything else is a bug: a traceback on stderr and exit status 1. After a failed upload
other than ``corrupt`` the agent exits once it has replied (unread object bytes may be
left in the stream).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from services.deployer.layout import (
    CURRENT,
    OBJECTS,
    RELEASE_ID,
    RELEASES,
    TMP_PREFIX,
    changed_files,
    list_releases,
    make_dirs,
    publish_challenge,
    read_current,
    remove_tls,
    withdraw_challenge,
    write_certificates,
)
from services.deployer.nginx_rules import RulesRefused, reload_nginx, write_rules
from services.deployer.objects import (
    DIR_MODE,
    CorruptObject,
    Entry,
    ObjectStore,
)

# The deployer sends normalized domains only (shared.domains); the agent checks no more than
# that a domain is one plain path component that cannot name the store (".objects").
_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9.-]{0,252}$")

# Run by the host's python3 with ``-I -c``: loads the modules sent on stdin under their
# package names (so ``from services.deployer.objects import ...`` above works), then runs
# the last one's main() (this module for the agent; the backup's host side sends its own).
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

FRAME = struct.Struct("!I")
_CHUNK = 1024 * 1024


class ReleaseMissing(Exception):
    """The release to activate is not on the host."""


def encode_frame(value: object) -> bytes:
    data = json.dumps(value, separators=(",", ":")).encode()
    return FRAME.pack(len(data)) + data


def write_frame(stream: IO[bytes], value: object) -> None:
    stream.write(encode_frame(value))
    stream.flush()


def main() -> None:
    """Serve requests until the deployer closes stdin: one agent per pooled session, so
    python3 starts and the modules arrive once, not once per operation."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = stdin.read(FRAME.size)
        if not header:
            return  # the deployer closed the session
        if len(header) != FRAME.size:
            raise EOFError("the deployer closed the stream inside a frame header")
        (size,) = FRAME.unpack(header)
        request = json.loads(_read_exact(stdin, size))
        reply, in_step = answer(request, stdin, stdout)
        write_frame(stdout, reply)
        if not in_step:
            return  # the stream's position is unknown: the deployer starts another agent


def answer(request: dict[str, Any], stdin: IO[bytes], stdout: IO[bytes]) -> tuple[Any, bool]:
    """The reply frame for ``request``, and whether the streams are still in step (an
    upload that failed may have left object bytes unread: that session ends)."""
    upload = request.get("op") == "upload"
    try:
        result = serve(request, stdin, stdout)
    except ReleaseMissing as exc:
        return {"error": {"kind": "not_found", "message": str(exc)}}, True
    except RulesRefused as exc:
        return {"error": {"kind": "rules_refused", "message": str(exc)}}, True
    except CorruptObject as exc:  # raised only after the whole stream was read
        return {"error": {"kind": "corrupt", "message": str(exc)}}, True
    except OSError as exc:
        return {"error": {"kind": "io", "message": str(exc)}}, not upload
    except ValueError as exc:
        return {"error": {"kind": "invalid", "message": str(exc)}}, not upload
    return {"ok": result}, True


def serve(request: dict[str, Any], stdin: IO[bytes], stdout: IO[bytes]) -> Any:
    """Run one request; the upload also talks on the streams between request and reply."""
    objects_root = request.get("objects_root")
    sites = SiteFiles(
        Path(request["sites_root"]),
        objects_root=Path(objects_root) if objects_root else None,
        max_links=int(request["max_links"]),
    )
    op = request["op"]
    if op == "upload":
        return sites.upload(
            request["domain"], request["release_id"], request["manifest"], stdin, stdout
        )
    handlers: dict[str, Callable[[], Any]] = {
        "activate": lambda: sites.activate(request["domain"], request["release_id"]),
        "deactivate": lambda: sites.deactivate(request["domain"]),
        "current_release": lambda: sites.current_release(request["domain"]),
        "releases": lambda: sites.releases(request["domain"]),
        "prune": lambda: sites.prune(request["domain"], int(request["keep"])),
        "remove_site": lambda: sites.remove_site(request["domain"]),
        "collect_garbage": sites.collect_garbage,
        "changed_files": lambda: changed_files(
            sites._site_dir(request["domain"]),
            sites._release_dir(request["domain"], request["release_id"]).name,
        ),
        "set_rules": lambda: sites.set_rules(
            request["domain"], request["rules"], request["nginx_command"]
        ),
        "reload_nginx": lambda: reload_nginx(sites.sites_root, _argv(request["nginx_command"])),
        "publish_challenge": lambda: publish_challenge(
            sites.sites_root,
            sites._site_dir(request["domain"]).name,
            request["token"],
            request["key_authorization"],
        ),
        "withdraw_challenge": lambda: withdraw_challenge(
            sites.sites_root, sites._site_dir(request["domain"]).name, request["token"]
        ),
        "install_certificate": lambda: sites.install_certificate(request["names"], request["pem"]),
    }
    if op not in handlers:
        raise ValueError(f"unknown operation {op!r}")
    return handlers[op]()


class SiteFiles:
    """The sites root and object store of this host (``LocalHost``'s layout and steps)."""

    def __init__(self, sites_root: Path, *, objects_root: Path | None, max_links: int) -> None:
        if not sites_root.is_absolute():
            raise ValueError(f"sites root {sites_root} is not an absolute path")
        self.sites_root = sites_root
        self.store = ObjectStore(objects_root or sites_root / OBJECTS, max_links=max_links)

    def _site_dir(self, domain: str) -> Path:
        if not _DOMAIN.match(domain):
            raise ValueError(f"domain {domain!r} is not a plain host name")
        return self.sites_root / domain

    def _release_dir(self, domain: str, release_id: str) -> Path:
        if not RELEASE_ID.match(release_id):
            raise ValueError(f"release id {release_id!r} is malformed")
        return self._site_dir(domain) / RELEASES / release_id

    def upload(
        self,
        domain: str,
        release_id: str,
        manifest: list[list[Any]],
        stdin: IO[bytes],
        stdout: IO[bytes],
    ) -> dict[str, int]:
        final = self._release_dir(domain, release_id)
        entries = [Entry(str(p), str(h), int(m), int(s)) for p, h, m, s in manifest]
        if final.is_dir():
            return {"stored": 0}
        make_dirs(final.parent)
        tmp = final.with_name(TMP_PREFIX + final.name)
        if tmp.exists():  # left by an attempt that died mid-upload
            shutil.rmtree(tmp)
        tmp.mkdir()
        os.chmod(tmp, DIR_MODE)
        # Linking what the store has pins it (see ObjectStore.materialize); ask for the rest.
        missing = self.store.materialize(entries, tmp)
        by_key: dict[str, list[Entry]] = {}
        for entry in missing:
            by_key.setdefault(entry.key, []).append(entry)
        write_frame(stdout, {"missing": list(by_key)})
        stored = self._receive(by_key, stdin, tmp) if by_key else 0
        now = time.time_ns()  # the upload time orders releases for pruning, as in LocalHost
        os.utime(tmp, ns=(now, now))
        os.rename(tmp, final)
        return {"stored": stored}

    def _receive(self, by_key: dict[str, list[Entry]], stdin: IO[bytes], dest: Path) -> int:
        """Store each object straight from the stream (verified by ``ObjectStore.receive``)
        and link it at every path that uses it. The whole stream is read even after a bad
        object, so the deployer always gets to read the reply."""
        failure: CorruptObject | None = None
        stored = 0
        for key, entries in by_key.items():
            size = entries[0].size
            if failure is not None:
                _skip_exact(stdin, size)
                continue
            try:
                self.store.receive(key, stdin, size, [dest / entry.path for entry in entries])
                stored += 1
            except CorruptObject as exc:
                failure = exc
        if failure is not None:
            raise failure
        return stored

    def activate(self, domain: str, release_id: str) -> None:
        release = self._release_dir(domain, release_id)
        if not release.is_dir() or release.is_symlink():
            raise ReleaseMissing(f"release {release_id} is not on the web host")
        site_dir = release.parent.parent
        tmp = site_dir / f"{CURRENT}.tmp-{secrets.token_hex(6)}"
        os.symlink(f"{RELEASES}/{release_id}", tmp)
        try:
            os.rename(tmp, site_dir / CURRENT)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def deactivate(self, domain: str) -> None:
        (self._site_dir(domain) / CURRENT).unlink(missing_ok=True)

    def current_release(self, domain: str) -> str | None:
        return read_current(self._site_dir(domain) / CURRENT)

    def releases(self, domain: str) -> list[str]:
        return list_releases(self._site_dir(domain) / RELEASES)

    def prune(self, domain: str, keep: int) -> list[str]:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        site_dir = self._site_dir(domain)
        releases_dir = site_dir / RELEASES
        current = read_current(site_dir / CURRENT)
        others = [r for r in list_releases(releases_dir) if r != current]
        slots = keep - 1 if current is not None else keep
        doomed = others[: max(len(others) - slots, 0)]
        trees = [releases_dir / release_id for release_id in doomed]
        if releases_dir.is_dir():  # uploads that died half-way (none is live, see LocalHost)
            trees += [
                entry
                for entry in releases_dir.iterdir()
                if entry.name.startswith(TMP_PREFIX) and entry.is_dir() and not entry.is_symlink()
            ]
        self._delete_trees(trees)
        return doomed

    def remove_site(self, domain: str) -> None:
        site_dir = self._site_dir(domain)
        # `current` first: nginx answers 404 from this instant, whatever rmtree meets.
        (site_dir / CURRENT).unlink(missing_ok=True)
        remove_tls(self.sites_root, site_dir.name)
        if site_dir.is_symlink():
            site_dir.unlink()
        elif site_dir.exists():
            self._delete_trees([site_dir])

    def set_rules(self, domain: str, rules: object, nginx_command: object) -> dict[str, Any]:
        if rules is not None and not isinstance(rules, str):
            raise ValueError("rules must be text or null")
        changed, previous = write_rules(
            self.sites_root, self._site_dir(domain).name, rules, _argv(nginx_command)
        )
        return {"changed": changed, "previous": previous}

    def collect_garbage(self) -> list[str]:
        return self.store.collect()

    def install_certificate(self, names: object, pem: object) -> None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("names must be a list of host names")
        if not isinstance(pem, str):
            raise ValueError("pem must be text")
        write_certificates(self.sites_root, names, pem.encode())

    def _delete_trees(self, trees: list[Path]) -> None:
        freed = self.store.freed_by(trees)
        for tree in trees:
            shutil.rmtree(tree)
        self.store.collect(freed)


def _argv(value: object) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise ValueError("nginx_command must be a non-empty list of strings")
    return value


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError(f"the deployer closed the stream ({len(data)} of {size} bytes)")
    return data


def _skip_exact(src: IO[bytes], size: int) -> None:
    while size:
        chunk = src.read(min(size, _CHUNK))
        if not chunk:
            raise EOFError(f"the deployer closed the stream with {size} bytes of an object due")
        size -= len(chunk)


if __name__ == "__main__":
    main()
