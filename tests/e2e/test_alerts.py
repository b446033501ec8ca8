"""Failure events reach the ops webhook; a webhook that fails is retried, not skipped."""

from __future__ import annotations

from shared import broker
from shared.messages import DeploymentFailed, ErrorInfo
from tests.fixtures.platform import Platform, wait_until


def failure(site_id: str) -> DeploymentFailed:
    return DeploymentFailed(
        deployment_id="dep_0000000000000000000000000000",
        tenant_id="ten_x",
        site_id=site_id,
        domain="broken.example",
        generation=1,
        status="failed",
        error=ErrorInfo(code="health_check_failed", message="nginx answered 502"),
    )


async def emit(platform: Platform, event: DeploymentFailed) -> str:
    connection = await broker.connect(platform.amqp_url, name="tests")
    async with connection:
        publisher = await broker.Publisher.open(connection)
        envelope = event.envelope()
        await publisher.publish_envelope(broker.EVENTS_EXCHANGE, envelope)
        return envelope.message_id


async def test_failure_event_is_posted_to_the_ops_webhook(platform: Platform) -> None:
    event_id = await emit(platform, failure("site_alert_1"))

    async def delivered() -> list[dict]:
        return [r for r in platform.webhook.received if r["body"]["event_id"] == event_id]

    [request] = await wait_until(delivered, what="the webhook delivery")
    body = request["body"]
    assert body["type"] == "deployment.failed"
    assert body["site_id"] == "site_alert_1"
    assert body["error"] == {"code": "health_check_failed", "message": "nginx answered 502"}
    assert "broken.example" in body["summary"]
    assert request["headers"]["X-Sitefleet-Event-Id"] == event_id


async def test_a_failing_webhook_is_retried_until_it_accepts(platform: Platform) -> None:
    platform.webhook.fail_next = 2  # two 503s, then the receiver recovers
    event_id = await emit(platform, failure("site_alert_2"))

    async def delivered() -> list[dict]:
        return [r for r in platform.webhook.received if r["body"]["event_id"] == event_id]

    assert len(await wait_until(delivered, timeout=30, what="delivery after retries")) == 1
    assert platform.webhook.fail_next == 0
