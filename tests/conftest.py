"""Session-wide isolation: each platform the tests start gets a fresh RabbitMQ vhost and a
fresh migrated PostgreSQL database, removed at the end. Component fixtures (nginx,
PowerDNS, the platform's processes) live in tests/fixtures/."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.fixtures.isolation import create_database, create_vhost, drop_database, drop_vhost

pytest_plugins = ["tests.fixtures.components", "tests.fixtures.platform", "tests.fixtures.sshd"]


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def amqp_url(run_id: str) -> Iterator[str]:
    vhost, url = create_vhost(f"sitefleet-test-{run_id}")
    yield url
    drop_vhost(vhost)


@pytest.fixture(scope="session")
async def database_url(run_id: str) -> AsyncIterator[str]:
    name = f"sitefleet_test_{run_id}"
    url = await create_database(name)
    yield url
    await drop_database(name)


@pytest.fixture(autouse=True, scope="session")
def _no_proxy_env() -> None:
    # Tests talk to 127.0.0.1 only; an ambient HTTP proxy must not intercept that.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        os.environ.pop(var, None)
