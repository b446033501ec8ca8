"""The web hosts (``web_hosts``) and which of them each site lives on (``site_hosts``):
registering hosts (``sitefleet host``), placing a site at its first deployment, and one
transport per host for the deployer process.

Placement: while no web host is registered the deployer uses the local web host of its
settings, as before hosts existed. Once hosts exist, a site's first deployment places it on
the ``hosts_per_site`` enabled hosts that hold the fewest sites (ties: by name), and the
site stays there: every later deployment, rollback and removal goes to exactly those hosts.
A disabled host gets no new sites; a host that still has sites cannot be removed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

import asyncssh
from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from services.deployer.nginx import tls_listen_for, valid_listen
from services.deployer.release import HostTransport, LocalHost
from services.deployer.settings import DeployerSettings
from services.deployer.target import Target
from services.deployer.transport.ssh import SshHost
from shared.db import create_sessionmaker
from shared.errors import Conflict, Invalid, NotFound, Transient, Unavailable
from shared.ids import new_id
from shared.models import SiteHost, WebHost

T = TypeVar("T")

HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SSH_SPEC = re.compile(
    r"^(?P<user>[A-Za-z0-9._-]+)@(?P<address>[^@:\[\]]+|\[[0-9a-fA-F:]+\])(:(?P<port>\d{1,5}))?$"
)
HTTP_SPEC = re.compile(r"^(?P<host>[^:\[\]]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class SshSpec:
    user: str
    address: str
    port: int


def parse_ssh(spec: str) -> SshSpec:
    """``user@address[:port]`` (port 22 by default)."""
    found = SSH_SPEC.match(spec)
    if found is None:
        raise Invalid(f"{spec!r} is not user@address[:port]", code="invalid_ssh_address")
    port = int(found["port"] or 22)
    if not 0 < port < 65536:
        raise Invalid(f"port {port} is out of range", code="invalid_ssh_address")
    return SshSpec(found["user"], found["address"].strip("[]"), port)


def parse_http(spec: str) -> tuple[str, int]:
    """``address:port`` where the host's nginx answers health checks."""
    found = HTTP_SPEC.match(spec)
    if found is None or not 0 < int(found["port"]) < 65536:
        raise Invalid(f"{spec!r} is not address:port", code="invalid_http_address")
    return found["host"].strip("[]"), int(found["port"])


async def fetch_host_key(address: str, port: int, *, connect_timeout: float = 10.0) -> str:
    """The server's public host key as an OpenSSH line (what ``ssh-keyscan`` prints), to be
    pinned. ``Transient`` (``host_unreachable``) if nothing answers there as an SSH server."""
    try:
        async with asyncio.timeout(connect_timeout):
            key = await asyncssh.get_server_host_key(address, port, config=None)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise Transient(
            f"cannot fetch the host key of {address}:{port}: {type(exc).__name__}: {exc}",
            code="host_unreachable",
        ) from exc
    if key is None:
        raise Transient(f"{address}:{port} sent no host key", code="host_unreachable")
    return key.export_public_key().decode().strip()


async def add_host(
    session: AsyncSession,
    name: str,
    *,
    ssh: SshSpec | None,
    key_path: Path | None,
    host_key: str | None,
    sites_root: str,
    objects_root: str | None,
    http: tuple[str, int],
    public_addresses: Sequence[str],
    nginx_command: Sequence[str] | None = None,
    nginx_listen: str | None = None,
    https_port: int | None = None,
) -> WebHost:
    """Register a web host (``ssh`` None: a local one). For SSH hosts, ``host_key`` is the
    key fetched from the server (``fetch_host_key``), pinned from now on."""
    if not HOST_NAME.match(name):
        raise Invalid(f"host name {name!r} must be lower-case letters, digits and -")
    for root in (sites_root, objects_root):
        if root is not None and not PurePosixPath(root).is_absolute():
            raise Invalid(f"{root!r} is not an absolute path", code="invalid_path")
    if nginx_command:
        nginx_listen = nginx_listen or f"{http[0]}:{http[1]}"
    if nginx_listen is not None and not valid_listen(nginx_listen):
        raise Invalid(f"nginx listen address {nginx_listen!r} is not port, addr:port or [v6]:port")
    if https_port is not None and not 0 < https_port < 65536:
        raise Invalid(f"HTTPS port {https_port} is out of range", code="invalid_http_address")
    if ssh is not None and (key_path is None or host_key is None):
        raise Invalid("an SSH host needs a client key and its pinned host key")
    if await session.scalar(select(WebHost.id).where(WebHost.name == name)) is not None:
        raise Conflict(f"web host {name!r} already exists", code="host_exists")
    host = WebHost(
        id=new_id("host"),
        name=name,
        kind="local" if ssh is None else "ssh",
        ssh_user=ssh.user if ssh else None,
        ssh_address=ssh.address if ssh else None,
        ssh_port=ssh.port if ssh else None,
        ssh_key_path=str(key_path) if ssh and key_path else None,
        host_key=host_key if ssh else None,
        sites_root=sites_root,
        objects_root=objects_root,
        http_host=http[0],
        http_port=http[1],
        public_addresses=list(public_addresses),
        nginx_command=list(nginx_command) if nginx_command else None,
        nginx_listen=nginx_listen,
        https_port=https_port,
        enabled=True,
    )
    session.add(host)
    await session.flush()
    return host


async def list_hosts(session: AsyncSession) -> list[tuple[WebHost, int]]:
    """Every web host with the number of sites on it, by name."""
    counts = (
        select(SiteHost.host_id, func.count().label("sites")).group_by(SiteHost.host_id).subquery()
    )
    rows = await session.execute(
        select(WebHost, func.coalesce(counts.c.sites, 0))
        .outerjoin(counts, counts.c.host_id == WebHost.id)
        .order_by(WebHost.name)
    )
    return [(host, int(sites)) for host, sites in rows.all()]


async def remove_host(session: AsyncSession, name: str) -> None:
    host = await session.scalar(select(WebHost).where(WebHost.name == name))
    if host is None:
        raise NotFound(f"no web host named {name!r}", code="host_not_found")
    sites = await session.scalar(
        select(func.count()).select_from(SiteHost).where(SiteHost.host_id == host.id)
    )
    if sites:
        raise Conflict(
            f"web host {name!r} still holds {sites} site(s); remove them first",
            code="host_in_use",
        )
    await session.delete(host)


async def place_site(session: AsyncSession, site_id: str, per_site: int) -> list[WebHost]:
    """The hosts of ``site_id``, placing it first if it has none (see the module
    docstring). Empty if no web host is registered. Callers hold the site's lock."""
    assigned = list(
        await session.scalars(
            select(WebHost)
            .join(SiteHost, SiteHost.host_id == WebHost.id)
            .where(SiteHost.site_id == site_id)
            .order_by(WebHost.name)
        )
    )
    if assigned or await session.scalar(select(func.count()).select_from(WebHost)) == 0:
        return assigned
    load = (
        select(SiteHost.host_id, func.count().label("sites")).group_by(SiteHost.host_id).subquery()
    )
    chosen = list(
        await session.scalars(
            select(WebHost)
            .outerjoin(load, load.c.host_id == WebHost.id)
            .where(WebHost.enabled.is_(True))
            .order_by(func.coalesce(load.c.sites, 0), WebHost.name)
            .limit(per_site)
        )
    )
    if not chosen:
        raise Transient("no enabled web host to place the site on", code="no_web_host")
    for host in chosen:
        session.add(SiteHost(site_id=site_id, host_id=host.id))
    await session.flush()
    return sorted(chosen, key=lambda h: h.name)


async def assigned_hosts(session: AsyncSession, site_id: str) -> list[WebHost]:
    return list(
        await session.scalars(
            select(WebHost)
            .join(SiteHost, SiteHost.host_id == WebHost.id)
            .where(SiteHost.site_id == site_id)
            .order_by(WebHost.name)
        )
    )


class HostRegistry:
    """The web hosts of one deployer process: one transport per host (SSH connections stay
    pooled between jobs), the site's placement read from the database per job."""

    def __init__(
        self, engine: AsyncEngine, settings: DeployerSettings, *, local: HostTransport
    ) -> None:
        self.engine = engine
        self.settings = settings
        # The settings' web host, used while no host is registered.
        self.local = Target.local(local, settings)
        self._transports: dict[str, HostTransport] = {}
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def targets_for_deploy(self, site_id: str) -> list[Target]:
        """The site's hosts, placing the site if this is its first deployment."""
        # Read first without a transaction (the usual answer: the site is placed, or no
        # host is registered), place in one only when needed; the caller holds the site's
        # lock, so nothing places it in between.
        rows, registered = await self._in_autocommit("reading the site's hosts", site_id)
        if not rows and registered:
            rows = await self._in_transaction(
                "placing the site", lambda s: place_site(s, site_id, self.settings.hosts_per_site)
            )
        return [self._target(row) for row in rows] or [self.local]

    async def targets_for_removal(self, site_id: str) -> list[Target]:
        rows, _ = await self._in_autocommit("reading the site's hosts", site_id, count=False)
        return [self._target(row) for row in rows] or [self.local]

    async def targets_of_site(self, site_id: str) -> list[Target]:
        """The hosts the site lives on, placing nothing: the settings' web host while no
        host is registered; none for a site that is on no registered host (never deployed,
        or removed)."""
        rows, registered = await self._in_autocommit("reading the site's hosts", site_id)
        if rows:
            return [self._target(row) for row in rows]
        return [] if registered else [self.local]

    async def forget_site(self, site_id: str) -> None:
        """The site's files are gone from its hosts: it holds no place on them any more."""

        async def work(session: AsyncSession) -> None:
            await session.execute(delete(SiteHost).where(SiteHost.site_id == site_id))

        await self._in_transaction("forgetting the site's hosts", work)

    async def close(self) -> None:
        transports, self._transports = self._transports, {}
        for transport in transports.values():
            if isinstance(transport, SshHost):
                await transport.close()

    async def _in_autocommit(
        self, action: str, site_id: str, *, count: bool = True
    ) -> tuple[list[WebHost], int]:
        """The site's hosts and, when it has none and ``count``, how many hosts are
        registered: statements in autocommit (no BEGIN and COMMIT round trips)."""
        try:
            async with AsyncSession(self._autocommit, expire_on_commit=False) as session:
                rows = await assigned_hosts(session, site_id)
                if rows or not count:
                    return rows, len(rows)
                registered = await session.scalar(select(func.count()).select_from(WebHost))
                return rows, int(registered or 0)
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable(f"{action} failed: the database is unavailable: {exc}") from exc

    async def _in_transaction(self, action: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        try:
            async with create_sessionmaker(self.engine).begin() as session:
                return await work(session)
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable(f"{action} failed: the database is unavailable: {exc}") from exc

    def _target(self, row: WebHost) -> Target:
        transport = self._transports.get(row.id)
        if transport is None:
            transport = self._transports[row.id] = build_transport(row, self.settings)
        else:
            # The row is read per job: a host bootstrapped again onto other ports takes
            # them at once, keeping its transport (and its pooled SSH connections).
            configure_nginx(transport, row, self.settings)
        return Target(
            transport,
            row.http_host,
            row.http_port,
            row.https_port or self.settings.https_port,
            row.id,
        )


def build_transport(row: WebHost, settings: DeployerSettings) -> HostTransport:
    if row.kind == "local":
        local = LocalHost(
            Path(row.sites_root),
            objects_root=Path(row.objects_root) if row.objects_root else None,
            max_links=settings.object_max_links,
        )
        local.name = row.name
        configure_nginx(local, row, settings)
        return local
    assert row.ssh_address and row.ssh_user and row.ssh_key_path and row.host_key
    remote = SshHost(
        row.name,
        address=row.ssh_address,
        port=row.ssh_port or 22,
        username=row.ssh_user,
        client_key=Path(row.ssh_key_path),
        host_keys=[row.host_key],
        sites_root=row.sites_root,
        objects_root=row.objects_root,
        max_links=settings.object_max_links,
        remote_python=settings.ssh_remote_python,
        connect_timeout=settings.ssh_connect_timeout,
        command_timeout=settings.ssh_command_timeout,
        keepalive_interval=settings.ssh_keepalive_interval,
        keepalive_count_max=settings.ssh_keepalive_count_max,
        max_channels=settings.ssh_max_channels,
    )
    configure_nginx(remote, row, settings)
    return remote


def configure_nginx(transport: HostTransport, row: WebHost, settings: DeployerSettings) -> None:
    """How the host's nginx is run and where it listens, as its row says now."""
    transport.configure_nginx(
        row.nginx_command,
        row.nginx_listen,
        settings.nginx_reload_window,
        tls_listen_for(row.nginx_listen, row.https_port or settings.https_port),
    )
