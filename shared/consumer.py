"""The consumer helper: decode -> handle -> ack; retry transient errors; park the rest.

Outcome of one delivery (the only place errors become broker actions):
    handler returns                 -> ack
    raises Transient, steps left    -> copy to Q.wait.<next delay> (confirmed), then ack
      (the database being unavailable counts as Transient: shared.db.is_unavailable)
    raises Transient, no steps left -> copy to Q.parked, emit ``<kind>.parked``, then ack
    raises any other error          -> copy to Q.parked, emit ``<kind>.parked``, then ack
    undecodable body                -> copy to Q.parked, then ack
If the copy cannot be published (broker gone) nothing is acked, so the broker redelivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from shared.broker import (
    EVENTS_EXCHANGE,
    H_ATTEMPT,
    H_ERROR_CODE,
    H_ERROR_MESSAGE,
    Publisher,
    QueueSpec,
)
from shared.db import is_unavailable
from shared.errors import SitefleetError, Transient, Unavailable
from shared.logs import correlation
from shared.messages import Envelope, ErrorInfo, JobParked, Message, parse_payload

log = logging.getLogger(__name__)

Handler = Callable[[Envelope, Message], Awaitable[None]]


class Consumer:
    def __init__(
        self,
        spec: QueueSpec,
        handler: Handler,
        publisher: Publisher,
        retry_delays: list[float],
        *,
        emit_parked: bool = True,
    ) -> None:
        self.spec = spec
        self.handler = handler
        self.publisher = publisher
        self.retry_delays = retry_delays
        # Event queues do not announce their own parked copies (that would loop on *.parked).
        self.emit_parked = emit_parked
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        # The tasks handling the messages in hand (aio-pika runs each delivery in its own).
        self._handling: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, channel: AbstractChannel, prefetch: int) -> None:
        await channel.set_qos(prefetch_count=prefetch)
        self._queue = await channel.get_queue(self.spec.name, ensure=False)
        self._tag = await self._queue.consume(self.on_message)

    async def stop(self, grace: float, *, unwind: float = 20.0) -> None:
        """Take no new messages, give the ones in hand ``grace`` seconds to finish, then
        hand back the rest: cancel their handlers and wait (at most ``unwind`` seconds) for
        them to unwind, so their clean-up runs (a build killed, a lock released) while the
        connection is still open. They stay unacked: once the caller closes the connection
        the broker redelivers them. A handler may finish a section it must not cut (e.g.
        services/deployer/deploy.py's switch of a release) before it gives in."""
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(Exception):  # the connection may already be gone
                await self._queue.cancel(self._tag)
            self._tag = None
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
            return
        except TimeoutError:
            pass
        handling = list(self._handling)
        log.warning(
            "messages still in hand at shutdown; handing them back to the broker",
            extra={"queue": self.spec.name, "in_hand": len(handling)},
        )
        for task in handling:
            task.cancel()
        _, stuck = await asyncio.wait(handling, timeout=unwind) if handling else ((), ())
        if stuck:
            log.error(
                "message handlers did not stop after being cancelled",
                extra={"queue": self.spec.name, "in_hand": len(stuck)},
            )

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handling.add(task)
        self._idle.clear()
        try:
            await self._on_message(message)
        finally:
            self._handling.discard(task)
            if not self._handling:
                self._idle.set()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = Envelope.model_validate_json(message.body)
            payload = parse_payload(envelope)
        except (ValidationError, KeyError, ValueError) as exc:
            log.error("undecodable message parked", extra={"queue": self.spec.name})
            await self._settle(
                message,
                self._park(message, ErrorInfo(code="undecodable_message", message=str(exc)[:500])),
            )
            return
        with correlation(envelope.correlation_id):
            await self._handle(message, envelope, payload)

    async def _handle(
        self, message: AbstractIncomingMessage, envelope: Envelope, payload: Message
    ) -> None:
        raw_attempt = (message.headers or {}).get(H_ATTEMPT, 0)
        attempt = raw_attempt if isinstance(raw_attempt, int) else 0
        try:
            try:
                await self.handler(envelope, payload)
            except Exception as exc:
                if is_unavailable(exc):  # e.g. Postgres restarting or out of connections
                    raise Unavailable(
                        f"the database is unavailable: {type(exc).__name__}: {exc}"[:500]
                    ) from exc
                raise
        except Transient as exc:
            error = ErrorInfo(code=exc.code, message=exc.message)
            if attempt < len(self.retry_delays):
                delay = self.retry_delays[attempt]
                log.warning(
                    "job failed, will retry",
                    extra={
                        "type": envelope.type,
                        "attempt": attempt + 1,
                        "delay_s": delay,
                        "error": exc.message,
                    },
                )
                await self._settle(message, self._retry(message, attempt + 1, delay, error))
            else:
                await self._settle(message, self._park(message, error, envelope, payload))
            return
        except SitefleetError as exc:
            error = ErrorInfo(code=exc.code, message=exc.message)
            await self._settle(message, self._park(message, error, envelope, payload))
            return
        except Exception as exc:  # a bug: park it with the evidence rather than loop forever
            log.exception("handler crashed", extra={"type": envelope.type})
            error = ErrorInfo(code="internal_error", message=f"{type(exc).__name__}: {exc}"[:500])
            await self._settle(message, self._park(message, error, envelope, payload))
            return
        await message.ack()

    async def _settle(self, message: AbstractIncomingMessage, copy: Awaitable[None]) -> None:
        """Ack only once the retry/parked copy is confirmed by the broker."""
        try:
            await copy
        except Exception:
            log.exception("could not record retry/park; leaving message unacked")
            try:
                await message.nack(requeue=True)
            except Exception:
                log.debug("nack failed; broker will redeliver on reconnect")
            return
        await message.ack()

    def _headers(self, message: AbstractIncomingMessage, **extra: Any) -> dict[str, Any]:
        headers = dict(message.headers or {})
        headers.pop("x-delivery-count", None)
        headers.update(extra)
        return headers

    async def _retry(
        self, message: AbstractIncomingMessage, attempt: int, delay: float, error: ErrorInfo
    ) -> None:
        await self.publisher.publish_raw(
            "",
            self.spec.wait_queue(delay),
            message.body,
            message_id=message.message_id or str(uuid.uuid4()),
            correlation_id=message.correlation_id,
            headers=self._headers(
                message,
                **{
                    H_ATTEMPT: attempt,
                    H_ERROR_CODE: error.code,
                    H_ERROR_MESSAGE: error.message[:500],
                },
            ),
        )

    async def _park(
        self,
        message: AbstractIncomingMessage,
        error: ErrorInfo,
        envelope: Envelope | None = None,
        payload: Message | None = None,
    ) -> None:
        log.error(
            "job parked",
            extra={"queue": self.spec.name, "error_code": error.code, "error": error.message},
        )
        await self.publisher.publish_raw(
            "",
            self.spec.parked,
            message.body,
            message_id=message.message_id or str(uuid.uuid4()),
            correlation_id=message.correlation_id,
            headers=self._headers(
                message, **{H_ERROR_CODE: error.code, H_ERROR_MESSAGE: error.message[:500]}
            ),
        )
        if self.emit_parked and envelope is not None:
            kind = envelope.type.split(".", 1)[0]
            data = envelope.payload
            event = JobParked(
                queue=self.spec.name,
                job_type=envelope.type,
                job_message_id=envelope.message_id,
                tenant_id=data.get("tenant_id"),
                site_id=data.get("site_id"),
                error=error,
                job=data,
            )
            env = event.envelope(envelope.correlation_id).model_copy(
                update={"type": f"{kind}.parked"}
            )
            await self.publisher.publish_envelope(EVENTS_EXCHANGE, env)
