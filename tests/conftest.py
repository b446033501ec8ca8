"""Session-wide isolation: each platform the tests start gets a fresh RabbitMQ vhost and a
fresh migrated PostgreSQL database, removed at the end. Component fixtures (nginx,
PowerDNS, the platform's processes) live in tests/fixtures/."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.fixtures.isolation import (
    TEMPLATE_ENV,
    create_database,
    create_vhost_async,
    drop_database,
    drop_template_database,
    drop_vhost_async,
)

pytest_plugins = ["tests.fixtures.components", "tests.fixtures.platform", "tests.fixtures.sshd"]

# The template this process named (and so drops at the end).
_OWN_TEMPLATE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # One migrated template database for the whole run (its xdist workers inherit the
    # name from the environment): every test database is a clone of it.
    if not hasattr(config, "workerinput") and TEMPLATE_ENV not in os.environ:
        os.environ[TEMPLATE_ENV] = f"sitefleet_test_tpl_{uuid.uuid4().hex[:10]}"
        config.stash[_OWN_TEMPLATE] = os.environ[TEMPLATE_ENV]


def pytest_unconfigure(config: pytest.Config) -> None:
    template = config.stash.get(_OWN_TEMPLATE, None)
    if template is not None:
        drop_template_database(template)
        os.environ.pop(TEMPLATE_ENV, None)


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
async def amqp_url(run_id: str) -> AsyncIterator[str]:
    vhost, url = await create_vhost_async(f"sitefleet-test-{run_id}")
    yield url
    await drop_vhost_async(vhost)


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
