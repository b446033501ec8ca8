"""Events in: failures and recoveries are folded into the alert groups, deduplicated on
the envelope id in the same transaction. Nothing is sent from here; the scheduler does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from services.notifier import metrics
from services.notifier.fingerprint import Occurrence, Recovery, interpret
from services.notifier.grouping import Outcome, Timers, record_occurrences, record_recovery
from shared.db import SessionMaker
from shared.errors import Invalid, Unavailable
from shared.messages import Envelope, Message
from shared.timeutil import utcnow

log = logging.getLogger(__name__)


class EventIntake:
    """Failures are folded in batches: while one transaction commits, the events arriving
    meanwhile queue up and go into the next (each message is acked only after the
    transaction holding it has committed). At low load a batch is one event."""

    def __init__(
        self,
        sessionmaker: SessionMaker,
        timers: Timers,
        clock: Callable[[], datetime] = utcnow,
        *,
        max_batch: int = 200,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.timers = timers
        self.clock = clock
        self.max_batch = max_batch
        self._waiting: list[tuple[Occurrence, asyncio.Future[Outcome]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __call__(self, envelope: Envelope, payload: Message) -> None:
        await self.take(envelope)

    async def take(self, envelope: Envelope) -> Outcome:
        try:
            meaning = interpret(envelope)
        except Invalid:
            metrics.EVENTS_IN.labels("invalid").inc()
            raise  # the consumer helper parks it with the reason
        try:
            if isinstance(meaning, Recovery):
                async with self.sessionmaker.begin() as session:
                    outcome = await record_recovery(session, meaning, self.timers, self.clock())
            else:
                outcome = await self._fold(meaning)
        except (DBAPIError, OSError) as exc:
            if isinstance(exc, DBAPIError) and not _is_connection_problem(exc):
                raise
            raise Unavailable(f"database unavailable: {exc!r}"[:500]) from exc
        metrics.EVENTS_IN.labels(outcome.value).inc()
        if outcome is Outcome.FOLDED:
            metrics.SUPPRESSED.inc()
        return outcome

    async def _fold(self, occurrence: Occurrence) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((occurrence, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            try:
                async with self.sessionmaker.begin() as session:
                    outcomes = await record_occurrences(
                        session, [occ for occ, _ in batch], self.timers, self.clock()
                    )
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)


def _is_connection_problem(exc: DBAPIError) -> bool:
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
