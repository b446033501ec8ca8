"""Database engine and sessions. Transactions belong to the edge: one per request, one per
message (``async with sessionmaker.begin() as session``); domain code never commits."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SessionMaker = async_sessionmaker[AsyncSession]


def create_engine(url: str, *, application_name: str, pool_size: int = 10) -> AsyncEngine:
    # application_name makes pg_stat_activity show which service holds a connection.
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"server_settings": {"application_name": application_name}},
    )


def create_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    return async_sessionmaker(engine, expire_on_commit=False)
