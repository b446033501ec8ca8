"""Webhook channel: a failure event POSTed as JSON.

Receivers can deduplicate on ``X-Sitefleet-Event-Id`` (a redelivered event keeps its id).
"""

from __future__ import annotations

import httpx

from shared.errors import Transient
from shared.messages import Envelope


def alert_body(envelope: Envelope) -> dict[str, object]:
    payload = envelope.payload
    error = payload.get("error") or {}
    subject = payload.get("domain") or payload.get("site_id") or payload.get("queue") or ""
    return {
        "event_id": envelope.message_id,
        "type": envelope.type,
        "occurred_at": envelope.occurred_at.isoformat(),
        "correlation_id": envelope.correlation_id,
        "tenant_id": payload.get("tenant_id"),
        "site_id": payload.get("site_id"),
        "summary": f"{envelope.type} {subject}: {error.get('message', '')}".strip(),
        "error": error,
        "payload": payload,
    }


async def deliver(client: httpx.AsyncClient, url: str, envelope: Envelope) -> None:
    try:
        response = await client.post(
            url,
            json=alert_body(envelope),
            headers={
                "X-Sitefleet-Event-Id": envelope.message_id,
                "X-Sitefleet-Event-Type": envelope.type,
            },
        )
    except httpx.HTTPError as exc:
        raise Transient(f"webhook {url} unreachable: {exc!r}", code="webhook_unreachable") from exc
    if response.status_code >= 300:
        raise Transient(f"webhook {url} answered {response.status_code}", code="webhook_rejected")
