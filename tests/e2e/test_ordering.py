"""Many rebuilds of one site at once: one build at a time, the newest request wins, nothing
is lost or half-released."""

from __future__ import annotations

import asyncio

import httpx

from tests.e2e.helpers import landing_params, wait_deployment
from tests.fixtures.platform import Platform


async def test_fifty_concurrent_rebuilds_end_with_the_newest(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    created = await api.post(
        "/v1/sites",
        json={"domain": "busy.example", "template": "landing", "params": landing_params("v-first")},
    )
    site_id = created.json()["id"]

    async def update(i: int) -> dict:
        response = await api.patch(
            f"/v1/sites/{site_id}", json={"params": landing_params(f"v{i:02d}")}
        )
        assert response.status_code == 200, response.text
        return response.json()

    results = await asyncio.gather(*(update(i) for i in range(50)))
    deployment_ids = {r["latest_deployment_id"] for r in results}
    assert len(deployment_ids) == 50  # every request got its own deployment
    everyone = deployment_ids | {created.json()["latest_deployment_id"]}
    await asyncio.gather(*(wait_deployment(api, d, timeout=120) for d in everyone))
    # Read them all again now that every one has finished: a deployment that was live for
    # a moment is superseded once a newer one goes live.
    finals = (await api.get(f"/v1/sites/{site_id}/deployments", params={"limit": 100})).json()[
        "items"
    ]
    assert len(finals) == 51
    by_generation = sorted(finals, key=lambda d: d["generation"])
    newest = by_generation[-1]
    assert newest["generation"] == 51
    assert newest["status"] == "live"
    assert {d["status"] for d in by_generation[:-1]} <= {"superseded"}
    assert not [d for d in finals if d["status"] == "failed"]

    site = (await api.get(f"/v1/sites/{site_id}")).json()
    assert site["live_deployment_id"] == newest["id"]
    page = await platform.fetch_site("busy.example")
    assert newest["id"] in page.text
    title = site["params"]["title"]
    assert f"<title>{title}</title>" in page.text
    # Phases of deployments that ran never overlapped: one build of the site at a time.
    spans = sorted(
        (p["started_at"], p["finished_at"])
        for d in finals
        for p in d["phases"]
        if p["name"] == "build"
    )
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start
