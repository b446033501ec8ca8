"""Releases on a web host: uploading them as hardlinks into the host's object store,
switching ``current`` atomically, rollback targets, pruning and removing a site.

Layout under a host's sites root (nginx serves ``<sites_root>/<domain>/current``)::

    <domain>/releases/<release_id>/...     one immutable directory per deployment; every
                                           file a hardlink to an object (0444 / 0555)
    <domain>/releases/.tmp-<release_id>/   an upload in progress (renamed when whole)
    <domain>/current -> releases/<id>      relative symlink, replaced with one rename(2)
    .objects/                              the object store (``objects.py``), 0700

A release keeps no metadata beside its files (S9: disk ~ unique content): what pruning may
collect is read from link counts (``ObjectStore.freed_by``).

Nothing outside ``<domain>/current`` is reachable through nginx: its root always ends in
``/current``, which the store never contains, and the store is not traversable by nginx's
workers anyway.

``HostTransport`` is what the deploy pipeline talks to; ``LocalHost`` is the web host on this
machine (the SSH transport to remote hosts implements the same methods). Every method checks
the domain and release id before they touch a path. Host I/O failures raise ``Transient``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

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
from services.deployer.nginx import ReloadCoalescer, tls_listen_for
from services.deployer.nginx_rules import RulesRefused, reload_nginx, write_rules
from services.deployer.objects import (
    DIR_MODE,
    EXT4_LINK_MAX,
    CorruptObject,
    ObjectStore,
    UnsafeEntry,
    build_manifest,
)
from services.deployer.settings import DeployerSettings
from shared.domains import normalize_domain
from shared.errors import Invalid, NotFound, Permanent, Transient
from shared.messages import DeploymentStats


def check_domain(domain: str) -> str:
    """``domain`` if it is already in normalized form, else ``Invalid`` (never a path)."""
    if not _is_normalized(domain):
        raise Invalid(f"domain {domain!r} is not in normalized form", code="invalid_domain")
    return domain


@functools.lru_cache(maxsize=4096)
def _is_normalized(domain: str) -> bool:
    # Every file operation checks its domain, a deployment a dozen times; IDNA's UTS #46
    # mapping costs ~80 us each time, for the same few names.
    try:
        return normalize_domain(domain) == domain
    except Invalid:
        return False


def check_release_id(release_id: str) -> str:
    if not RELEASE_ID.match(release_id):
        raise Invalid(f"release id {release_id!r} is malformed", code="invalid_release_id")
    return release_id


@dataclass(frozen=True)
class RulesChange:
    """What ``HostTransport.set_rules`` did: whether the file changed, and what it held."""

    changed: bool
    previous: str | None


class HostTransport(abc.ABC):
    """One web host, as the deploy pipeline sees it."""

    name: str
    # The host's nginx, for per-site rules (nginx_rules.py): the command that runs it as
    # argv ("-t -q" / "-s reload" are appended) and the address its catch-all server listens
    # on. None: this host serves plain sites only.
    nginx_command: list[str] | None = None
    nginx_listen: str | None = None
    # Its catch-all's TLS listen address (issue 8), which profile server blocks share;
    # None: rules are rendered without TLS.
    nginx_tls_listen: str | None = None
    # Seconds: the host's nginx reloads at most once per window (nginx.ReloadCoalescer).
    reload_window: float = 2.0
    _reloads: ReloadCoalescer | None = None

    @property
    def reloads(self) -> ReloadCoalescer:
        if self._reloads is None:
            self._reloads = ReloadCoalescer(
                self.reload_nginx, host=self.name, window=self.reload_window
            )
        return self._reloads

    def configure_nginx(
        self,
        command: Sequence[str] | None,
        listen: str | None,
        reload_window: float,
        tls_listen: str | None = None,
    ) -> None:
        self.nginx_command = list(command) if command else None
        self.nginx_listen, self.reload_window = listen, reload_window
        self.nginx_tls_listen = tls_listen

    @property
    @abc.abstractmethod
    def sites_path(self) -> str:
        """The host's sites root, as a path on the host."""

    @abc.abstractmethod
    def site_root(self, domain: str) -> str:
        """The directory nginx serves for ``domain`` on the host (its ``current``)."""

    @abc.abstractmethod
    async def upload(self, domain: str, release_id: str, src_dir: Path) -> DeploymentStats:
        """Make ``releases/<release_id>`` hold the content of ``src_dir`` (files read-only:
        0444, or 0555 if executable); it appears whole or not at all. Only objects the host
        lacks are sent: ``files``/``bytes`` count the release, ``uploaded_*`` the objects
        written. A release already there is kept as is (``uploaded_*`` are then 0)."""

    @abc.abstractmethod
    async def activate(self, domain: str, release_id: str) -> None:
        """Point ``current`` at an uploaded release in one atomic step; ``NotFound``
        (``release_not_found``) if it is not on the host."""

    @abc.abstractmethod
    async def deactivate(self, domain: str) -> None:
        """Remove ``current``: the site stops being served, its releases stay."""

    @abc.abstractmethod
    async def current_release(self, domain: str) -> str | None:
        """The release ``current`` points at, or None."""

    @abc.abstractmethod
    async def releases(self, domain: str) -> list[str]:
        """Release ids on the host, oldest upload first."""

    @abc.abstractmethod
    async def prune(self, domain: str, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest releases (the current one always stays and
        counts toward ``keep``); returns the deleted ids."""

    @abc.abstractmethod
    async def remove_site(self, domain: str) -> None:
        """Stop serving the site at once, then delete all its files. Idempotent."""

    @abc.abstractmethod
    async def changed_files(self, domain: str, release_id: str) -> list[str] | None:
        """Files whose content switching to ``release_id`` would change (layout.py's
        ``changed_files``); None if the site serves nothing yet."""

    @abc.abstractmethod
    async def set_rules(self, domain: str, rules: str | None) -> RulesChange:
        """Make the site's nginx rules ``rules`` (None: none), if ``nginx -t`` accepts
        them; not live until ``reload_nginx``. ``Permanent`` ``nginx_config_invalid``
        (the previous rules are back) or ``nginx_rules_unsupported`` (no nginx command)."""

    @abc.abstractmethod
    async def reload_nginx(self) -> None:
        """Reload the host's nginx now (the deploy pipeline goes through ``reloads``)."""

    @abc.abstractmethod
    async def publish_challenge(self, domain: str, token: str, key_authorization: str) -> None:
        """Serve an HTTP-01 key authorization at /.well-known/acme-challenge/<token> for
        any Host (layout.py). Idempotent."""

    @abc.abstractmethod
    async def withdraw_challenge(self, domain: str, token: str) -> None:
        """Stop serving ``token``. Idempotent."""

    @abc.abstractmethod
    async def install_certificate(self, domain: str, names: list[str], pem: bytes) -> None:
        """Write ``pem`` (private key + full chain, already checked) as ``.tls/<name>.pem``
        for each of ``names``, each file replaced whole; nginx reads it at the next TLS
        handshake for that name (no reload). Idempotent."""

    def _nginx(self) -> list[str]:
        if not self.nginx_command:
            raise Permanent(
                f"web host {self.name} has no nginx command configured: it cannot take "
                "per-site nginx rules",
                code="nginx_rules_unsupported",
            )
        return self.nginx_command


@contextlib.contextmanager
def _host_io(action: str, domain: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise Transient(
            f"{action} for {domain} failed on the web host: {exc}", code="host_io_failed"
        ) from exc


class LocalHost(HostTransport):
    """The web host on this machine: plain file operations under ``sites_root``, each run
    in a worker thread so hashing and linking never stall the event loop (and heartbeats)."""

    name = "local"

    def __init__(
        self,
        sites_root: Path,
        *,
        objects_root: Path | None = None,
        max_links: int = EXT4_LINK_MAX,
    ) -> None:
        self.sites_root = sites_root
        # Must be on the sites' filesystem (releases hardlink into it).
        self.store = ObjectStore(objects_root or sites_root / OBJECTS, max_links=max_links)

    @classmethod
    def from_settings(cls, settings: DeployerSettings) -> LocalHost:
        host = cls(
            settings.sites_root,
            objects_root=settings.objects_root,
            max_links=settings.object_max_links,
        )
        host.configure_nginx(
            settings.nginx_command,
            settings.local_nginx_listen,
            settings.nginx_reload_window,
            tls_listen_for(settings.local_nginx_listen, settings.https_port),
        )
        return host

    @property
    def sites_path(self) -> str:
        return str(self.sites_root)

    def _site_dir(self, domain: str) -> Path:
        return self.sites_root / check_domain(domain)

    def site_root(self, domain: str) -> str:
        return str(self._site_dir(domain) / CURRENT)

    def _release_dir(self, domain: str, release_id: str) -> Path:
        return self._site_dir(domain) / RELEASES / check_release_id(release_id)

    async def upload(self, domain: str, release_id: str, src_dir: Path) -> DeploymentStats:
        final = self._release_dir(domain, release_id)
        with _host_io("upload", domain):
            return await asyncio.to_thread(self._upload, final, src_dir)

    def _upload(self, final: Path, src_dir: Path) -> DeploymentStats:
        try:
            entries = build_manifest(src_dir)
        except UnsafeEntry as exc:
            raise Invalid(str(exc), code="invalid_release") from None
        stats = DeploymentStats(files=len(entries), bytes=sum(e.size for e in entries))
        if final.is_dir():
            return stats
        make_dirs(final.parent)
        tmp = final.with_name(TMP_PREFIX + final.name)
        if tmp.exists():  # left by an attempt that died mid-upload
            shutil.rmtree(tmp)
        tmp.mkdir()
        os.chmod(tmp, DIR_MODE)
        # Ask the store what it lacks (linking, and so pinning, all it has), send only that.
        missing = self.store.materialize(entries, tmp)
        try:
            stats.uploaded_files, stats.uploaded_bytes = self.store.fill(missing, src_dir, tmp)
        except CorruptObject as exc:  # the build dir changed under us: build again
            raise Transient(str(exc), code="release_changed_during_upload") from None
        # The release's mtime is its upload time: it orders releases for pruning (ids sort by
        # creation only to the millisecond, and an API may mint them differently).
        now = time.time_ns()
        os.utime(tmp, ns=(now, now))
        os.rename(tmp, final)
        return stats

    async def activate(self, domain: str, release_id: str) -> None:
        release = self._release_dir(domain, release_id)
        with _host_io("activate", domain):
            await asyncio.to_thread(self._activate, release)

    def _activate(self, release: Path) -> None:
        if not release.is_dir() or release.is_symlink():
            raise NotFound(
                f"release {release.name} is not on the web host", code="release_not_found"
            )
        site_dir = release.parent.parent
        tmp = site_dir / f"{CURRENT}.tmp-{secrets.token_hex(6)}"
        os.symlink(f"{RELEASES}/{release.name}", tmp)
        try:
            os.rename(tmp, site_dir / CURRENT)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def deactivate(self, domain: str) -> None:
        current = self._site_dir(domain) / CURRENT
        with _host_io("deactivate", domain):
            await asyncio.to_thread(current.unlink, missing_ok=True)

    async def current_release(self, domain: str) -> str | None:
        current = self._site_dir(domain) / CURRENT
        with _host_io("reading current release", domain):
            return await asyncio.to_thread(read_current, current)

    async def releases(self, domain: str) -> list[str]:
        releases_dir = self._site_dir(domain) / RELEASES
        with _host_io("listing releases", domain):
            return await asyncio.to_thread(list_releases, releases_dir)

    async def prune(self, domain: str, keep: int) -> list[str]:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        site_dir = self._site_dir(domain)
        with _host_io("pruning releases", domain):
            return await asyncio.to_thread(self._prune, site_dir, keep)

    def _prune(self, site_dir: Path, keep: int) -> list[str]:
        releases_dir = site_dir / RELEASES
        current = read_current(site_dir / CURRENT)
        others = [r for r in list_releases(releases_dir) if r != current]
        slots = keep - 1 if current is not None else keep
        doomed = others[: max(len(others) - slots, 0)]
        trees = [releases_dir / release_id for release_id in doomed]
        # Uploads that died half-way (deploys of one site never overlap, so none is live).
        if releases_dir.is_dir():
            trees += [
                entry
                for entry in releases_dir.iterdir()
                if entry.name.startswith(TMP_PREFIX) and entry.is_dir() and not entry.is_symlink()
            ]
        self._delete_trees(trees)
        return doomed

    def _delete_trees(self, trees: list[Path]) -> None:
        """Delete release trees, then the objects that only they used: an object a kept
        release (of any site) links has more links than the deleted trees held, and stays."""
        freed = self.store.freed_by(trees)
        for tree in trees:
            shutil.rmtree(tree)
        self.store.collect(freed)

    async def collect_garbage(self) -> list[str]:
        """Scan the whole store for objects no release uses (``prune`` only looks at the
        objects of the releases it deletes); returns the removed object names."""
        with _host_io("collecting unused objects", "the web host"):
            return await asyncio.to_thread(self.store.collect)

    async def remove_site(self, domain: str) -> None:
        site_dir = self._site_dir(domain)
        with _host_io("removing site", domain):
            await asyncio.to_thread(self._remove_site, site_dir)

    def _remove_site(self, site_dir: Path) -> None:
        # Unlink `current` first: nginx answers 404 from this instant, whatever rmtree meets.
        (site_dir / CURRENT).unlink(missing_ok=True)
        remove_tls(self.sites_root, site_dir.name)
        if site_dir.is_symlink():
            site_dir.unlink()
            return
        if site_dir.exists():
            self._delete_trees([site_dir])

    async def changed_files(self, domain: str, release_id: str) -> list[str] | None:
        site_dir = self._site_dir(domain)
        check_release_id(release_id)
        with _host_io("comparing releases", domain):
            return await asyncio.to_thread(changed_files, site_dir, release_id)

    async def set_rules(self, domain: str, rules: str | None) -> RulesChange:
        check_domain(domain)
        command = self._nginx()
        try:
            with _host_io("writing nginx rules", domain):
                changed, previous = await asyncio.to_thread(
                    write_rules, self.sites_root, domain, rules, command
                )
        except RulesRefused as exc:
            raise Permanent(
                f"writing nginx rules for {domain} on web host {self.name}: {exc}; "
                "the previous rules are back",
                code="nginx_config_invalid",
            ) from None
        return RulesChange(changed=changed, previous=previous)

    async def reload_nginx(self) -> None:
        command = self._nginx()
        with _host_io("reloading nginx", self.name):
            await asyncio.to_thread(reload_nginx, self.sites_root, command)

    async def publish_challenge(self, domain: str, token: str, key_authorization: str) -> None:
        check_domain(domain)
        with _host_io("publishing an ACME challenge", domain), _refused():
            await asyncio.to_thread(
                publish_challenge, self.sites_root, domain, token, key_authorization
            )

    async def withdraw_challenge(self, domain: str, token: str) -> None:
        check_domain(domain)
        with _host_io("withdrawing an ACME challenge", domain), _refused():
            await asyncio.to_thread(withdraw_challenge, self.sites_root, domain, token)

    async def install_certificate(self, domain: str, names: list[str], pem: bytes) -> None:
        check_domain(domain)
        with _host_io("writing the certificate", domain), _refused():
            await asyncio.to_thread(write_certificates, self.sites_root, names, pem)


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    """The host-side layout functions' ``ValueError`` (a refused argument) as ``Invalid``."""
    try:
        yield
    except ValueError as exc:
        raise Invalid(str(exc), code="refused_by_host") from None
