"""`sitefleet host add|list|remove`: the web hosts the deployer releases sites to."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import asyncssh

from services.deployer import hosts
from services.deployer.settings import DeployerSettings
from shared.db import create_engine, create_sessionmaker
from shared.errors import Invalid, Transient
from shared.models import WebHost


async def add(
    settings: DeployerSettings,
    name: str,
    *,
    ssh: str | None,
    key: Path | None,
    sites_root: str | None,
    objects_root: str | None,
    http: str | None,
    public_addresses: Sequence[str],
    nginx_command: Sequence[str] | None = None,
    nginx_listen: str | None = None,
    https_port: int | None = None,
) -> WebHost:
    """Register a host. An SSH host's key is fetched from it now and pinned, and logging in
    with ``key`` is tried: an unreachable host, or one that refuses the key, is not added."""
    spec = hosts.parse_ssh(ssh) if ssh is not None else None
    host_key = None
    if spec is not None:
        if key is None:
            raise Invalid("an SSH host needs --key PATH (the deployer's private key)")
        if not os.path.isabs(key):
            raise Invalid(f"the key path {key} must be absolute", code="invalid_path")
        host_key = await hosts.fetch_host_key(
            spec.address, spec.port, connect_timeout=settings.ssh_connect_timeout
        )
        await try_login(spec, key, host_key, settings.ssh_connect_timeout)
    if spec is not None:
        default_root, default_http = settings.ssh_sites_root, f"{spec.address}:80"
        default_public = [spec.address]
    else:
        default_root = str(settings.sites_root)
        default_http = f"{settings.http_host}:{settings.http_port}"
        default_public = list(settings.web_host_addresses)
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            return await hosts.add_host(
                session,
                name,
                ssh=spec,
                key_path=key,
                host_key=host_key,
                sites_root=sites_root or default_root,
                objects_root=objects_root,
                http=hosts.parse_http(http or default_http),
                public_addresses=list(public_addresses) or default_public,
                nginx_command=nginx_command,
                nginx_listen=nginx_listen,
                https_port=https_port,
            )
    finally:
        await engine.dispose()


async def connect_pinned(
    spec: hosts.SshSpec, key: Path, host_key: str, connect_timeout: float
) -> asyncssh.SSHClientConnection:
    """Log in to ``spec`` with ``key``, trusting only the pinned ``host_key``."""
    try:
        return await asyncssh.connect(
            spec.address,
            spec.port,
            username=spec.user,
            client_keys=[os.fspath(key)],
            known_hosts=([asyncssh.import_public_key(host_key)], [], []),
            config=None,
            agent_path=None,
            preferred_auth="publickey",
            connect_timeout=connect_timeout,
        )
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise Transient(
            f"cannot log in to {spec.user}@{spec.address}:{spec.port} with {key}: "
            f"{type(exc).__name__}: {exc}",
            code="host_login_failed",
        ) from exc


async def try_login(spec: hosts.SshSpec, key: Path, host_key: str, connect_timeout: float) -> None:
    conn = await connect_pinned(spec, key, host_key, connect_timeout)
    conn.close()
    await conn.wait_closed()


async def list_all(settings: DeployerSettings) -> list[tuple[WebHost, int]]:
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            return await hosts.list_hosts(session)
    finally:
        await engine.dispose()


async def remove(settings: DeployerSettings, name: str) -> None:
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            await hosts.remove_host(session, name)
    finally:
        await engine.dispose()


def describe(host: WebHost) -> str:
    if host.kind == "ssh":
        return f"{host.ssh_user}@{host.ssh_address}:{host.ssh_port}"
    return "local"
