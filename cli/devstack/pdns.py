"""A private PowerDNS Authoritative instance (sqlite3 backend + HTTP API) in a state dir."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path
from string import Template

import httpx

from cli.devstack import procs
from shared.settings import PROJECT_ROOT

TEMPLATE = PROJECT_ROOT / "infra" / "pdns" / "pdns.conf.template"
SCHEMA = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")


class ConfigTemplate(Template):
    """``@{name}`` placeholders, as for the nginx config."""

    delimiter = "@"


def create_database(path: Path, schema: Path = SCHEMA) -> None:
    """Create the backend database from the packaged schema unless it already exists."""
    if path.exists():
        return
    # Built beside the target and renamed, so an interrupted run never leaves half a schema.
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    db = sqlite3.connect(tmp)
    try:
        db.executescript(schema.read_text())
    finally:
        db.close()
    os.replace(tmp, path)


def write_config(state_dir: Path, *, dns_port: int, api_port: int, api_key: str) -> Path:
    conf = ConfigTemplate(TEMPLATE.read_text()).substitute(
        database=state_dir / "pdns.sqlite3",
        dns_port=dns_port,
        api_port=api_port,
        api_key=api_key,
    )
    path = state_dir / "pdns.conf"
    path.write_text(conf)
    path.chmod(0o600)  # it holds the API key
    return path


def wait_for_api(
    api_port: int,
    api_key: str,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = 20.0,
) -> None:
    """Until ``GET /api/v1/servers/localhost`` answers 200 with the key."""
    url = f"http://127.0.0.1:{api_port}/api/v1/servers/localhost"
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"pdns_server exited with {proc.returncode} before its API answered")
        try:
            response = httpx.get(url, headers={"X-API-Key": api_key}, timeout=1.0)
        except httpx.TransportError as exc:
            last = str(exc)
        else:
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        time.sleep(0.05)
    raise TimeoutError(f"PowerDNS API on port {api_port} not ready after {timeout}s ({last})")


def start_pdns(
    state_dir: Path, *, dns_port: int, api_port: int, api_key: str
) -> subprocess.Popen[bytes]:
    """Start pdns_server in the foreground; returns once DNS and the HTTP API both answer.

    Stop it with ``cli.devstack.procs.stop``. The zone data stays in ``state_dir``.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    create_database(state_dir / "pdns.sqlite3")
    write_config(state_dir, dns_port=dns_port, api_port=api_port, api_key=api_key)
    proc = procs.start(
        [
            "pdns_server",
            f"--config-dir={state_dir}",
            "--daemon=no",
            "--guardian=no",
            "--disable-syslog",
            "--write-pid=no",
            f"--socket-dir={state_dir}",
        ],
        log=state_dir / "pdns.log",
    )
    try:
        procs.wait_for_port(dns_port, proc=proc)
        wait_for_api(api_port, api_key, proc=proc)
    except BaseException:
        procs.stop(proc)
        raise
    return proc
