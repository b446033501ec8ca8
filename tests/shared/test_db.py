"""The services' database engine (shared/db.py) against the real PostgreSQL."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import create_engine, is_unavailable


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    made = create_engine(database_url, application_name="sitefleet-test-db", pool_size=1)
    yield made
    await made.dispose()


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())


async def terminate(database_url: str, pid: int) -> None:
    other = create_engine(database_url, application_name="sitefleet-test-db-admin", pool_size=1)
    try:
        async with other.connect() as conn:
            assert (
                await conn.execute(text("select pg_terminate_backend(:p)"), {"p": pid})
            ).scalar()
    finally:
        await other.dispose()


async def test_a_pooled_connection_the_server_closed_is_replaced_at_checkout(
    engine: AsyncEngine, database_url: str
) -> None:
    first = await backend_pid(engine)  # back in the pool, idle
    await terminate(database_url, first)
    await asyncio.sleep(0.2)  # the pool's idle socket sees the server close it

    assert await backend_pid(engine) != first  # a new connection, no error


async def test_a_connection_lost_mid_use_is_an_outage_and_the_next_checkout_works(
    engine: AsyncEngine, database_url: str
) -> None:
    async with engine.connect() as conn:
        first = int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())
        await terminate(database_url, first)
        with pytest.raises(Exception) as lost:
            await conn.execute(text("select 1"))
    assert is_unavailable(lost.value)  # the work is retried, not failed
    assert await backend_pid(engine) != first
