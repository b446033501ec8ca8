"""Sending one notification over one channel: signed webhook, Slack incoming webhook,
email over SMTP. Every failure raises ``DeliveryFailed``; the courier decides when to retry.

Webhook receivers verify ``X-Sitefleet-Signature: sha256=<hex HMAC-SHA256 of
"<X-Sitefleet-Timestamp>.<raw body>">`` with the channel's secret, reject stale timestamps
(replay), and deduplicate on ``X-Sitefleet-Notification-Id`` (a retried delivery keeps it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosmtplib
import httpx

from services.notifier import render
from services.notifier.channels import Channel
from services.notifier.targets import check_target
from shared.errors import Invalid


class DeliveryFailed(Exception):
    def __init__(self, message: str, *, retry_after: float | None = None, throttled: bool = False):
        super().__init__(message)
        self.message = message
        # Set by the receiver (429 Retry-After): the earliest time to try again.
        self.retry_after = retry_after
        # A throttled attempt is not the channel's fault and does not count towards health.
        self.throttled = throttled


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    sender: str
    timeout: float


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _retry_after(response: httpx.Response) -> float:
    raw = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(raw))
    except ValueError:
        return 1.0  # an HTTP-date or garbage: retry soon; the backoff takes over after that


async def _post(
    client: httpx.AsyncClient,
    channel: Channel,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
) -> None:
    if not channel.is_ops:
        try:
            await check_target(channel.target, allow_private=allow_private)
        except Invalid as exc:
            raise DeliveryFailed(exc.message) from exc
    try:
        response = await client.post(
            channel.target,
            content=body,
            headers={"Content-Type": "application/json", **headers},
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{channel.type} {channel.target} unreachable: {exc!r}") from exc
    if response.status_code == 429:
        raise DeliveryFailed(
            f"{channel.type} {channel.target} rate limited us",
            retry_after=_retry_after(response),
            throttled=True,
        )
    if response.is_redirect:
        location = response.headers.get("location", "")
        raise DeliveryFailed(
            f"{channel.type} {channel.target} redirected to {location!r} (not followed)"
        )
    if not response.is_success:
        raise DeliveryFailed(f"{channel.type} {channel.target} answered {response.status_code}")


async def send(
    channel: Channel,
    notification_id: str,
    doc: dict[str, Any],
    now: datetime,
    *,
    client: httpx.AsyncClient,
    smtp: SmtpServer,
    allow_private: bool,
) -> None:
    if channel.type == "email":
        message = render.email_message(doc, smtp.sender, channel.target, notification_id)
        try:
            await aiosmtplib.send(
                message,
                hostname=smtp.host,
                port=smtp.port,
                timeout=smtp.timeout,
                start_tls=False,
                use_tls=False,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"smtp {smtp.host}:{smtp.port}: {exc!r}") from exc
        return
    if channel.type == "slack":
        body = json.dumps(render.slack_payload(doc)).encode()
        await _post(client, channel, body, {}, allow_private=allow_private)
        return
    body = json.dumps({"notification_id": notification_id, **doc}, separators=(",", ":")).encode()
    timestamp = str(int(now.timestamp()))
    headers = {
        "X-Sitefleet-Notification-Id": notification_id,
        "Idempotency-Key": notification_id,
        "X-Sitefleet-Timestamp": timestamp,
        "X-Sitefleet-Kind": str(doc["kind"]),
    }
    if channel.secret:
        headers["X-Sitefleet-Signature"] = signature(channel.secret, timestamp, body)
    await _post(client, channel, body, headers, allow_private=allow_private)
