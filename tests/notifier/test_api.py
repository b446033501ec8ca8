"""/v1/notification-channels through the running API: create (secret shown once), list,
delete, tenant isolation, and validation errors with the API's error body."""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_identity import assert_error
from tests.fixtures.platform import Platform

HOOK = {"type": "webhook", "target": "https://hooks.example.com/sitefleet", "events": ["*"]}


async def test_channels_are_created_listed_and_deleted_per_tenant(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    created = await api.post("/v1/notification-channels", json=HOOK)
    assert created.status_code == 201, created.text
    channel = created.json()
    assert channel["secret"] and len(channel["secret"]) >= 32
    assert (channel["type"], channel["target"], channel["events"]) == (
        "webhook",
        HOOK["target"],
        ["*"],
    )
    slack = await api.post(
        "/v1/notification-channels",
        json={
            "type": "slack",
            "target": "https://hooks.slack.com/services/T0/B0/x",
            "events": ["deployment.failed", "dns.failed"],
        },
    )
    assert slack.status_code == 201 and slack.json()["secret"] is None
    email = await api.post(
        "/v1/notification-channels",
        json={"type": "email", "target": "ops@bakery.example", "events": ["deployment.parked"]},
    )
    assert email.status_code == 201

    listed = (await api.get("/v1/notification-channels")).json()
    assert {c["id"] for c in listed["items"]} == {
        channel["id"],
        slack.json()["id"],
        email.json()["id"],
    }
    assert all("secret" not in c for c in listed["items"])  # shown once only

    other_token = await platform.new_tenant()
    async with platform.client(other_token) as other:
        assert (await other.get("/v1/notification-channels")).json()["items"] == []
        assert_error(await other.delete(f"/v1/notification-channels/{channel['id']}"), 404)

    assert (await api.delete(f"/v1/notification-channels/{channel['id']}")).status_code == 204
    assert_error(await api.delete(f"/v1/notification-channels/{channel['id']}"), 404)
    remaining = (await api.get("/v1/notification-channels")).json()["items"]
    assert channel["id"] not in {c["id"] for c in remaining}


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({**HOOK, "type": "pager"}, "type", "validation_failed"),
        ({**HOOK, "events": []}, "events", "validation_failed"),
        ({**HOOK, "events": ["everything.exploded"]}, "events", "validation_failed"),
        ({**HOOK, "target": "ftp://hooks.example.com/x"}, "target", "validation_failed"),
        ({**HOOK, "target": "http://127.0.0.1:8080/hook"}, "target", "target_forbidden"),
        ({**HOOK, "target": "http://169.254.169.254/latest"}, "target", "target_forbidden"),
        ({**HOOK, "target": "http://[::1]/hook"}, "target", "target_forbidden"),
        ({**HOOK, "target": "http://localhost/hook"}, "target", "target_forbidden"),
        ({**HOOK, "type": "slack", "target": "http://hooks.slack.com/x"}, "target", None),
        ({**HOOK, "type": "email", "target": "not an address"}, "target", "validation_failed"),
        ({**HOOK, "extra": 1}, "extra", "validation_failed"),
    ],
)
async def test_bad_channels_are_422_naming_the_field(
    api: httpx.AsyncClient, body: dict, field: str, code: str | None
) -> None:
    error = assert_error(await api.post("/v1/notification-channels", json=body), 422, code)
    assert field in {f["field"] for f in error["details"]["fields"]}
    assert (await api.get("/v1/notification-channels")).json()["items"] == []


async def test_channels_need_a_token(platform: Platform) -> None:
    async with platform.client() as anonymous:
        assert_error(await anonymous.get("/v1/notification-channels"), 401)
        assert_error(await anonymous.post("/v1/notification-channels", json=HOOK), 401)
        assert_error(await anonymous.get("/v1/alerts"), 401)
