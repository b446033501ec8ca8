"""The life of a consuming service: stay connected to the broker, consume one queue, and on
SIGTERM/SIGINT stop taking work, let the work in hand finish, then disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from aio_pika.abc import AbstractConnection

from shared import broker
from shared.consumer import Consumer
from shared.settings import CommonSettings

T = TypeVar("T")


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def consume_until(
    stop: asyncio.Event,
    settings: CommonSettings,
    *,
    name: str,
    consumer: Consumer,
    prefetch: int,
    grace: float,
    also: Callable[[AbstractConnection], Awaitable[None]] | None = None,
) -> None:
    """``also`` sets up anything else the service needs on each new connection."""
    publisher = consumer.publisher

    async def on_connect(connection: AbstractConnection) -> None:
        topology = await connection.channel()
        await broker.declare_topology(topology, settings.retry_delays, settings.delivery_limit)
        await topology.close()
        await publisher.attach(connection)
        await consumer.start(await connection.channel(), prefetch)
        if also is not None:
            await also(connection)

    link = asyncio.create_task(
        broker.stay_connected(
            settings.broker_urls,
            name=name,
            on_connect=on_connect,
            on_disconnect=publisher.detach,
        )
    )
    await stop.wait()
    await consumer.stop(grace)
    link.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await link


async def run_to_end(step: Coroutine[Any, Any, T]) -> T:
    """Run ``step`` to its outcome even if the calling task is cancelled meanwhile (a
    shutdown handing its messages back, a cancel request), and return or raise that
    outcome: for a section that must not stop half-way, such as a site's release switch
    and its health check. The cancellation is withdrawn (the caller goes on as if none had
    come), so the step must bound its own duration: ``Consumer.stop`` waits for it."""
    task = asyncio.ensure_future(step)
    withdrawn = 0
    while not task.done():
        try:
            await asyncio.wait({task})  # unlike awaiting it, never cancels the step
        except asyncio.CancelledError:
            withdrawn += 1
    current = asyncio.current_task()
    if current is not None:
        for _ in range(withdrawn):
            current.uncancel()
    return task.result()  # the step's own outcome (CancelledError if it was cancelled)
