"""What a notification says: the JSON document (webhook), its Slack text and its email."""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from typing import Any

from shared.models import AlertGroup

# firing: the group's first notification; digest: news since the last one; repeat: still
# firing, no news; resolved: one "recovered" message; channel_unhealthy: to ops only.
KINDS = ("firing", "digest", "repeat", "resolved", "channel_unhealthy")


def group_notification(
    group: AlertGroup, kind: str, count_since_last: int, now: datetime
) -> dict[str, Any]:
    return {
        "kind": kind,
        "status": "resolved" if kind == "resolved" else "firing",
        "group_id": group.id,
        "fingerprint": group.fingerprint,
        "sequence": group.notifications + 1,
        "type": group.event_type,
        "service": group.service,
        "tenant_id": group.tenant_id,
        "site_id": group.site_id,
        "error": {"code": group.error_code, "message": group.last_message},
        "summary": group.summary,
        "last_event_id": group.last_event_id,
        "count_since_last": count_since_last,
        "count": group.count,
        "first_seen": group.first_seen.isoformat(),
        "last_seen": group.last_seen.isoformat(),
        "created_at": now.isoformat(),
    }


def unhealthy_notification(
    channel_key: str, failures: int, error: str, now: datetime
) -> dict[str, Any]:
    return {
        "kind": "channel_unhealthy",
        "status": "firing",
        "channel": channel_key,
        "consecutive_failures": failures,
        "summary": f"notification channel {channel_key} failed {failures} times in a row: {error}",
        "error": {"code": "channel_unhealthy", "message": error[:500]},
        "count_since_last": 0,
        "created_at": now.isoformat(),
    }


def headline(doc: dict[str, Any]) -> str:
    kind = doc["kind"]
    if kind == "channel_unhealthy":
        return f"[sitefleet] {doc['summary']}"
    label = {"resolved": "RECOVERED", "repeat": "STILL FIRING"}.get(kind, "FIRING")
    return f"[sitefleet] {label}: {doc['summary']}"[:300]


def text_of(doc: dict[str, Any]) -> str:
    if doc["kind"] == "channel_unhealthy":
        return headline(doc)
    return (
        f"{headline(doc)}\n"
        f"{doc['count_since_last']} new occurrence(s), {doc['count']} in total "
        f"between {doc['first_seen']} and {doc['last_seen']}."
    )


def slack_payload(doc: dict[str, Any]) -> dict[str, Any]:
    return {"text": text_of(doc)}


def email_message(
    doc: dict[str, Any], sender: str, recipient: str, notification_id: str
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = headline(doc).replace("\n", " ")[:200]
    message["X-Sitefleet-Notification-Id"] = notification_id
    message.set_content(text_of(doc))
    return message
