"""PostgreSQL's own client tools for ``sitefleet backup`` / ``restore``: ``pg_dump`` (custom
format), ``pg_restore`` and ``psql``, found on this machine and pointed at the database of
the settings' URL. The password travels in the environment (``PGPASSWORD``), never on a
command line that ``ps`` shows."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from shared.errors import NotFound, SitefleetError, Unavailable

# Debian keeps each major version's tools here; /usr/bin/pg_dump is a wrapper that picks one.
_VERSIONED_BIN = Path("/usr/lib/postgresql")
_PIPE_BYTES = 1024 * 1024
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")
# What `restore --yes` replaces: the schema every Sitefleet table lives in, recreated as
# PostgreSQL 15 creates it, in the same transaction as the restore.
_RESET_SCHEMA = (
    "DROP SCHEMA IF EXISTS public CASCADE;\n"
    "CREATE SCHEMA public AUTHORIZATION pg_database_owner;\n"
    "GRANT USAGE ON SCHEMA public TO PUBLIC;\n"
)


class Database:
    """The settings' database as libpq's tools and asyncpg see it."""

    def __init__(self, database_url: str, application_name: str) -> None:
        url = make_url(database_url)
        if not url.database:
            raise SitefleetError(f"the database URL names no database: {url!r}")
        self.name = url.database
        self.env = {"PGDATABASE": url.database, "PGAPPNAME": application_name}
        for var, value in (
            ("PGHOST", url.host),
            ("PGPORT", url.port),
            ("PGUSER", url.username),
            ("PGPASSWORD", url.password),
            ("PGSSLMODE", url.query.get("sslmode") or url.query.get("ssl")),
        ):
            if value:
                self.env[var] = str(value)
        self.dsn = url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
        self.admin_dsn = url.set(
            drivername="postgresql", database="postgres", query={}
        ).render_as_string(hide_password=False)
        self.application_name = application_name

    async def server_major(self) -> int:
        """The server's major version, asked through the database, or through the
        ``postgres`` maintenance database while ours does not exist."""
        try:
            conn = await self.connect()
        except NotFound:
            conn = await self.connect(admin=True)
        try:
            return int(await conn.fetchval("SHOW server_version_num")) // 10000
        finally:
            await conn.close()

    async def connect(self, *, admin: bool = False) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(
                self.admin_dsn if admin else self.dsn,
                server_settings={"application_name": self.application_name},
            )
        except asyncpg.InvalidCatalogNameError:
            name = "postgres" if admin else self.name
            raise NotFound(f"database {name} does not exist", code="database_missing") from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            name = "postgres" if admin else self.name
            raise Unavailable(
                f"cannot connect to database {name}: {type(exc).__name__}: {exc}",
                code="database_unavailable",
            ) from None

    def run(
        self, argv: list[str], *, stdin: int | None = None, stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env={**os.environ, **self.env},
        )


def find_tool(name: str, server_major: int) -> tuple[str, int]:
    """The path of PostgreSQL tool ``name`` whose major version can work with a server of
    ``server_major`` (pg_dump refuses newer servers), and that version."""
    candidates = []
    on_path = shutil.which(name)
    if on_path:
        candidates.append(on_path)
    if _VERSIONED_BIN.is_dir():
        for directory in sorted(_VERSIONED_BIN.iterdir(), reverse=True):
            candidates.append(str(directory / "bin" / name))
    seen = []
    for candidate in candidates:
        major = tool_major(candidate)
        if major is None:
            continue
        seen.append(f"{candidate} ({major})")
        if major >= server_major:
            return candidate, major
    found = ", ".join(seen) or "none"
    raise SitefleetError(
        f"no {name} of PostgreSQL {server_major} or newer on this machine (found: {found}); "
        f"install the client, e.g. apt-get install postgresql-client-{server_major}",
        code="pg_tools_missing",
    )


def tool_major(path: str) -> int | None:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    found = _VERSION.search(done.stdout)
    return int(found[1]) if found else None


def dump(db: Database, pg_dump: str, dest: Path) -> None:
    """``pg_dump`` the whole database to ``dest`` in custom format (compressed; restorable
    with pg_restore), without owners or grants so it restores under any role."""
    proc = db.run([pg_dump, "--format=custom", "--no-owner", "--no-privileges", "-f", str(dest)])
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SitefleetError(
            f"pg_dump failed ({proc.returncode}): {err.decode(errors='replace').strip()}",
            code="pg_dump_failed",
        )


def check_dump(db: Database, pg_restore: str, dump_file: Path) -> None:
    """pg_restore can read the dump's table of contents (format, version)."""
    done = subprocess.run(
        [pg_restore, "--list", str(dump_file)], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise SitefleetError(
            f"pg_restore cannot read {dump_file}: {done.stderr.strip()}", code="bad_backup"
        )


def restore(db: Database, pg_restore: str, psql: str, dump_file: Path, *, replace: bool) -> None:
    """Load the dump into the database in ONE transaction: pg_restore writes it as SQL,
    psql runs it inside ``BEGIN`` and stops at the first error, and ``COMMIT`` is sent only
    once pg_restore has written the whole dump, so the database is either wholly the
    backup's or untouched. ``replace`` first drops the public schema (what Sitefleet's
    tables live in), inside that same transaction."""
    psql_proc = db.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null"], stdin=subprocess.PIPE
    )
    restore_proc = db.run(
        [pg_restore, "--no-owner", "--no-privileges", "-f", "-", str(dump_file)],
        stdout=subprocess.PIPE,
    )
    assert psql_proc.stdin is not None and restore_proc.stdout is not None
    sink = psql_proc.stdin
    committed = False
    try:
        # NOTICEs ("drop cascades to ...") are not errors; stderr keeps the real ones.
        sink.write(b"SET client_min_messages = warning;\nBEGIN;\n")
        if replace:
            sink.write(_RESET_SCHEMA.encode())
        while chunk := restore_proc.stdout.read(_PIPE_BYTES):
            sink.write(chunk)
        if restore_proc.wait() == 0:
            sink.write(b"COMMIT;\n")
            committed = True
        # Without COMMIT, psql's session ends and the transaction rolls back.
    except BrokenPipeError:  # psql stopped at an error (ON_ERROR_STOP)
        restore_proc.kill()
    with contextlib.suppress(BrokenPipeError):
        sink.close()
    restore_err = _finish(restore_proc)
    psql_err = _finish(psql_proc)
    if not committed or restore_proc.returncode != 0 or psql_proc.returncode != 0:
        complaint = (restore_err + psql_err).decode(errors="replace").strip()
        raise SitefleetError(
            f"restoring the database failed, nothing was changed: {complaint}",
            code="pg_restore_failed",
        )


def _finish(proc: subprocess.Popen[bytes]) -> bytes:
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.wait()
    return err
