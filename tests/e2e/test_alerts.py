"""Failure events become grouped notifications on the ops webhook; a failing webhook is
retried, not skipped; a recovery resolves the group; tenants see their alert groups.

The platform's notifier runs with default timers (group_wait 30 s); this module restarts
it with timers scaled down to fractions of a second."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from shared import broker
from shared.messages import DeploymentFailed, DeploymentSucceeded, ErrorInfo, Message
from tests.fixtures.platform import FAST_ALERT_TIMERS, Platform, wait_until

FAST_TIMERS = {**FAST_ALERT_TIMERS, "SITEFLEET_DELIVERY_BACKOFF": "[0.3, 0.6]"}


@pytest.fixture(scope="module")
async def alerting(platform: Platform) -> AsyncIterator[Platform]:
    platform.stop_service("notifier")
    platform.start_service("notifier", FAST_TIMERS)
    yield platform
    platform.stop_service("notifier")
    platform.start_service("notifier")


def failure(site_id: str, tenant_id: str = "ten_x") -> DeploymentFailed:
    return DeploymentFailed(
        deployment_id=f"dep_{uuid.uuid4().hex}",
        tenant_id=tenant_id,
        site_id=site_id,
        domain="broken.example",
        generation=1,
        status="failed",
        error=ErrorInfo(code="health_check_failed", message="nginx answered 502"),
    )


async def emit(platform: Platform, event: Message) -> str:
    connection = await broker.connect(platform.amqp_url, name="tests")
    async with connection:
        publisher = await broker.Publisher.open(connection)
        envelope = event.envelope()
        await publisher.publish_envelope(broker.EVENTS_EXCHANGE, envelope)
        return envelope.message_id


def notifications(platform: Platform, site_id: str) -> list[dict]:
    return [r for r in platform.webhook.received if r["body"].get("site_id") == site_id]


async def test_failure_event_is_posted_to_the_ops_webhook(alerting: Platform) -> None:
    site = f"site_{uuid.uuid4().hex[:12]}"
    event_id = await emit(alerting, failure(site))

    async def delivered() -> list[dict]:
        return notifications(alerting, site)

    [request] = await wait_until(delivered, what="the webhook delivery")
    body = request["body"]
    assert (body["kind"], body["status"], body["type"]) == ("firing", "firing", "deployment.failed")
    assert body["last_event_id"] == event_id
    assert body["error"] == {"code": "health_check_failed", "message": "nginx answered 502"}
    assert "broken.example" in body["summary"]
    assert (body["count_since_last"], body["count"]) == (1, 1)
    assert request["headers"]["X-Sitefleet-Notification-Id"] == body["notification_id"]


async def test_a_failing_webhook_is_retried_until_it_accepts(alerting: Platform) -> None:
    alerting.webhook.fail_next = 2  # two 503s, then the receiver recovers
    site = f"site_{uuid.uuid4().hex[:12]}"
    await emit(alerting, failure(site))

    async def delivered() -> list[dict]:
        return notifications(alerting, site)

    assert len(await wait_until(delivered, timeout=30, what="delivery after retries")) == 1
    assert alerting.webhook.fail_next == 0


async def test_a_recovery_resolves_the_group_with_one_message(alerting: Platform) -> None:
    site = f"site_{uuid.uuid4().hex[:12]}"
    for _ in range(3):
        await emit(alerting, failure(site))

    async def firing() -> list[dict]:
        return notifications(alerting, site)

    await wait_until(firing, what="the first notification")
    await emit(
        alerting,
        DeploymentSucceeded(
            deployment_id=f"dep_{uuid.uuid4().hex}",
            tenant_id="ten_x",
            site_id=site,
            domain="broken.example",
            generation=2,
            status="live",
        ),
    )

    async def resolved() -> list[dict]:
        return [r for r in notifications(alerting, site) if r["body"]["kind"] == "resolved"]

    [recovered] = await wait_until(resolved, what="the recovered message")
    assert sum(r["body"]["count_since_last"] for r in notifications(alerting, site)) == 3
    assert recovered["body"]["count"] == 3


async def test_tenants_see_their_alert_groups(alerting: Platform, api: httpx.AsyncClient) -> None:
    tenant_id = (await api.get("/v1/me")).json()["tenant"]["id"]
    site = f"site_{uuid.uuid4().hex[:12]}"
    await emit(alerting, failure(site, tenant_id))
    await emit(alerting, failure(f"site_{uuid.uuid4().hex[:12]}", "ten_someone_else"))

    async def listed() -> list[dict]:
        return (await api.get("/v1/alerts")).json()["items"]

    [alert] = await wait_until(listed, what="the alert group")
    assert alert["status"] == "firing"
    assert alert["count"] == 1
    assert alert["site_id"] == site
    assert {"id", "fingerprint", "first_seen", "last_seen", "last_notified_at", "summary"} <= set(
        alert
    )
