"""Session-wide isolation: a fresh RabbitMQ vhost and a fresh migrated PostgreSQL database
for this test session, removed at the end. Component fixtures (nginx, PowerDNS, the
platform's processes) live in tests/fixtures/ and build on these."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from shared.migrate import upgrade

PG_ADMIN_URL = os.environ.get("SITEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_BASE = os.environ.get("SITEFLEET_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")

pytest_plugins: list[str] = []


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def amqp_url(run_id: str) -> Iterator[str]:
    vhost = f"sitefleet-test-{run_id}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
    )
    yield f"{AMQP_BASE}/{vhost}"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False)


@pytest.fixture(scope="session")
async def database_url(run_id: str) -> AsyncIterator[str]:
    name = f"sitefleet_test_{run_id}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    # Alembic's env runs its own event loop: keep it off ours.
    await asyncio.to_thread(upgrade, url)
    yield url
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()
