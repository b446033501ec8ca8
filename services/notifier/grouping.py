"""Intake: fold events into alert groups, exactly once per envelope id.

The processed-event insert and the group update share the caller's transaction, so a
redelivered event (same ``message_id``) is either already counted or not counted at all.
Times: ``occurred_at`` of the event for first/last seen; ``now`` (the caller's clock) for
the timers the scheduler acts on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from sqlalchemy import Result, case, func, literal_column, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier.fingerprint import Occurrence, Recovery
from shared.ids import new_id
from shared.models import AlertGroup, ProcessedEvent


@dataclass(frozen=True)
class Timers:
    group_wait: timedelta
    group_interval: timedelta
    repeat_interval: timedelta

    @classmethod
    def of_seconds(cls, group_wait: float, group_interval: float, repeat: float) -> Timers:
        return cls(
            timedelta(seconds=group_wait),
            timedelta(seconds=group_interval),
            timedelta(seconds=repeat),
        )


class Outcome(Enum):
    DUPLICATE = "duplicate"  # this envelope id was counted before
    OPENED = "opened"  # the first occurrence of a new group
    FOLDED = "folded"  # counted into an open group (no notification of its own)
    RESOLVED = "resolved"  # a recovery closed open groups
    NOTHING_OPEN = "nothing_open"  # a recovery with no open group


async def claim_event(session: AsyncSession, message_id: str, now: datetime) -> bool:
    """True the first time an envelope id is seen (the row commits with the caller)."""
    inserted = await session.scalar(
        insert(ProcessedEvent)
        .values(message_id=message_id, processed_at=now)
        .on_conflict_do_nothing()
        .returning(ProcessedEvent.message_id)
    )
    return inserted is not None


async def record_occurrence(
    session: AsyncSession, occ: Occurrence, timers: Timers, now: datetime
) -> Outcome:
    return (await record_occurrences(session, [occ], timers, now))[0]


async def record_occurrences(
    session: AsyncSession, occurrences: list[Occurrence], timers: Timers, now: datetime
) -> list[Outcome]:
    """Fold a batch of failures in: one statement for the envelope ids, one upsert row per
    fingerprint (rows in fingerprint order, so concurrent batches cannot deadlock)."""
    ids = list(dict.fromkeys(o.event_id for o in occurrences))
    fresh = set(
        await session.scalars(
            insert(ProcessedEvent)
            .values([{"message_id": i, "processed_at": now} for i in ids])
            .on_conflict_do_nothing()
            .returning(ProcessedEvent.message_id)
        )
    )
    by_fingerprint: dict[str, list[Occurrence]] = {}
    for occ in occurrences:
        if occ.event_id in fresh:
            fresh.discard(occ.event_id)  # a duplicate within the batch counts once too
            by_fingerprint.setdefault(occ.fingerprint, []).append(occ)
    counted = {id(o) for group in by_fingerprint.values() for o in group}
    if not by_fingerprint:
        return [Outcome.DUPLICATE] * len(occurrences)
    rows = []
    for fingerprint in sorted(by_fingerprint):
        group = by_fingerprint[fingerprint]
        latest = max(group, key=lambda o: o.occurred_at)
        rows.append(
            {
                "id": new_id("alr"),
                "fingerprint": fingerprint,
                "tenant_id": latest.tenant_id,
                "site_id": latest.site_id,
                "service": latest.service,
                "event_type": latest.event_type,
                "error_code": latest.error_code,
                "summary": latest.summary,
                "last_message": latest.message,
                "last_event_id": latest.event_id,
                "status": "firing",
                "count": len(group),
                "pending_count": len(group),
                "notified_count": 0,
                "notifications": 0,
                "first_seen": min(o.occurred_at for o in group),
                "last_seen": latest.occurred_at,
                "next_notify_at": now + timers.group_wait,
            }
        )
    stmt = insert(AlertGroup).values(rows)
    # Before the first notification the group_wait timer stands; afterwards news is due
    # group_interval after the last notification (sooner than a pending repeat).
    next_after_news = func.greatest(AlertGroup.last_notified_at + timers.group_interval, now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[AlertGroup.fingerprint],
        index_where=AlertGroup.resolved_at.is_(None),
        set_={
            "count": AlertGroup.count + stmt.excluded.count,
            "pending_count": AlertGroup.pending_count + stmt.excluded.pending_count,
            "first_seen": func.least(AlertGroup.first_seen, stmt.excluded.first_seen),
            "last_seen": func.greatest(AlertGroup.last_seen, stmt.excluded.last_seen),
            "summary": stmt.excluded.summary,
            "last_message": stmt.excluded.last_message,
            "last_event_id": stmt.excluded.last_event_id,
            "next_notify_at": case(
                (AlertGroup.last_notified_at.is_(None), AlertGroup.next_notify_at),
                else_=func.least(AlertGroup.next_notify_at, next_after_news),
            ),
        },
    )
    # xmax = 0 only on a freshly inserted row.
    result: Result[str, bool] = await session.execute(
        stmt.returning(AlertGroup.fingerprint, literal_column("xmax = 0"))
    )
    opened: set[str] = {row[0] for row in result if row[1]}
    outcomes = []
    for occ in occurrences:
        if id(occ) not in counted:
            outcomes.append(Outcome.DUPLICATE)
        elif occ.fingerprint in opened:
            opened.discard(occ.fingerprint)  # only its first occurrence opened the group
            outcomes.append(Outcome.OPENED)
        else:
            outcomes.append(Outcome.FOLDED)
    return outcomes


async def record_recovery(
    session: AsyncSession, rec: Recovery, timers: Timers, now: datetime
) -> Outcome:
    """Resolve the site's open groups of that service; each then sends one "recovered"
    message (no sooner than group_interval after its last notification)."""
    if not await claim_event(session, rec.event_id, now):
        return Outcome.DUPLICATE
    result = await session.execute(
        update(AlertGroup)
        .where(
            AlertGroup.resolved_at.is_(None),
            AlertGroup.tenant_id == rec.tenant_id,
            AlertGroup.site_id == rec.site_id,
            AlertGroup.service == rec.service,
        )
        .values(
            status="resolved",
            resolved_at=now,
            next_notify_at=case(
                (AlertGroup.last_notified_at.is_(None), now),
                else_=func.greatest(AlertGroup.last_notified_at + timers.group_interval, now),
            ),
        )
    )
    resolved = result.rowcount  # type: ignore[attr-defined]
    return Outcome.RESOLVED if resolved else Outcome.NOTHING_OPEN
