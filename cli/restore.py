"""`sitefleet restore`: put a backup (cli/backup.py) back: the database, then each web
host's release state, so every site serves its live release again without a rebuild.

Nothing is touched until every file the restore will use has the size and SHA-256 its
manifest records, the manifest's schema revision is one this Sitefleet knows, and the
dump is readable by this machine's pg_restore. The database is loaded in one transaction
(cli/postgres.py), only into an empty database unless ``--yes``, and never while Sitefleet
services are connected to it; it is then migrated to this code's head. Each host gets the
objects and releases it lacks, then every site the restored database places on it is
pointed at its live release (the database is the source of truth) and checked through the
host's nginx. Running it again changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from cli import postgres
from cli.backup import FORMAT, FORMAT_VERSION, MANIFEST, file_digest
from cli.host_archive import HostPlace, import_host, registered_hosts
from services.deployer.health import check_release
from services.deployer.settings import DeployerSettings
from shared.db import create_engine, create_sessionmaker
from shared.errors import Conflict, Invalid, NotFound, SitefleetError, Unavailable
from shared.migrate import alembic_config, upgrade
from shared.models import Deployment, Site, SiteHost, WebHost

# Each service names its connections sitefleet-<service> (shared/db.py); the CLI's own
# connections are not services.
_NOT_SERVICES = ("sitefleet-cli", "sitefleet-backup", "sitefleet-restore")
# Seconds between checks of a restored site through nginx (a reload takes a moment).
_CHECK_INTERVAL = 0.3


class BadBackup(Invalid):
    code = "bad_backup"


@dataclass
class RestoreReport:
    database: str | None = None
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def load_manifest(path: Path) -> tuple[Path, dict[str, Any]]:
    """The backup directory and its manifest; ``path`` may name either."""
    root = path.parent if path.name == MANIFEST else path
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        partial = " (an unfinished backup)" if root.name.endswith(".partial") else ""
        raise BadBackup(
            f"{root} is not a Sitefleet backup: it has no {MANIFEST}{partial}"
        ) from None
    except (ValueError, OSError) as exc:
        raise BadBackup(f"{root / MANIFEST} is damaged: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadBackup(f"{root / MANIFEST} does not describe a Sitefleet backup")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BadBackup(
            f"the backup's format version is {manifest.get('format_version')!r}; this "
            f"Sitefleet reads version {FORMAT_VERSION}"
        )
    if not _well_formed(manifest):
        raise BadBackup(f"{root / MANIFEST} is incomplete or damaged")
    return root, manifest


def _well_formed(manifest: dict[str, Any]) -> bool:
    def names_file(entry: Any) -> bool:
        return (
            isinstance(entry, dict)
            and isinstance(entry.get("file"), str)
            and isinstance(entry.get("bytes"), int)
            and isinstance(entry.get("sha256"), str)
        )

    hosts = manifest.get("hosts")
    if not names_file(manifest.get("database")) or not isinstance(hosts, list):
        return False
    for host in hosts:
        if not isinstance(host, dict) or not isinstance(host.get("name"), str):
            return False
        if host.get("status") == "ok" and not (names_file(host) and "id" in host):
            return False
    return True


def verify_files(root: Path, manifest: dict[str, Any], *, database: bool, hosts: bool) -> None:
    """Every file the restore will use is there, whole, with its recorded checksum."""
    wanted = []
    if database:
        wanted.append(manifest["database"])
    if hosts:
        wanted += [h for h in manifest["hosts"] if h.get("status") == "ok"]
    for entry in wanted:
        path = root / entry["file"]
        if not path.resolve().is_relative_to(root.resolve()):
            raise BadBackup(f"the manifest names a file outside the backup: {entry['file']!r}")
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BadBackup(
                f"the backup is missing {entry['file']}; nothing was restored"
            ) from None
        if size != entry["bytes"]:
            raise BadBackup(
                f"{entry['file']} is {size} bytes, the manifest says {entry['bytes']} "
                "(truncated or damaged); nothing was restored"
            )
        digest = file_digest(path)
        if digest != entry["sha256"]:
            raise BadBackup(
                f"{entry['file']} has SHA-256 {digest}, the manifest says {entry['sha256']} "
                "(damaged); nothing was restored"
            )


def check_revision(database_url: str, revision: str | None) -> str:
    """The head revision of this code; refuses a backup from a newer schema."""
    script = ScriptDirectory.from_config(alembic_config(database_url))
    head = script.get_current_head()
    assert head is not None
    if revision is None:
        raise BadBackup("the backup's database has no schema revision (never migrated?)")
    try:
        script.get_revision(revision)
    except CommandError:
        raise BadBackup(
            f"the backup's schema revision {revision!r} is unknown to this Sitefleet (its "
            f"head is {head!r}): restore it with the Sitefleet version that made it "
            "(see sitefleet_version in the manifest)"
        ) from None
    return head


async def restore_database(
    settings: DeployerSettings,
    root: Path,
    manifest: dict[str, Any],
    *,
    replace: bool,
    on_step: Callable[[str], None],
) -> str:
    """Load the dump (see the module docstring); returns what was done."""
    head = check_revision(settings.database_url, manifest.get("alembic_revision"))
    db = postgres.Database(settings.database_url, "sitefleet-restore")
    on_step(f"restoring database {db.name}")
    done = []
    server_major = await db.server_major()
    pg_restore, _ = postgres.find_tool("pg_restore", server_major)
    psql, _ = postgres.find_tool("psql", server_major)
    dump_file = root / manifest["database"]["file"]
    await asyncio.to_thread(postgres.check_dump, db, pg_restore, dump_file)
    try:
        conn = await db.connect()
    except NotFound:  # a fresh server: make the (empty) database first
        done.append("created")
        admin = await db.connect(admin=True)
        try:
            await admin.execute(f'CREATE DATABASE "{db.name.replace(chr(34), chr(34) * 2)}"')
        finally:
            await admin.close()
        conn = await db.connect()
    try:
        running = await conn.fetch(
            "SELECT application_name, count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'sitefleet-%'"
            " AND application_name <> ALL($1::text[])"
            " GROUP BY application_name ORDER BY application_name",
            list(_NOT_SERVICES),
        )
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
    finally:
        await conn.close()
    if running:
        who = ", ".join(f"{r['application_name']} ({r['n']})" for r in running)
        raise Conflict(
            f"Sitefleet services are connected to database {db.name}: {who}. Stop them "
            "before restoring (their work would mix with the backup's)",
            code="services_running",
        )
    if tables and not replace:
        raise Conflict(
            f"database {db.name} is not empty ({tables} tables); restoring replaces "
            "everything in it: pass --yes to do that",
            code="database_not_empty",
        )
    await asyncio.to_thread(postgres.restore, db, pg_restore, psql, dump_file, replace=bool(tables))
    revision = manifest["alembic_revision"]
    if revision != head:
        try:
            await asyncio.to_thread(upgrade, settings.database_url)
        except (SQLAlchemyError, CommandError) as exc:
            raise SitefleetError(
                f"the backup was restored at revision {revision}, but migrating it to {head} "
                f"failed: {type(exc).__name__}: {exc}; fix that, then `sitefleet db upgrade`",
                code="migration_failed",
            ) from None
        done.append(f"restored at revision {revision}, migrated to {head}")
    else:
        done.append(f"restored at revision {revision}")
    return ", ".join(done)


async def wanted_releases(
    settings: DeployerSettings,
) -> tuple[dict[str, WebHost], dict[str | None, dict[str, str]]]:
    """From the database: the registered hosts by name, and per host id (None: the
    settings' local host, for sites placed nowhere) the release each site there serves:
    its live deployment's, following rollbacks to the release they returned to."""
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        return await _read_wanted(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise Unavailable(
            f"cannot read the web hosts and sites from the database ({type(exc).__name__}: "
            f"{exc}); restore the database first (without --hosts-only)",
            code="database_unavailable",
        ) from None
    finally:
        await engine.dispose()


async def _read_wanted(
    engine: AsyncEngine,
) -> tuple[dict[str, WebHost], dict[str | None, dict[str, str]]]:
    async with create_sessionmaker(engine)() as session:
        rows = await registered_hosts(session)
        sites = (
            await session.execute(
                select(Site.id, Site.domain, Site.live_deployment_id).where(
                    Site.live_deployment_id.is_not(None),
                    Site.status != "deleting",
                    Site.files_removed.is_(False),
                )
            )
        ).all()
        rollbacks: dict[str, str | None] = {
            dep_id: target
            for dep_id, target in (
                await session.execute(
                    select(Deployment.id, Deployment.rollback_to).where(
                        Deployment.rollback_to.is_not(None)
                    )
                )
            ).all()
        }
        placed = (await session.execute(select(SiteHost.site_id, SiteHost.host_id))).all()
    hosts_of: dict[str, list[str | None]] = {}
    for site_id, host_id in placed:
        hosts_of.setdefault(site_id, []).append(host_id)
    wanted: dict[str | None, dict[str, str]] = {}
    for site_id, domain, live in sites:
        release = str(live)
        for _ in range(len(rollbacks) + 1):  # a rollback to a rollback: follow it
            target = rollbacks.get(release)
            if target is None:
                break
            release = target
        for where in hosts_of.get(site_id, [None]):
            wanted.setdefault(where, {})[domain] = release
    return {row.name: row for row in rows}, wanted


async def restore_hosts(
    settings: DeployerSettings,
    root: Path,
    manifest: dict[str, Any],
    report: RestoreReport,
    *,
    force: bool,
    check: bool,
    on_step: Callable[[str], None],
) -> None:
    rows, wanted = await wanted_releases(settings)
    backed_up = set()
    for entry in manifest["hosts"]:
        name = entry["name"]
        backed_up.add(name)
        if entry.get("status") != "ok":
            report.warnings.append(
                f"web host {name} was not in the backup ({entry.get('error')}); its sites "
                "need a redeploy (sitefleet sites redeploy)"
            )
            continue
        if entry["id"] is None:
            place, host_id = HostPlace.of_settings(settings), None
        elif name in rows:
            place, host_id = HostPlace.of_row(rows[name], settings), rows[name].id
        else:
            report.warnings.append(f"web host {name} is not registered in the database: skipped")
            continue
        on_step(f"restoring web host {name}")
        try:
            done = await import_host(
                place,
                settings,
                root / entry["file"],
                sha256=entry["sha256"],
                current=wanted.get(host_id, {}),
                force=force,
            )
        except SitefleetError as exc:
            report.problems.append(exc.message)
            continue
        report.hosts[name] = done
        _judge_host(name, done, report)
        if check:
            await _check_served(place, done["plan"], report, settings.nginx_reload_timeout)
    for name in sorted(set(rows) - backed_up):
        report.warnings.append(f"web host {name} is registered but not in the backup")


def describe_host(name: str, done: dict[str, Any]) -> str:
    """One line on what the restore did on a web host."""
    reloaded = ", nginx reloaded" if done["reloaded"] else ""
    return (
        f"web host {name}: {done['objects_stored']} object(s) stored "
        f"({done['objects_present']} already there), {done['releases_built']} release(s) "
        f"built ({done['releases_present']} already there), {len(done['activated'])} "
        f"site(s) switched, {len(done['plan'])} served, nginx rules changed for "
        f"{len(done['rules_changed'])}, {len(done['certificates'])} certificate file(s) "
        f"written{reloaded}"
    )


def _judge_host(name: str, done: dict[str, Any], report: RestoreReport) -> None:
    if done["conflicts"] and any(d not in done["plan"] for d in done["conflicts"]):
        shown = ", ".join(f"{d} ({r})" for d, r in sorted(done["conflicts"].items())[:5])
        report.problems.append(
            f"web host {name} serves other releases than the database for "
            f"{len(done['conflicts'])} site(s) (deployed after the backup?), left as they are: "
            f"{shown}. The database does not know those releases: pass --yes to serve the "
            "ones it calls live"
        )
    for domain in done["fallback"]:
        report.warnings.append(
            f"{domain} on {name}: its live release is not in the host's archive (redeployed "
            "or removed after the database dump?); serving the archive's release instead"
        )
    for domain in done["missing"]:
        report.problems.append(
            f"{domain} on {name}: no release of it is in the archive; redeploy it "
            "(sitefleet sites redeploy --all, or the site's own deploy)"
        )


async def _check_served(
    place: HostPlace, plan: dict[str, str], report: RestoreReport, wait: float
) -> None:
    """Each site answers through the host's nginx with the release it should serve."""
    for domain, release in sorted(plan.items()):
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            try:
                wrong = await check_release(
                    domain,
                    release,
                    http_host=place.http_host,
                    http_port=place.http_port,
                    https_port=place.https_port,
                    request_timeout=5,
                )
            except SitefleetError as exc:
                wrong = exc.message
            if wrong is None:
                break
            if asyncio.get_running_loop().time() > deadline:
                report.problems.append(f"{domain} on {place.name}: {wrong}")
                break
            await asyncio.sleep(_CHECK_INTERVAL)
