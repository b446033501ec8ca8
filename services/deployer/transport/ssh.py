"""Web hosts reached over SSH: ``SshHost`` runs the stdlib-only host agent (host_agent.py)
with the host's python3 over one pooled connection per host; each agent serves request after
request, so python3 starts and the agent's source travels once per session, not per
operation.

Round trips do not grow with the number of files: an upload is one request in which the
deployer sends the manifest, the agent answers the keys its object store lacks, the deployer
streams exactly those objects, and the agent stores, verifies, links and renames the release
into place. Every other operation is one request and one reply. ``requests`` counts the
operations, ``execs`` the agents started, ``connects`` the connections.

Errors (``shared.errors``): connecting, authenticating, a lost connection or an operation
with no answer in time -> ``Transient`` ``host_unreachable``; the agent failing on the host
-> ``Transient`` (``host_io_failed``, ``host_agent_failed``); the rest as ``LocalHost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from collections.abc import AsyncIterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import asyncssh

from services.deployer.layout import CURRENT
from services.deployer.objects import EXT4_LINK_MAX, Entry, UnsafeEntry, build_manifest
from services.deployer.release import (
    HostTransport,
    RulesChange,
    check_domain,
    check_release_id,
)
from services.deployer.settings import DeployerSettings
from services.deployer.transport.agent_session import (
    AgentDied,
    AgentError,
    AgentSession,
    agent_modules,
)
from services.deployer.transport.host_agent import BOOTSTRAP, encode_frame
from shared.errors import Invalid, NotFound, Permanent, SitefleetError, Transient
from shared.messages import DeploymentStats


class SshHost(HostTransport):
    """One web host over SSH, with the layout of ``LocalHost`` under ``sites_root`` there."""

    def __init__(
        self,
        name: str,
        *,
        address: str,
        port: int = 22,
        username: str,
        client_key: Path,
        host_keys: Sequence[str],
        sites_root: str,
        objects_root: str | None = None,
        max_links: int = EXT4_LINK_MAX,
        remote_python: str = "/usr/bin/python3",
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
        keepalive_interval: float = 15.0,
        keepalive_count_max: int = 3,
        max_channels: int = 8,
    ) -> None:
        for root in (sites_root, objects_root):
            if root is not None and not PurePosixPath(root).is_absolute():
                raise ValueError(f"{root!r} is not an absolute path on the web host")
        if not host_keys:
            raise ValueError("the host's public keys must be pinned (host_keys)")
        self.name = name
        self.address, self.port, self.username = address, port, username
        self.client_key = client_key
        # Pinned keys (OpenSSH public key lines), whatever name or address the host is
        # reached by; nothing from ~/.ssh is consulted.
        self._host_keys = [asyncssh.import_public_key(key) for key in host_keys]
        self.sites_root, self.objects_root, self.max_links = sites_root, objects_root, max_links
        self._command = shlex.join([remote_python, "-I", "-c", BOOTSTRAP])
        self.connect_timeout, self.command_timeout = connect_timeout, command_timeout
        self.keepalive_interval, self.keepalive_count_max = keepalive_interval, keepalive_count_max
        self._channels = asyncio.Semaphore(max_channels)
        self._connect_lock = asyncio.Lock()
        self._conn: asyncssh.SSHClientConnection | None = None
        # Agents waiting for their next request (at most max_channels exist at once).
        self._idle: list[AgentSession] = []
        self.execs = 0  # agent processes started (channels opened)
        self.requests = 0  # operations sent (the round trips that matter)
        self.connects = 0

    @classmethod
    def from_settings(
        cls,
        settings: DeployerSettings,
        name: str,
        *,
        address: str,
        port: int = 22,
        username: str,
        client_key: Path,
        host_keys: Sequence[str],
    ) -> SshHost:
        return cls(
            name,
            address=address,
            port=port,
            username=username,
            client_key=client_key,
            host_keys=host_keys,
            sites_root=settings.ssh_sites_root,
            objects_root=settings.ssh_objects_root,
            max_links=settings.object_max_links,
            remote_python=settings.ssh_remote_python,
            connect_timeout=settings.ssh_connect_timeout,
            command_timeout=settings.ssh_command_timeout,
            keepalive_interval=settings.ssh_keepalive_interval,
            keepalive_count_max=settings.ssh_keepalive_count_max,
            max_channels=settings.ssh_max_channels,
        )

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for session in idle:
            session.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()

    async def upload(self, domain: str, release_id: str, src_dir: Path) -> DeploymentStats:
        request = self._request(
            "upload", domain=check_domain(domain), release_id=check_release_id(release_id)
        )
        try:
            entries = await asyncio.to_thread(build_manifest, src_dir)
        except UnsafeEntry as exc:
            raise Invalid(str(exc), code="invalid_release") from None
        except OSError as exc:
            raise Transient(
                f"reading the release of {domain} failed: {exc}", code="release_read_failed"
            ) from exc
        stats = DeploymentStats(files=len(entries), bytes=sum(e.size for e in entries))
        request["manifest"] = [[e.path, e.sha256, e.mode, e.size] for e in entries]
        sent: list[Entry] = []
        async with self._exchange("upload", domain, request, limit=None) as session:
            reply = await session.reply()
            if "missing" in reply:
                first: dict[str, Entry] = {}
                for entry in entries:
                    first.setdefault(entry.key, entry)
                sent = [first[key] for key in reply["missing"]]
                await session.send_objects(src_dir, sent)
                await session.reply()
        stats.uploaded_files, stats.uploaded_bytes = len(sent), sum(e.size for e in sent)
        return stats

    async def activate(self, domain: str, release_id: str) -> None:
        await self._call("activate", domain, release_id=check_release_id(release_id))

    async def deactivate(self, domain: str) -> None:
        await self._call("deactivate", domain)

    async def current_release(self, domain: str) -> str | None:
        release: str | None = await self._call("current_release", domain)
        return release

    async def releases(self, domain: str) -> list[str]:
        found: list[str] = await self._call("releases", domain)
        return found

    async def prune(self, domain: str, keep: int) -> list[str]:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        removed: list[str] = await self._call("prune", domain, keep=keep)
        return removed

    async def remove_site(self, domain: str) -> None:
        await self._call("remove_site", domain)

    @property
    def sites_path(self) -> str:
        return self.sites_root

    def site_root(self, domain: str) -> str:
        return str(PurePosixPath(self.sites_root) / check_domain(domain) / CURRENT)

    async def changed_files(self, domain: str, release_id: str) -> list[str] | None:
        files: list[str] | None = await self._call(
            "changed_files", domain, release_id=check_release_id(release_id)
        )
        return files

    async def set_rules(self, domain: str, rules: str | None) -> RulesChange:
        command = self._nginx()
        done = await self._call("set_rules", domain, rules=rules, nginx_command=command)
        return RulesChange(changed=bool(done["changed"]), previous=done["previous"])

    async def reload_nginx(self) -> None:
        await self._call("reload_nginx", None, nginx_command=self._nginx())

    async def publish_challenge(self, domain: str, token: str, key_authorization: str) -> None:
        await self._call(
            "publish_challenge", domain, token=token, key_authorization=key_authorization
        )

    async def withdraw_challenge(self, domain: str, token: str) -> None:
        await self._call("withdraw_challenge", domain, token=token)

    async def install_certificate(self, domain: str, names: list[str], pem: bytes) -> None:
        # PEM is ASCII; the key travels inside the SSH channel, never on a command line.
        await self._call("install_certificate", domain, names=names, pem=pem.decode("ascii"))

    async def collect_garbage(self) -> list[str]:
        """Scan the host's whole store for objects no release uses (see ``LocalHost``)."""
        removed: list[str] = await self._call("collect_garbage", None)
        return removed

    def _request(self, op: str, **args: Any) -> dict[str, Any]:
        return {
            "op": op,
            "sites_root": self.sites_root,
            "objects_root": self.objects_root,
            "max_links": self.max_links,
            **args,
        }

    async def _call(self, op: str, domain: str | None, **args: Any) -> Any:
        if domain is not None:
            args["domain"] = check_domain(domain)
        request = self._request(op, **args)
        async with self._exchange(op, domain, request, limit=self.command_timeout) as session:
            reply = await session.reply()
        return reply["ok"]

    @contextlib.asynccontextmanager
    async def _exchange(
        self, action: str, domain: str | None, request: dict[str, Any], *, limit: float | None
    ) -> AsyncIterator[AgentSession]:
        """Send ``request`` to an agent on the host (an idle one of the pool, or a new one);
        map what can go wrong. The agent goes back to the pool only if its streams are
        known to be in step: the exchange completed, or a one-reply operation was refused."""
        where = f"{action} for {domain or 'the store'} on web host {self.name}"
        async with self._channels:
            session: AgentSession | None = None
            in_step = False
            try:
                async with asyncio.timeout(limit):
                    session = await self._session()
                    self.requests += 1
                    await session.send(encode_frame(request))
                    yield session
                    in_step = True
            except TimeoutError:
                raise Transient(
                    f"{where}: no answer within {limit} s", code="host_unreachable"
                ) from None
            except AgentError as exc:
                in_step = request["op"] != "upload"
                raise _domain_error(where, exc) from None
            except AgentDied as exc:
                raise Transient(
                    f"{where}: the host agent failed: {exc}", code="host_agent_failed"
                ) from None
            except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
                raise Transient(
                    f"{where}: the connection failed: {type(exc).__name__}: {exc}",
                    code="host_unreachable",
                ) from exc
            finally:
                if session is not None:
                    if in_step and session.alive():
                        self._idle.append(session)
                    else:
                        session.close()

    async def _session(self) -> AgentSession:
        """An idle agent of the pool that is still alive, or a new one (modules sent)."""
        while self._idle:
            session = self._idle.pop()
            if session.alive():
                return session
            session.close()
        session = AgentSession(await self._start_agent())
        await session.send(agent_modules())
        return session

    async def _start_agent(self) -> asyncssh.SSHClientProcess[bytes]:
        # A pooled connection found dead when its channel opens is replaced once: every
        # operation is idempotent, and nothing was sent on it yet.
        for attempt in (1, 2):
            conn = await self._connection()
            self.execs += 1
            try:
                process: asyncssh.SSHClientProcess[bytes] = await conn.create_process(
                    self._command, encoding=None
                )
                return process
            except (asyncssh.ChannelOpenError, asyncssh.ConnectionLost, BrokenPipeError):
                if attempt == 2 or not conn.is_closed():
                    raise
        raise AssertionError("unreachable")

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._connect_lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        try:
            conn = await asyncssh.connect(
                self.address,
                self.port,
                username=self.username,
                client_keys=[os.fspath(self.client_key)],
                known_hosts=(self._host_keys, [], []),
                config=None,
                agent_path=None,
                preferred_auth="publickey",
                connect_timeout=self.connect_timeout,
                keepalive_interval=self.keepalive_interval,
                keepalive_count_max=self.keepalive_count_max,
            )
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise Transient(
                f"cannot connect to web host {self.name} "
                f"({self.username}@{self.address}:{self.port}): {type(exc).__name__}: {exc}",
                code="host_unreachable",
            ) from exc
        self.connects += 1
        return conn


def _domain_error(where: str, exc: AgentError) -> SitefleetError:
    message = f"{where}: {exc}"
    if exc.kind == "not_found":
        return NotFound(message, code="release_not_found")
    if exc.kind == "corrupt":  # a build file changed after its manifest was made
        return Transient(message, code="release_changed_during_upload")
    if exc.kind == "io":
        return Transient(message, code="host_io_failed")
    if exc.kind == "invalid":
        return Invalid(message, code="refused_by_host")
    if exc.kind == "rules_refused":  # the previous rules are back on the host
        return Permanent(f"{message}; the previous rules are back", code="nginx_config_invalid")
    return Transient(message, code="host_agent_failed")
