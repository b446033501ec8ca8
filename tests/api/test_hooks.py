"""Deploy hooks: a secret URL a customer's CI calls; rate limited per hook."""

from __future__ import annotations

import httpx

from tests.api.test_identity import assert_error
from tests.e2e.helpers import landing_params, wait_deployment
from tests.fixtures.platform import Platform


async def test_a_hook_url_starts_a_deployment_and_is_rate_limited(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    site = (
        await api.post(
            "/v1/sites",
            json={
                "domain": "hooked.example",
                "template": "landing",
                "params": landing_params("Hooked"),
            },
        )
    ).json()
    created = await api.post(f"/v1/sites/{site['id']}/hooks", json={"name": "main branch"})
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["url"].startswith(f"{platform.api_url}/hooks/sfh_")
    listed = (await api.get(f"/v1/sites/{site['id']}/hooks")).json()["items"]
    assert [(h["id"], h["name"], h["last_used_at"]) for h in listed] == [
        (hook["id"], "main branch", None)
    ]
    assert all("url" not in h for h in listed)  # the secret is shown once

    async with httpx.AsyncClient() as ci:  # no Authorization header
        called = await ci.post(hook["url"])
        assert called.status_code == 202, called.text
        deployment = await wait_deployment(api, called.json()["deployment_id"])
        assert deployment["status"] == "live"
        assert deployment["reason"] == "deploy hook 'main branch'"

        # The default bucket: a burst of 3, then one call per 10 s. The first call used a
        # token; waiting for its deployment may have earned one back (a slow machine). Calls
        # in quick succession then get 202 until the bucket is empty, and 429 after.
        statuses = [(await ci.post(hook["url"])).status_code for _ in range(4)]
        accepted = statuses.count(202)
        assert 2 <= accepted <= 3 and statuses == [202] * accepted + [429] * (4 - accepted)
        limited = await ci.post(hook["url"])
        assert_error(limited, 429, "rate_limited")
        assert int(limited.headers["Retry-After"]) >= 1

        assert_error(
            await ci.post(f"{platform.api_url}/hooks/sfh_not-a-hook"), 404, "hook_not_found"
        )

    other = await platform.new_tenant()
    async with platform.client(other) as intruder:
        assert_error(await intruder.get(f"/v1/sites/{site['id']}/hooks/{hook['id']}"), 404)
        assert_error(await intruder.delete(f"/v1/sites/{site['id']}/hooks/{hook['id']}"), 404)
    assert (await api.get(f"/v1/sites/{site['id']}/hooks/{hook['id']}")).json()["last_used_at"]
    assert (await api.delete(f"/v1/sites/{site['id']}/hooks/{hook['id']}")).status_code == 204
    async with httpx.AsyncClient() as ci:
        assert_error(await ci.post(hook["url"]), 404)
