"""The transactional outbox: messages are written in the transaction of the change they
announce, and a relay publishes them with confirms, marking rows published only after the
broker's confirm. A broker outage delays messages; it never loses them."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.broker import H_EXCHANGE, H_ROUTING_KEY, JOBS_EXCHANGE, Publisher
from shared.db import SessionMaker
from shared.messages import Message
from shared.models import OutboxMessage
from shared.timeutil import utcnow

log = logging.getLogger(__name__)


def enqueue(session: AsyncSession, job: Message, exchange: str = JOBS_EXCHANGE) -> None:
    envelope = job.envelope()
    session.add(
        OutboxMessage(
            message_id=envelope.message_id,
            exchange=exchange,
            routing_key=envelope.type,
            body=envelope.model_dump_json(),
            correlation_id=envelope.correlation_id,
        )
    )


class Relay:
    def __init__(
        self,
        sessionmaker: SessionMaker,
        *,
        poll_interval: float,
        batch: int,
        publish_timeout: float,
        keep_published: timedelta = timedelta(days=1),
    ) -> None:
        self.sessionmaker = sessionmaker
        self.poll_interval = poll_interval
        self.batch = batch
        self.publish_timeout = publish_timeout
        self.keep_published = keep_published
        self.publisher: Publisher | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Called after a commit that wrote outbox rows: publish now, not at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Ask ``run`` to return: it finishes the pass in hand, makes one more over what is
        still pending (the rows of the last requests), and returns. Cancelling ``run``
        instead could cut a pass between the broker's confirms and the commit that marks
        the rows published, and those rows would be published again after a restart."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        last_cleanup = 0.0
        loop = asyncio.get_running_loop()
        while True:
            stopping = self._stopping
            if not stopping:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                except TimeoutError:
                    pass
            self._wake.clear()
            if self.publisher is not None:
                try:
                    while await self.publish_pending(self.publisher) == self.batch:
                        pass
                    if not stopping and loop.time() - last_cleanup > 300:
                        await self.delete_published()
                        last_cleanup = loop.time()
                except Exception as exc:  # broker or database down: try again next poll
                    log.warning("outbox relay pass failed", extra={"error": repr(exc)})
            if stopping:
                return

    async def publish_pending(self, publisher: Publisher) -> int:
        """Publish one batch; returns how many rows were pending in it."""
        async with self.sessionmaker.begin() as session:
            rows = list(
                await session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.published_at.is_(None))
                    .order_by(OutboxMessage.id)
                    .limit(self.batch)
                    .with_for_update(skip_locked=True)
                )
            )
            if not rows:
                return 0
            results = await asyncio.gather(
                *(self._publish(publisher, row) for row in rows), return_exceptions=True
            )
            done = [row.id for row, res in zip(rows, results, strict=True) if res is None]
            if done:
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id.in_(done))
                    .values(published_at=utcnow())
                )
            failed = [res for res in results if isinstance(res, BaseException)]
            if failed:
                log.warning(
                    "outbox publish failed", extra={"failed": len(failed), "error": repr(failed[0])}
                )
            return len(rows)

    async def _publish(self, publisher: Publisher, row: OutboxMessage) -> None:
        await asyncio.wait_for(
            publisher.publish_raw(
                row.exchange,
                row.routing_key,
                row.body.encode(),
                message_id=row.message_id,
                correlation_id=row.correlation_id,
                headers={H_EXCHANGE: row.exchange, H_ROUTING_KEY: row.routing_key},
            ),
            self.publish_timeout,
        )

    async def delete_published(self) -> None:
        async with self.sessionmaker.begin() as session:
            await session.execute(
                delete(OutboxMessage).where(
                    OutboxMessage.published_at < utcnow() - self.keep_published
                )
            )
