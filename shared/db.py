"""Database engine and sessions. Transactions belong to the edge: one per request, one per
message (``async with sessionmaker.begin() as session``); domain code never commits."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SessionMaker = async_sessionmaker[AsyncSession]


def create_engine(url: str, *, application_name: str, pool_size: int = 10) -> AsyncEngine:
    # application_name makes pg_stat_activity show which service holds a connection.
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"server_settings": {"application_name": application_name}},
    )
    event.listen(engine.sync_engine.pool, "checkout", _replace_if_closed)
    return engine


def _replace_if_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """A pooled connection the server has closed (a restart, an admin's
    pg_terminate_backend) is replaced at checkout: asyncpg saw its socket end, so this costs
    no round trip. (``pool_pre_ping`` asks the server instead: with asyncpg that is BEGIN, a
    query and ROLLBACK at every checkout, about a tenth of the platform's CPU per site in
    S4.) A connection that dies unseen fails its statement; SQLAlchemy then invalidates the
    pool and ``is_unavailable`` makes the work a retry, as for any outage."""
    if dbapi_connection.driver_connection.is_closed():
        # The pool's documented answer: it discards this one and connects anew.
        raise DisconnectionError("the server closed this pooled connection")


def create_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return async_sessionmaker(engine, expire_on_commit=False)


# SQLSTATE classes that say the database could not serve now, not that the work is wrong:
# connection exceptions, insufficient resources (e.g. too many clients), operator
# intervention (shutting down, cannot connect now), and transaction rollbacks (serialization
# failures, deadlocks) that a retry resolves.
_TRANSIENT_SQLSTATES = ("08", "53", "57P", "40001", "40P01")


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database was unavailable (retry later), not a bug."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout):
        return True
    if isinstance(exc, OSError | ConnectionError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return sqlstate.startswith(_TRANSIENT_SQLSTATES)
    return False
