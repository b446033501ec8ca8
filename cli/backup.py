"""`sitefleet backup`: one self-describing backup directory with a ``pg_dump`` of the
database and, for each web host, its release state (services/deployer/state_archive.py),
plus ``manifest.json`` (what was taken, when, by which Sitefleet at which schema revision,
with sizes and SHA-256 checksums) that `sitefleet restore` checks before it touches
anything.

    <backup>/manifest.json
    <backup>/database.dump            pg_dump --format=custom
    <backup>/hosts/<host name>.tar.gz  the host's archive (state_archive.py)

The database is dumped first, then the hosts (a few at a time): releases and objects are
immutable and named by id and content, so a host archive taken after the dump holds every
release the dump names as live (unless the site was redeployed more than
``SITEFLEET_KEEP_RELEASES`` times, or removed, in between; restore reports such sites). A
restore serves the releases the database names, so the archive's newer ones stay unserved
until the next deploy.

The backup is written to ``<backup>.partial/`` and renamed into place when complete, so a
directory without that suffix is whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from cli import postgres
from cli.host_archive import HashingFile, HostPlace, export_host, registered_hosts
from services.deployer.settings import DeployerSettings
from shared.db import create_engine, create_sessionmaker
from shared.errors import SitefleetError
from shared.models import Site, SiteHost

FORMAT = "sitefleet-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE_FILE = "database.dump"
HOSTS_DIR = "hosts"
PARTIAL = ".partial"


@dataclass
class BackupResult:
    path: Path
    manifest: dict[str, Any]
    failed_hosts: list[str] = field(default_factory=list)


def default_path(dest_dir: Path, now: datetime) -> Path:
    return dest_dir / f"sitefleet-backup-{now.strftime('%Y%m%dT%H%M%SZ')}"


def sitefleet_version() -> str:
    try:
        return metadata.version("sitefleet")
    except metadata.PackageNotFoundError:
        return "unknown"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as reader:
        while chunk := reader.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class State:
    """What the database says about what to back up."""

    revision: str | None
    places: list[HostPlace]
    server_major: int
    # Live sites on no registered host (deployed before hosts were registered): they are
    # served from the settings' local host, which is backed up only while no host is.
    unplaced: list[str]


async def read_state(settings: DeployerSettings) -> State:
    """The schema revision, the web hosts to back up (the settings' local host while none
    is registered: the deployer uses it then) and the server's major version."""
    db = postgres.Database(settings.database_url, "sitefleet-backup")
    conn = await db.connect()
    try:
        server_major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        revision: str | None = None
        if await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL"):
            revision = await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()
    engine = create_engine(settings.database_url, application_name="sitefleet-backup", pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            rows = await registered_hosts(session)
            unplaced: list[str] = []
            if rows:
                unplaced = list(
                    await session.scalars(
                        select(Site.domain)
                        .where(
                            Site.live_deployment_id.is_not(None),
                            ~select(SiteHost.site_id).where(SiteHost.site_id == Site.id).exists(),
                        )
                        .order_by(Site.domain)
                    )
                )
    except SQLAlchemyError as exc:
        raise SitefleetError(
            f"cannot read the web hosts: {type(exc).__name__}: {exc}", code="database_unusable"
        ) from None
    finally:
        await engine.dispose()
    if not rows:
        return State(revision, [HostPlace.of_settings(settings)], server_major, [])
    return State(
        revision, [HostPlace.of_row(row, settings) for row in rows], server_major, unplaced
    )


async def make_backup(
    settings: DeployerSettings,
    dest: Path,
    *,
    on_total: Callable[[int], None],
    on_step: Callable[[str], None],
    parallel: int = 4,
) -> BackupResult:
    """Write the backup to ``dest`` (which must not exist), reading up to ``parallel`` web
    hosts at once. A host that fails is recorded in the manifest as failed (the rest is
    still written: the database matters most) and returned in ``failed_hosts``; the caller
    exits non-zero."""
    await asyncio.to_thread(_refuse_existing, dest)
    started = datetime.now(UTC)
    state = await read_state(settings)
    places = state.places
    pg_dump, _ = postgres.find_tool("pg_dump", state.server_major)
    db = postgres.Database(settings.database_url, "sitefleet-backup")
    partial = dest.with_name(dest.name + PARTIAL)
    (partial / HOSTS_DIR).mkdir(parents=True)
    os.chmod(partial, 0o700)  # the dump holds token hashes and webhook secrets
    on_total(1 + len(places))
    try:
        on_step("dumping the database")
        dump_file = partial / DATABASE_FILE
        await asyncio.to_thread(postgres.dump, db, pg_dump, dump_file)
        database = {
            "file": DATABASE_FILE,
            "bytes": dump_file.stat().st_size,
            "sha256": await asyncio.to_thread(file_digest, dump_file),
            "format": "pg_dump custom",
            "server_major": state.server_major,
        }
        gate = asyncio.Semaphore(parallel)

        async def back_up(place: HostPlace) -> dict[str, Any]:
            async with gate:
                entry = await _back_up_host(place, settings, partial)
            on_step(f"backed up web host {place.name}")
            return entry

        hosts = list(await asyncio.gather(*(back_up(place) for place in places)))
        failed = [entry["name"] for entry in hosts if entry["status"] != "ok"]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "sitefleet_version": sitefleet_version(),
            "alembic_revision": state.revision,
            "database": database,
            "hosts": hosts,
            "unplaced_sites": state.unplaced,
        }
        manifest_file = partial / MANIFEST
        manifest_file.write_text(json.dumps(manifest, indent=2) + "\n")
        for path in (dump_file, manifest_file, *(partial / HOSTS_DIR).iterdir()):
            _fsync(path)
        os.rename(partial, dest)
        _fsync(dest.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BackupResult(dest, manifest, failed)


def describe_backup(result: BackupResult) -> tuple[str, list[str]]:
    """The summary line of a backup, and its warnings and errors."""
    manifest = result.manifest
    ok_hosts = [h for h in manifest["hosts"] if h["status"] == "ok"]
    sites = {domain for h in ok_hosts for domain in h["sites"]}
    summary = (
        f"backup written to {result.path}: database {manifest['database']['bytes']} bytes "
        f"(revision {manifest['alembic_revision']}), {len(ok_hosts)} web host(s) with "
        f"{len(sites)} site(s)"
    )
    complaints = []
    unplaced = manifest["unplaced_sites"]
    if unplaced:
        complaints.append(
            f"warning: {len(unplaced)} live site(s) are on no registered web host (deployed "
            "before hosts were registered; their files are not in the backup): "
            f"{', '.join(unplaced[:5])}; `sitefleet sites redeploy --all` places them"
        )
    for host in manifest["hosts"]:
        if host["status"] != "ok":
            complaints.append(
                f"error: web host {host['name']} is not in the backup: {host['error']}"
            )
    return summary, complaints


async def _back_up_host(place: HostPlace, settings: DeployerSettings, into: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": place.name,
        "id": place.row.id if place.row is not None else None,
        "kind": place.kind,
        "sites_root": place.sites_root,
        "objects_root": place.objects_root,
    }
    if place.row is not None and place.row.kind == "ssh":
        row = place.row
        entry["ssh"] = f"{row.ssh_user}@{row.ssh_address}:{row.ssh_port}"
    archive = into / HOSTS_DIR / f"{place.name}.tar.gz"
    raw = await asyncio.to_thread(open, archive, "xb")
    try:
        out = HashingFile(raw)
        held = await export_host(place, settings, out)
    except SitefleetError as exc:
        raw.close()
        archive.unlink(missing_ok=True)
        return {**entry, "status": "failed", "error": exc.message}
    finally:
        raw.close()
    return {
        **entry,
        "status": "ok",
        "file": f"{HOSTS_DIR}/{archive.name}",
        "bytes": out.size,
        "sha256": out.digest.hexdigest(),
        "objects": held["objects"],
        "object_bytes": held["bytes"],
        "sites": held["sites"],
    }


def _refuse_existing(dest: Path) -> None:
    if dest.exists() or dest.with_name(dest.name + PARTIAL).exists():
        raise SitefleetError(f"{dest} already exists; choose another place", code="backup_exists")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
