"""Template rollouts end to end, on a platform whose templates directory holds the test
packs of tests/rollouts/packs (``probe`` 1.1.0's build step fails for sites whose
``flavor`` is ``cursed``, and renames ``title`` to ``heading`` of at most 40 characters):
canary then waves, a halt at the failure threshold with every site still serving through
nginx (the failed ones on their old version), the ops alert, pause / resume / abort, a
restart of the API mid-rollout, and the bad input."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api import identity
from shared.db import create_engine, create_sessionmaker
from tests.fixtures.components import world_readable_tempdir
from tests.fixtures.platform import Platform, PlatformFactory, wait_until

PACKS = Path(__file__).parent / "packs"
FAST = {
    "SITEFLEET_ROLLOUT_DRIVER_INTERVAL": "1",
    "SITEFLEET_GROUP_WAIT": "0.2",
    "SITEFLEET_GROUP_INTERVAL": "0.5",
    "SITEFLEET_POLL_INTERVAL": "0.1",
    "SITEFLEET_DELIVERY_POLL_INTERVAL": "0.2",
}


def copy_probe(root: Path, name: str) -> None:
    """Both probe versions under ``root`` as template ``name``."""
    for version in ("1.0.0", "1.1.0"):
        target = root / name / version
        shutil.copytree(PACKS / "probe" / version, target)
        manifest = json.loads((target / "manifest.json").read_text())
        (target / "manifest.json").write_text(json.dumps({**manifest, "name": name}))


@pytest.fixture(scope="module")
def templates_root() -> Iterator[Path]:
    """The platform's templates directory: the probe packs as three templates."""
    templates = world_readable_tempdir("rollout-templates")
    for name in ("probe", "steady", "frozen"):
        copy_probe(templates, name)
    yield templates
    shutil.rmtree(templates, ignore_errors=True)


@pytest.fixture(scope="module")
async def fleet(platforms: PlatformFactory, templates_root: Path) -> AsyncIterator[Platform]:
    platform = await platforms.start(
        "rollouts",
        services=("api", "deployer", "notifier"),
        extra_env={"SITEFLEET_TEMPLATES_DIR": str(templates_root), **FAST},
    )
    yield platform
    # Free the services' database connections now, not at the end of the session.
    for name in list(platform.procs):
        platform.stop_service(name)


async def ops_token(platform: Platform) -> str:
    engine = create_engine(platform.database_url, application_name="tests", pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            _, secret = await identity.create_ops_token(session, f"ops-{uuid.uuid4().hex[:6]}")
            return secret
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
async def ops(fleet: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with fleet.client(await ops_token(fleet)) as client:
        yield client


@pytest.fixture(scope="module")
async def tenant(fleet: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with fleet.client(await fleet.new_tenant()) as client:
        yield client


async def create_sites(
    api: httpx.AsyncClient, template: str, params: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One site per params, in this order (a rollout takes the oldest first), all live."""
    tag = uuid.uuid4().hex[:6]
    sites = []
    for n, p in enumerate(params):
        response = await api.post(
            "/v1/sites",
            json={
                "domain": f"s{n}-{tag}.{template}.example",
                "template": template,
                "template_version": "1.0.0",
                "params": p,
            },
        )
        assert response.status_code == 201, response.text
        sites.append(response.json())

    async def all_live() -> bool:
        states = [(await api.get(f"/v1/sites/{s['id']}")).json()["status"] for s in sites]
        return all(state == "live" for state in states)

    await wait_until(all_live, timeout=120, what="every site to go live")
    return sites


async def rollout(ops: httpx.AsyncClient, rollout_id: str) -> dict[str, Any]:
    response = await ops.get(f"/v1/rollouts/{rollout_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def rollout_sites(ops: httpx.AsyncClient, rollout_id: str) -> dict[str, dict[str, Any]]:
    items = (await ops.get(f"/v1/rollouts/{rollout_id}/sites", params={"limit": 500})).json()
    return {item["site_id"]: item for item in items["items"]}


async def settled(api: httpx.AsyncClient, site_id: str) -> dict[str, Any] | None:
    """The site once its latest deployment finished (and so nothing is in flight)."""
    site: dict[str, Any] = (await api.get(f"/v1/sites/{site_id}")).json()
    dep = (await api.get(f"/v1/deployments/{site['latest_deployment_id']}")).json()
    return site if dep["status"] not in ("queued", "building", "uploading", "activating") else None


async def served_version(platform: Platform, domain: str) -> str:
    """Which probe version nginx serves for the site; a page must be served at all."""
    response = await platform.fetch_site(domain)
    assert response.status_code == 200, (domain, response.status_code)
    for version in ("1.0.0", "1.1.0"):
        if f"probe {version}" in response.text:
            return version
    raise AssertionError(f"{domain} serves no probe page: {response.text[:200]}")


async def test_a_rollout_halts_at_the_threshold_and_every_site_keeps_serving(
    fleet: Platform, ops: httpx.AsyncClient, tenant: httpx.AsyncClient
) -> None:
    # canary 1, waves of 10: wave 0 = site 0, wave 1 = sites 1-10, wave 2 = 11-20, 21-29.
    params: list[dict[str, Any]] = [{"title": f"Shop {n}"} for n in range(30)]
    params[5]["flavor"] = "cursed"  # wave 1: 1 of 10 fails, ratio 0.1 is not above 0.1
    params[12]["flavor"] = params[17]["flavor"] = "cursed"  # wave 2: 2 of 9 fail -> halt
    params[14]["title"] = "A title far too long for the heading of 1.1.0"  # skipped
    sites = await create_sites(tenant, "probe", params)

    response = await ops.post(
        "/v1/templates/probe/rollouts",
        json={"to_version": "1.1.0", "canary": 1, "batch_size": 10, "max_failure_ratio": 0.1},
    )
    assert response.status_code == 202, response.text
    started = response.json()
    assert (started["template"], started["from_version"], started["to_version"]) == (
        "probe",
        None,
        "1.1.0",
    )
    assert started["status"] == "running"

    async def halted() -> dict[str, Any] | None:
        body = await rollout(ops, started["id"])
        return body if body["status"] not in ("running", "paused") else None

    final = await wait_until(halted, timeout=180, what="the rollout to stop")
    assert final["status"] == "halted", final
    assert final["counts"] == {
        "total": 30,
        "pending": 9,
        "succeeded": 17,
        "failed": 3,
        "skipped": 1,
    }

    per_site = await rollout_sites(ops, started["id"])
    cursed = {sites[n]["id"] for n in (5, 12, 17)}
    for n, site in enumerate(sites):
        state = per_site[site["id"]]
        expected = (
            "failed"
            if site["id"] in cursed
            else "skipped"
            if n == 14
            else "pending"
            if n >= 21
            else "succeeded"
        )
        assert state["status"] == expected, (n, state)
    assert all("cursed" in per_site[s]["reason"] for s in cursed)
    assert "heading" in per_site[sites[14]["id"]]["reason"]

    for n, site in enumerate(sites):
        now = await wait_until(
            lambda s=site: settled(tenant, s["id"]), timeout=60, what="deployments to finish"
        )
        upgraded = per_site[site["id"]]["status"] == "succeeded"
        assert now["template_version"] == ("1.1.0" if upgraded else "1.0.0"), (n, now)
        assert now["status"] == "live"
        if upgraded:  # migrated: title renamed to heading, the new motto filled in
            assert now["params"]["heading"] == params[n]["title"]
            assert now["params"]["motto"] == "Still here"
        else:  # the failed ones are back on their old params too
            assert now["params"]["title"] == params[n]["title"]
        assert await served_version(fleet, site["domain"]) == now["template_version"]
    for site_id in cursed:  # put back by a rollback deployment that is live
        restore = per_site[site_id]["restore_deployment_id"]
        assert (await tenant.get(f"/v1/sites/{site_id}")).json()["latest_deployment_id"] == restore
        restored = (await tenant.get(f"/v1/deployments/{restore}")).json()
        assert (restored["status"], restored["template_version"]) == ("live", "1.0.0")

    async def halt_alerts() -> list[dict[str, Any]]:
        return [r for r in fleet.webhook.received if r["body"].get("type") == "rollout.halted"]

    [alert] = await wait_until(halt_alerts, timeout=30, what="the rollout.halted alert")
    assert "probe" in alert["body"]["summary"]
    assert alert["body"]["error"]["code"] == "rollout_halted"


async def test_pause_resume_abort_and_an_api_restart_mid_rollout(
    platforms: PlatformFactory,
    fleet: Platform,
    ops: httpx.AsyncClient,
    tenant: httpx.AsyncClient,
) -> None:
    sites = await create_sites(tenant, "steady", [{"title": f"Cafe {n}"} for n in range(10)])
    body = {"to_version": "1.1.0", "from_version": "1.0.0", "canary": 1, "batch_size": 3}
    # No deployer while the rollout starts: its canary cannot finish before the pause.
    fleet.stop_service("deployer")
    started = (await ops.post("/v1/templates/steady/rollouts", json=body)).json()
    paused = await ops.post(f"/v1/rollouts/{started['id']}/pause")
    assert paused.status_code == 202
    assert paused.json()["status"] == "paused"

    # One rollout per template at a time, paused or not.
    second = await ops.post("/v1/templates/steady/rollouts", json=body)
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "rollout_in_progress"
    fleet.start_service("deployer")

    async def canary_done() -> bool:
        return (await rollout(ops, started["id"]))["counts"]["succeeded"] == 1

    await wait_until(canary_done, timeout=60, what="the canary to finish")
    fleet.stop_service("api")  # paused across a restart: it stays paused
    fleet.start_service("api")
    await platforms.wait_api(fleet)
    paused_state = await rollout(ops, started["id"])
    assert paused_state["status"] == "paused"
    assert paused_state["counts"]["pending"] == 9
    assert all(
        s["status"] == "pending"
        for s in (await rollout_sites(ops, started["id"])).values()
        if s["wave"] > 0
    )

    resumed = await ops.post(f"/v1/rollouts/{started['id']}/resume")
    assert resumed.status_code == 202
    assert resumed.json()["status"] == "running"
    fleet.stop_service("api")  # wave 1 is deploying: its outcomes wait in the queue
    fleet.start_service("api")
    await platforms.wait_api(fleet)
    assert (await ops.post(f"/v1/rollouts/{started['id']}/pause")).status_code == 202

    async def nothing_in_flight() -> bool:
        states = (await rollout_sites(ops, started["id"])).values()
        return not any(s["status"] == "deploying" for s in states)

    await wait_until(nothing_in_flight, timeout=60, what="running upgrades to finish")
    # Wave 1's outcomes, reported while the API was down, were recorded after its restart.
    assert (await rollout(ops, started["id"]))["counts"]["succeeded"] >= 4
    aborted = await ops.post(f"/v1/rollouts/{started['id']}/abort")
    assert aborted.status_code == 202
    final = aborted.json()
    assert final["status"] == "aborted"
    assert final["counts"]["pending"] > 0
    assert final["counts"]["failed"] == 0
    for action in ("resume", "pause", "abort"):
        response = await ops.post(f"/v1/rollouts/{started['id']}/{action}")
        assert response.status_code == 409, action

    for site in sites:
        now = await wait_until(lambda s=site: settled(tenant, s["id"]), what="settled")
        assert await served_version(fleet, site["domain"]) == now["template_version"]

    # A new rollout picks up where the aborted one left off.
    again = await ops.post("/v1/templates/steady/rollouts", json={**body, "batch_size": 10})
    assert again.status_code == 202
    assert again.json()["counts"]["total"] == final["counts"]["pending"]

    async def completed() -> bool:
        return (await rollout(ops, again.json()["id"]))["status"] == "completed"

    await wait_until(completed, timeout=60, what="the second rollout to complete")
    for site in sites:
        assert await served_version(fleet, site["domain"]) == "1.1.0"


async def test_rollouts_are_for_ops_tokens_only(fleet: Platform, tenant: httpx.AsyncClient) -> None:
    response = await tenant.post("/v1/templates/probe/rollouts", json={"to_version": "1.1.0"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ops_scope_required"
    assert (await tenant.get("/v1/rollouts/rol_0123456789abcdef")).status_code == 403
    async with fleet.client() as anon:
        assert (await anon.get("/v1/rollouts/rol_0123456789abcdef")).status_code == 401
        spec = (await anon.get("/openapi.json")).json()
    assert {"/v1/templates/{name}/rollouts", "/v1/rollouts/{rollout_id}/abort"} <= set(
        spec["paths"]
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to_version": "9.9.9"}, "to_version"),
        ({"to_version": "1.1.0", "from_version": "0.0.1"}, "from_version"),
        ({"to_version": "1.1.0", "from_version": "1.1.0"}, "from_version"),
        ({"to_version": "1.1.0", "batch_size": 0}, "batch_size"),
        ({"to_version": "1.1.0", "batch_size": -3}, "batch_size"),
        ({"to_version": "1.1.0", "batch_size": "ten"}, "batch_size"),
        ({"to_version": "1.1.0", "max_failure_ratio": 1.5}, "max_failure_ratio"),
        ({"to_version": "1.1.0", "max_failure_ratio": -0.1}, "max_failure_ratio"),
        ({"to_version": "1.1.0", "canary": -1}, "canary"),
        ({"to_version": "latest"}, "to_version"),
        ({}, "to_version"),
    ],
)
async def test_bad_rollout_requests_are_422_naming_the_field(
    ops: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await ops.post("/v1/templates/probe/rollouts", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert any(field in f["field"] for f in error["details"]["fields"]), error


async def test_a_rollout_of_a_template_that_does_not_exist_is_404(ops: httpx.AsyncClient) -> None:
    response = await ops.post("/v1/templates/nosuch/rollouts", json={"to_version": "1.0.0"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "template_not_found"
    assert (await ops.get("/v1/rollouts/rol_0123456789abcdef")).status_code == 404


async def test_a_pack_edited_after_publishing_is_never_deployed(
    fleet: Platform, tenant: httpx.AsyncClient, templates_root: Path
) -> None:
    [site] = await create_sites(tenant, "frozen", [{"title": "Ice"}])
    page = templates_root / "frozen" / "1.0.0" / "src" / "index.html.j2"
    page.write_text(page.read_text().replace("<h1>", "<h1>Edited in place: "))

    response = await tenant.post(f"/v1/sites/{site['id']}/deployments", json={})
    assert response.status_code == 202
    dep = await wait_until(
        lambda: settled(tenant, site["id"]), timeout=60, what="the redeploy to finish"
    )
    failed = (await tenant.get(f"/v1/deployments/{dep['latest_deployment_id']}")).json()
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "template_pack_changed"
    served = await fleet.fetch_site(site["domain"])
    assert served.status_code == 200
    assert "Edited in place" not in served.text
