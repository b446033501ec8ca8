"""Rollback, cancel, live logs and the reaper, through the API with the real services."""

from __future__ import annotations

import json

import httpx

from tests.api.test_identity import assert_error
from tests.e2e.helpers import landing_params, wait_deployment
from tests.fixtures.platform import Platform, PlatformFactory, wait_until


async def create_live_site(api: httpx.AsyncClient, domain: str, title: str) -> dict:
    created = await api.post(
        "/v1/sites", json={"domain": domain, "template": "landing", "params": landing_params(title)}
    )
    assert created.status_code == 201, created.text
    dep = await wait_deployment(api, created.json()["latest_deployment_id"])
    assert dep["status"] == "live", dep
    return created.json()


async def test_rollback_serves_the_previous_release_without_rebuilding(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    site = await create_live_site(api, "rollback.example", "Version one")
    first_id = site["latest_deployment_id"]
    assert_error(
        await api.post(f"/v1/sites/{site['id']}/rollback", json={}), 409, "nothing_to_roll_back_to"
    )
    patched = await api.patch(
        f"/v1/sites/{site['id']}", json={"params": landing_params("Version two")}
    )
    assert (await wait_deployment(api, patched.json()["latest_deployment_id"]))["status"] == "live"
    assert "Version two" in (await platform.fetch_site("rollback.example")).text

    rolled = await api.post(f"/v1/sites/{site['id']}/rollback", json={})
    assert rolled.status_code == 202, rolled.text
    assert rolled.json()["reason"] == f"rollback to {first_id}"
    done = await wait_deployment(api, rolled.json()["id"])
    assert done["status"] == "live", done
    assert [p["name"] for p in done["phases"]] == ["activate", "health_check"]  # no build
    page = await platform.fetch_site("rollback.example")
    assert "Version one" in page.text and first_id in page.text
    current = (await api.get(f"/v1/sites/{site['id']}")).json()
    assert current["live_deployment_id"] == rolled.json()["id"]
    assert current["params"]["title"] == "Version one"

    assert_error(
        await api.post(
            f"/v1/sites/{site['id']}/rollback",
            json={"deployment_id": "dep_0000000000000000000000000000"},
        ),
        422,
        "rollback_target_invalid",
    )


async def test_logs_as_json_and_as_a_live_event_stream(api: httpx.AsyncClient) -> None:
    site = await create_live_site(api, "logs.example", "Logged")
    dep_id = site["latest_deployment_id"]
    lines = (await api.get(f"/v1/deployments/{dep_id}/logs")).json()["lines"]
    messages = [line["message"] for line in lines]
    assert messages[0] == "build started"
    assert any(m.startswith("build succeeded in") for m in messages)
    assert messages[-1] == "deployment live"

    events: list[tuple[str, str]] = []
    async with api.stream(
        "GET", f"/v1/deployments/{dep_id}/logs", headers={"Accept": "text/event-stream"}
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        async for raw in stream.aiter_lines():
            if raw.startswith("event: "):
                event = raw[len("event: ") :]
            elif raw.startswith("data: ") and event:
                events.append((event, raw[len("data: ") :]))
    assert [json.loads(data)["message"] for kind, data in events if kind == "log"] == messages
    assert events[-1] == ("end", json.dumps({"status": "live"}))


async def test_cancel_and_reaper_without_a_deployer(platforms: PlatformFactory) -> None:
    # No deployer runs: deployments stay queued until cancelled or reaped.
    platform = await platforms.start("control", services=())
    platform.start_service(
        "api", {"SITEFLEET_DEPLOYMENT_TIMEOUT": "3", "SITEFLEET_REAPER_INTERVAL": "0.5"}
    )
    await platforms.wait_api(platform)
    async with platform.client(await platform.new_tenant()) as api:
        first = (
            await api.post(
                "/v1/sites",
                json={
                    "domain": "cancel.example",
                    "template": "landing",
                    "params": landing_params("Never shown"),
                },
            )
        ).json()
        cancelled = await api.post(f"/v1/deployments/{first['latest_deployment_id']}/cancel")
        assert cancelled.status_code == 202
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["error"]["code"] == "cancelled"
        assert_error(
            await api.post(f"/v1/deployments/{first['latest_deployment_id']}/cancel"),
            409,
            "deployment_finished",
        )

        # A deployer that starts now gets the queued job and must not release it.
        platform.start_service("deployer")
        # Its deployment times out 3 s after creation: post it once the deployer consumes.
        await platform.wait_consuming("deployer.jobs")
        second = (
            await api.post(
                "/v1/sites",
                json={
                    "domain": "after-cancel.example",
                    "template": "landing",
                    "params": landing_params("Shown"),
                },
            )
        ).json()
        assert (await wait_deployment(api, second["latest_deployment_id"]))["status"] == "live"
        assert (await platform.fetch_site("cancel.example")).status_code == 404
        assert not (platform.sites_root / "cancel.example").exists()
        dep = (await api.get(f"/v1/deployments/{first['latest_deployment_id']}")).json()
        assert dep["status"] == "cancelled"

        # With the deployer gone again, a new deployment is reaped after the timeout.
        platform.stop_service("deployer")
        stuck = (
            await api.post(
                f"/v1/sites/{second['id']}/deployments", json={"reason": "never picked up"}
            )
        ).json()

        async def reaped() -> dict | None:
            body = (await api.get(f"/v1/deployments/{stuck['id']}")).json()
            return body if body["status"] == "failed" else None

        failed = await wait_until(reaped, timeout=30, what="the reaper")
        assert failed["error"]["code"] == "deployment_timed_out"
        site = (await api.get(f"/v1/sites/{second['id']}")).json()
        assert site["status"] == "live"  # a failed redeploy leaves the live release serving
        assert (await platform.fetch_site("after-cancel.example")).status_code == 200
