import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.deployer.fence import DatabaseFence, Fenced
from shared.db import create_engine, create_sessionmaker
from shared.errors import Transient
from shared.ids import new_id
from shared.messages import DeploymentRequested
from shared.models import Deployment, Site, Tenant


@dataclass
class SiteRows:
    tenant_id: str
    site_id: str
    deployment_id: str


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, application_name="sitefleet-deployer-tests")
    yield engine
    await engine.dispose()


@pytest.fixture
async def rows(engine: AsyncEngine) -> AsyncIterator[SiteRows]:
    """A tenant, its site at generation 3 and that generation's queued deployment (the
    rows the API would have written), deleted again afterwards."""
    ids = SiteRows(new_id("ten"), new_id("site"), new_id("dep"))
    async with create_sessionmaker(engine).begin() as session:
        session.add(Tenant(id=ids.tenant_id, name=f"tenant {ids.tenant_id}"))
        await session.flush()
        session.add(
            Site(
                id=ids.site_id,
                tenant_id=ids.tenant_id,
                domain=f"{ids.site_id.replace('_', '-')}.example.com",
                template="demo",
                template_version="1.0.0",
                params={"title": "x"},
                generation=3,
            )
        )
        await session.flush()
        session.add(
            Deployment(
                id=ids.deployment_id,
                site_id=ids.site_id,
                tenant_id=ids.tenant_id,
                generation=3,
                status="queued",
                template_version="1.0.0",
                params={"title": "x"},
            )
        )
    yield ids
    async with engine.begin() as conn:
        await conn.execute(delete(Tenant).where(Tenant.id == ids.tenant_id))


def job_for(
    rows: SiteRows, *, generation: int, deployment_id: str | None = None
) -> DeploymentRequested:
    return DeploymentRequested(
        deployment_id=deployment_id or rows.deployment_id,
        tenant_id=rows.tenant_id,
        site_id=rows.site_id,
        domain="example.com",
        generation=generation,
        template="demo",
        template_version="1.0.0",
        params={"title": "x"},
    )


async def set_status(engine: AsyncEngine, deployment_id: str, status: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(Deployment).where(Deployment.id == deployment_id).values(status=status)
        )


async def test_the_newest_generation_proceeds(engine: AsyncEngine, rows: SiteRows) -> None:
    fence = DatabaseFence(engine, lock_timeout=5)
    assert await fence(job_for(rows, generation=3)) is None
    await set_status(engine, rows.deployment_id, "building")  # our own progress, not an end
    assert await fence(job_for(rows, generation=3)) is None


async def test_an_older_generation_is_superseded(engine: AsyncEngine, rows: SiteRows) -> None:
    fence = DatabaseFence(engine, lock_timeout=5)
    verdict = await fence(job_for(rows, generation=2, deployment_id=new_id("dep")))
    assert verdict == Fenced("superseded by generation 3")


@pytest.mark.parametrize("status", ["live", "failed", "superseded", "cancelled", "rolled_back"])
async def test_a_finished_deployment_is_a_duplicate(
    engine: AsyncEngine, rows: SiteRows, status: str
) -> None:
    await set_status(engine, rows.deployment_id, status)
    fence = DatabaseFence(engine, lock_timeout=5)
    verdict = await fence(job_for(rows, generation=3))
    assert verdict is not None and verdict.duplicate


async def test_a_finished_deployment_that_was_overtaken_is_still_a_duplicate(
    engine: AsyncEngine, rows: SiteRows
) -> None:
    await set_status(engine, rows.deployment_id, "live")
    async with engine.begin() as conn:
        await conn.execute(update(Site).where(Site.id == rows.site_id).values(generation=4))
    verdict = await DatabaseFence(engine, lock_timeout=5)(job_for(rows, generation=3))
    assert verdict is not None and verdict.duplicate


async def test_a_deleted_site_fences_its_jobs(engine: AsyncEngine, rows: SiteRows) -> None:
    fence = DatabaseFence(engine, lock_timeout=5)
    async with engine.begin() as conn:
        await conn.execute(delete(Site).where(Site.id == rows.site_id))
    assert await fence(job_for(rows, generation=3)) == Fenced("site deleted")


async def lock_is_free(engine: AsyncEngine, key: str) -> bool:
    async with engine.connect() as conn:
        free = await conn.scalar(text("select pg_try_advisory_lock(hashtext(:k))"), {"k": key})
        if free:
            await conn.scalar(text("select pg_advisory_unlock(hashtext(:k))"), {"k": key})
        return bool(free)


async def lock_waiters(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            text(
                "select count(*) from pg_locks where locktype = 'advisory' and not granted"
                " and database = (select oid from pg_database where datname = current_database())"
            )
        )
        return int(count or 0)


async def test_one_job_per_site_at_a_time(engine: AsyncEngine) -> None:
    fence = DatabaseFence(engine, lock_timeout=30)
    site_id = new_id("site")
    order: list[str] = []

    async def second_job() -> None:
        async with fence.site_lock(site_id):
            order.append("second")

    async with fence.site_lock(site_id):
        assert not await lock_is_free(engine, site_id)
        assert await lock_is_free(engine, new_id("site"))  # other sites are not held up
        waiter = asyncio.create_task(second_job())
        while await lock_waiters(engine) == 0:  # until the second job is queued on the lock
            await asyncio.sleep(0.02)
        order.append("first")
    await waiter

    assert order == ["first", "second"]
    assert await lock_is_free(engine, site_id)


async def test_the_lock_is_released_when_the_job_fails(engine: AsyncEngine) -> None:
    fence = DatabaseFence(engine, lock_timeout=30)
    site_id = new_id("site")
    with pytest.raises(Transient):
        async with fence.site_lock(site_id):
            raise Transient("nginx is down")
    assert await lock_is_free(engine, site_id)


async def test_a_site_held_too_long_is_retried_later(engine: AsyncEngine) -> None:
    site_id = new_id("site")
    async with DatabaseFence(engine, lock_timeout=30).site_lock(site_id):
        with pytest.raises(Transient) as info:
            async with DatabaseFence(engine, lock_timeout=0.2).site_lock(site_id):
                pass
    assert info.value.code == "site_busy"
    assert await lock_is_free(engine, site_id)
