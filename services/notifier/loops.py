"""The notifier's two background loops: the scheduler (due groups -> delivery rows) and
the courier workers (delivery rows -> channels). Both survive database outages."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import delete

from services.notifier import metrics
from services.notifier.channels import Channel
from services.notifier.courier import Courier
from services.notifier.grouping import Timers
from services.notifier.scheduler import schedule_due
from shared.db import SessionMaker
from shared.models import ProcessedEvent
from shared.timeutil import utcnow

log = logging.getLogger(__name__)


async def _pause(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    waits = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waits.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def run_scheduler(
    stop: asyncio.Event,
    sessionmaker: SessionMaker,
    timers: Timers,
    ops: list[Channel],
    *,
    poll_interval: float,
    batch: int,
    dedupe_window: float,
    wake: asyncio.Event | None = None,
) -> None:
    """``wake`` is set whenever new delivery rows are committed (wakes the courier)."""
    last_sweep = 0.0
    while not stop.is_set():
        busy = False
        try:
            async with sessionmaker.begin() as session:
                done = await schedule_due(session, timers, ops, utcnow(), batch=batch)
            busy = done.notifications >= batch
            if done.unrouted:
                log.warning("notifications with no channel", extra={"count": done.unrouted})
            if done.deliveries and wake is not None:
                wake.set()
            for kind, count in done.by_kind.items():
                metrics.NOTIFICATIONS.labels(kind).inc(count)
            loop_now = asyncio.get_running_loop().time()
            if loop_now - last_sweep > 60:
                last_sweep = loop_now
                async with sessionmaker.begin() as session:
                    cutoff = utcnow() - timedelta(seconds=dedupe_window)
                    await session.execute(
                        delete(ProcessedEvent).where(ProcessedEvent.processed_at < cutoff)
                    )
        except Exception:
            log.exception("scheduler pass failed; retrying")
        if not busy:
            await _pause(stop, poll_interval)


async def run_courier(
    stop: asyncio.Event,
    courier: Courier,
    *,
    workers: int,
    poll_interval: float,
    wake: asyncio.Event | None = None,
) -> None:
    async def worker() -> None:
        while not stop.is_set():
            if wake is not None:
                wake.clear()
            try:
                busy = await courier.deliver_next()
            except Exception:
                log.exception("delivery pass failed; retrying")
                busy = False
            if not busy:
                await _pause(stop, poll_interval, wake)

    await asyncio.gather(*(worker() for _ in range(max(1, workers))))
