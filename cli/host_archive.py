"""Running a web host's side of backup and restore (services/deployer/state_archive.py,
state_restore.py) on the host: in this process for a local host, over one SSH exec for an SSH
host (logged in with the host's pinned key, as ``sitefleet host add`` checked it)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import asyncssh
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from cli.hosts import connect_pinned
from services.deployer import hosts, layout, nginx_rules, objects, state_archive, state_restore
from services.deployer.settings import DeployerSettings
from services.deployer.state_archive import BadArchive
from services.deployer.transport import host_backup
from services.deployer.transport.host_agent import BOOTSTRAP
from services.deployer.transport.host_backup import CHUNK
from shared.errors import Invalid, SitefleetError, Transient
from shared.models import WebHost

# Bytes per chunk sent to a host during a restore.
_SEND_BYTES = 1024 * 1024
# Characters of a failed host process's stderr kept in the error.
_STDERR_TAIL = 2000


@dataclass(frozen=True)
class HostPlace:
    """Where a web host keeps its release state and how to reach it. ``row`` None: the
    settings' local web host (used by the deployer while no host is registered)."""

    name: str
    sites_root: str
    objects_root: str | None
    http_host: str
    http_port: int
    nginx_command: list[str] | None
    row: WebHost | None
    # Its nginx's TLS listener (the health check follows a redirect to HTTPS there).
    https_port: int | None = None

    @property
    def kind(self) -> str:
        return self.row.kind if self.row is not None else "local"

    @classmethod
    def of_row(cls, row: WebHost, settings: DeployerSettings) -> HostPlace:
        return cls(
            row.name,
            row.sites_root,
            row.objects_root,
            row.http_host,
            row.http_port,
            list(row.nginx_command) if row.nginx_command else None,
            row,
            row.https_port or settings.https_port,
        )

    @classmethod
    def of_settings(cls, settings: DeployerSettings) -> HostPlace:
        return cls(
            "local",
            str(settings.sites_root),
            str(settings.objects_root) if settings.objects_root else None,
            settings.http_host,
            settings.http_port,
            settings.nginx_command,
            None,
            settings.https_port,
        )


# The columns of web_hosts a backup or restore uses. A backup taken before an upgrade's
# migrations reads a schema older than this code's models: only the columns it has are
# read (https_port is newer than the rest; a restore has migrated to head first).
_HOST_COLUMNS = (
    WebHost.id,
    WebHost.name,
    WebHost.kind,
    WebHost.ssh_user,
    WebHost.ssh_address,
    WebHost.ssh_port,
    WebHost.ssh_key_path,
    WebHost.host_key,
    WebHost.sites_root,
    WebHost.objects_root,
    WebHost.http_host,
    WebHost.http_port,
    WebHost.nginx_command,
    WebHost.https_port,
)


async def registered_hosts(session: AsyncSession) -> list[WebHost]:
    """The registered web hosts by name, as (detached) rows holding what a backup or a
    restore uses. Empty if the schema has no web hosts yet."""
    present = set(
        await session.scalars(
            text(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = 'web_hosts'"
            )
        )
    )
    if not present:
        return []
    columns = [column for column in _HOST_COLUMNS if column.key in present]
    rows = await session.execute(select(*columns).order_by(WebHost.name))
    return [WebHost(**row._asdict()) for row in rows]


class HashingFile:
    """A file being written, with the SHA-256 and size of what went in."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()


async def export_host(
    place: HostPlace, settings: DeployerSettings, out: HashingFile
) -> dict[str, Any]:
    """Write the host's release state to ``out``; returns what it holds."""
    request = {"op": "export", "sites_root": place.sites_root, "objects_root": place.objects_root}
    if place.kind == "local":
        return await _local(
            place,
            lambda: state_archive.export_state(
                Path(place.sites_root),
                _path(place.objects_root),
                out,  # type: ignore[arg-type]
            ),
        )
    return await _remote(place, settings, request, receive=out.write)


async def import_host(
    place: HostPlace,
    settings: DeployerSettings,
    archive: Path,
    *,
    sha256: str,
    current: dict[str, str],
    force: bool,
) -> dict[str, Any]:
    """Put ``archive`` back on the host (see state_restore.import_state); returns its report."""
    request = {
        "op": "import",
        "sites_root": place.sites_root,
        "objects_root": place.objects_root,
        "max_links": settings.object_max_links,
        "sha256": sha256,
        "current": current,
        "nginx_command": place.nginx_command,
        "force": force,
    }
    if place.kind == "local":

        def work() -> dict[str, Any]:
            with open(archive, "rb") as stream:
                return state_restore.import_state(
                    Path(place.sites_root),
                    _path(place.objects_root),
                    stream,
                    max_links=settings.object_max_links,
                    sha256=sha256,
                    current=current,
                    nginx_command=place.nginx_command,
                    force=force,
                )

        return await _local(place, work)
    return await _remote(place, settings, request, send=archive)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


async def _local(place: HostPlace, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return await asyncio.to_thread(work)
    except nginx_rules.RulesRefused as exc:
        raise Invalid(f"web host {place.name}: {exc}", code="nginx_config_invalid") from None
    except BadArchive as exc:
        raise Invalid(f"web host {place.name}: {exc}", code="bad_backup") from None
    except OSError as exc:
        raise Transient(f"web host {place.name}: {exc}", code="host_io_failed") from None


@functools.cache
def _modules() -> bytes:
    """What BOOTSTRAP reads first: the host side and the modules it imports, as source, in
    import order (host_backup last: BOOTSTRAP runs the last module's main())."""
    modules = [objects, layout, nginx_rules, state_archive, state_restore, host_backup]
    parts = [f"{len(modules)}\n".encode()]
    for module in modules:
        source = Path(str(module.__file__)).read_bytes()
        parts += [f"{module.__name__} {len(source)}\n".encode(), source]
    return b"".join(parts)


async def _remote(
    place: HostPlace,
    settings: DeployerSettings,
    request: dict[str, Any],
    *,
    receive: Callable[[bytes], Any] | None = None,
    send: Path | None = None,
) -> dict[str, Any]:
    row = place.row
    assert row is not None and row.ssh_user and row.ssh_address and row.ssh_key_path
    assert row.host_key
    spec = hosts.SshSpec(row.ssh_user, row.ssh_address, row.ssh_port or 22)
    where = f"web host {place.name} ({spec.user}@{spec.address}:{spec.port})"
    conn = await connect_pinned(
        spec, Path(row.ssh_key_path), row.host_key, settings.ssh_connect_timeout
    )
    try:
        command = shlex.join([settings.ssh_remote_python, "-I", "-c", BOOTSTRAP])
        process: asyncssh.SSHClientProcess[bytes] = await conn.create_process(
            command, encoding=None
        )
        process.stdin.write(_modules() + json.dumps(request).encode() + b"\n")
        try:
            if send is not None:
                await _send_chunks(process, send)
            if receive is not None:
                await _receive_chunks(process, receive)
            reply = await _frame(process)
        except asyncio.IncompleteReadError:
            if conn.is_closed():
                raise
            raise SitefleetError(
                f"{where}: the backup helper ended without an answer: "
                f"{await _stderr_tail(process)}",
                code="host_agent_failed",
            ) from None
    except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
        raise Transient(
            f"{where}: the connection failed: {type(exc).__name__}: {exc}",
            code="host_unreachable",
        ) from exc
    finally:
        conn.close()
        with contextlib.suppress(asyncssh.Error, OSError):
            await conn.wait_closed()
    if "error" in reply:
        kind, message = reply["error"]["kind"], reply["error"]["message"]
        if kind == "io":
            raise Transient(f"{where}: {message}", code="host_io_failed")
        code = "nginx_config_invalid" if kind == "rules_refused" else "bad_backup"
        raise Invalid(f"{where}: {message}", code=code)
    result: dict[str, Any] = reply["ok"]
    return result


async def _send_chunks(process: asyncssh.SSHClientProcess[bytes], archive: Path) -> None:
    """Stream the archive; a host that stopped reading (it refused the archive and
    replied) ends the sending, and its reply says why."""
    reader = await asyncio.to_thread(open, archive, "rb")
    try:
        while data := await asyncio.to_thread(reader.read, _SEND_BYTES):
            process.stdin.write(CHUNK.pack(len(data)) + data)
            await process.stdin.drain()
        process.stdin.write(CHUNK.pack(0))
        await process.stdin.drain()
    except (OSError, asyncssh.Error):
        return
    finally:
        reader.close()


async def _receive_chunks(
    process: asyncssh.SSHClientProcess[bytes], receive: Callable[[bytes], Any]
) -> None:
    while True:
        (size,) = CHUNK.unpack(await process.stdout.readexactly(CHUNK.size))
        if size == 0:
            return
        data = await process.stdout.readexactly(size)
        await asyncio.to_thread(receive, data)


async def _frame(process: asyncssh.SSHClientProcess[bytes]) -> dict[str, Any]:
    (size,) = CHUNK.unpack(await process.stdout.readexactly(CHUNK.size))
    reply: dict[str, Any] = json.loads(await process.stdout.readexactly(size))
    return reply


async def _stderr_tail(process: asyncssh.SSHClientProcess[bytes]) -> str:
    stderr = b""
    with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
        async with asyncio.timeout(5):
            stderr = await process.stderr.read()
    tail = stderr.decode(errors="replace").strip()[-_STDERR_TAIL:]
    return tail or "(no output)"
