"""Whether a deploy job may still act on its site, and one deploy per site at a time.

The API owns ``sites`` and ``deployments``; the deployer only reads them (read-only
transactions). A job is fenced when its site is gone, when a newer generation has been
requested (newest wins), or when its deployment already finished (a duplicate delivery).
Per-site mutual exclusion across processes is a Postgres session-level advisory lock held
on a dedicated connection for the whole job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.errors import Transient, Unavailable
from shared.messages import DeploymentRequested
from shared.models import Deployment, Site

log = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({"live", "failed", "superseded", "cancelled", "rolled_back"})


@dataclass(frozen=True)
class Fenced:
    """Why a job must stop. ``duplicate``: it already finished, so report nothing (a
    report would overwrite its real outcome); otherwise report it ``superseded``."""

    reason: str
    duplicate: bool = False


Fence = Callable[[DeploymentRequested], Awaitable[Fenced | None]]


class DatabaseFence:
    def __init__(self, engine: AsyncEngine, *, lock_timeout: float) -> None:
        self.engine = engine
        # Seconds to wait for another deployer to finish with the site before retrying later.
        self.lock_timeout = lock_timeout

    async def __call__(self, job: DeploymentRequested) -> Fenced | None:
        with _database_down("reading the state of the site"):
            return await self._check(job)

    async def _check(self, job: DeploymentRequested) -> Fenced | None:
        # One statement (one snapshot), in autocommit: no BEGIN and COMMIT round trips.
        status = (
            select(Deployment.status)
            .where(Deployment.id == job.deployment_id)
            .scalar_subquery()
            .label("status")
        )
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            row = (
                await conn.execute(
                    select(Site.generation, Site.files_removed, status).where(
                        Site.id == job.site_id
                    )
                )
            ).one_or_none()
        if row is None:
            return fence_verdict(job, None, None)
        return fence_verdict(job, (row.generation, row.files_removed), row.status)

    @contextlib.asynccontextmanager
    async def site_lock(self, site_id: str) -> AsyncIterator[None]:
        """Hold the site's advisory lock until the block exits (other deployers wait).

        ``Transient`` (``site_busy``) if it is not free within ``lock_timeout``.
        """
        with _database_down("locking the site"):
            conn = await self.engine.connect()
        try:
            # Autocommit: the lock is session-level, so no transaction (and no snapshot)
            # stays open for the minutes a deploy may take.
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            async with asyncio.timeout(self.lock_timeout):
                await conn.execute(
                    text("select pg_advisory_lock(hashtext(:key))"), {"key": site_id}
                )
        except TimeoutError:
            # The lock may have been granted just as the wait was cancelled: drop the
            # connection rather than return it to the pool still holding the lock.
            await _discard(conn)
            raise Transient(
                f"another deployment of site {site_id} is still running", code="site_busy"
            ) from None
        except (SQLAlchemyError, OSError) as exc:
            await _discard(conn)
            raise Unavailable(f"locking site {site_id} failed: {exc}") from exc
        except BaseException:
            await _discard(conn)
            raise
        try:
            yield
        finally:
            try:
                await conn.execute(
                    text("select pg_advisory_unlock(hashtext(:key))"), {"key": site_id}
                )
            except asyncio.CancelledError:
                await _discard(conn)
                raise
            except Exception:
                # Closing the session releases its locks too; the block's own outcome (its
                # exception, if any) is what the caller must see.
                log.warning("advisory unlock failed, dropping the connection", exc_info=True)
                await _discard(conn)
            else:
                await conn.close()


def fence_verdict(
    job: DeploymentRequested, site: tuple[int, bool] | None, status: str | None
) -> Fenced | None:
    if site is None:
        return Fenced("site deleted")
    # A finished deployment first: a redelivered job that has since been overtaken must not
    # turn its real outcome into "superseded".
    if status in TERMINAL_STATUSES:
        return Fenced(f"already finished ({status})", duplicate=True)
    generation, files_removed = site
    if files_removed:
        return Fenced("site deleted")
    if job.generation < generation:
        return Fenced(f"superseded by generation {generation}")
    return None


@contextlib.contextmanager
def _database_down(action: str) -> Iterator[None]:
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        raise Unavailable(f"{action} failed: the database is unavailable: {exc}") from exc


async def _discard(conn: AsyncConnection) -> None:
    """Close the physical connection: Postgres releases its session locks with it."""
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()
