"""Several broker nodes in settings (a RabbitMQ cluster): a service whose first node is
down connects through the next one."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from aio_pika.abc import AbstractConnection

from cli.devstack import procs
from shared import broker
from shared.settings import CommonSettings


async def test_a_service_connects_through_the_next_node_when_the_first_is_down(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = f"amqp://guest:guest@127.0.0.1:{procs.free_port()}/"  # nothing listens there
    monkeypatch.setenv("SITEFLEET_AMQP_URLS", json.dumps([down, amqp_url]))
    settings = CommonSettings()
    assert settings.broker_urls == [down, amqp_url]

    connected: asyncio.Queue[AbstractConnection] = asyncio.Queue()

    async def on_connect(connection: AbstractConnection) -> None:
        channel = await connection.channel()  # a working connection, not only a socket
        await channel.close()
        await connected.put(connection)

    link = asyncio.create_task(
        broker.stay_connected(
            settings.broker_urls, name="tests", on_connect=on_connect, retry_every=0.05
        )
    )
    try:
        connection = await asyncio.wait_for(connected.get(), 30)
        assert not connection.is_closed
    finally:
        link.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await link


def test_without_a_node_list_the_one_broker_url_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SITEFLEET_AMQP_URLS", raising=False)
    monkeypatch.setenv("SITEFLEET_AMQP_URL", "amqp://u:p@rabbit.internal:5672/sitefleet")
    assert CommonSettings().broker_urls == ["amqp://u:p@rabbit.internal:5672/sitefleet"]
