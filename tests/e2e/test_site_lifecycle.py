"""The acceptance path through the API: create a site, watch it go live, see it served by
nginx and in DNS, change it, delete it."""

from __future__ import annotations

import httpx

from tests.e2e.helpers import landing_params, query, wait_deployment
from tests.fixtures.platform import Platform, wait_until


async def test_site_goes_live_changes_and_goes_away(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    domain = "bakery.example"
    created = await api.post(
        "/v1/sites",
        json={"domain": domain, "template": "landing", "params": landing_params("Rosa's Bakery")},
    )
    assert created.status_code == 201, created.text
    site = created.json()
    assert site["status"] == "pending"
    assert site["urls"] == {"site": f"https://{domain}", "origin": f"http://proxy.{domain}"}

    first = await wait_deployment(api, site["latest_deployment_id"])
    assert first["status"] == "live", first
    assert first["generation"] == 1
    assert [p["name"] for p in first["phases"]][:2] == ["build", "upload"]
    assert all(p["status"] == "succeeded" for p in first["phases"])
    assert first["stats"]["files"] > 0 and first["stats"]["bytes"] > 0
    site = (await api.get(f"/v1/sites/{site['id']}")).json()
    assert site["status"] == "live"
    assert site["live_deployment_id"] == first["id"]

    page = await platform.fetch_site(domain)
    assert page.status_code == 200
    assert "Rosa&#39;s Bakery" in page.text or "Rosa's Bakery" in page.text
    assert first["id"] in page.text  # the release marker: nginx serves this release
    for alias in (f"www.{domain}", f"proxy.{domain}"):
        assert (await platform.fetch_site(alias)).status_code == 200

    # DNS: the records of DESIGN.md §5, served by the real PowerDNS and verified.
    async def dns_verified() -> list[dict] | None:
        body = (await api.get(f"/v1/sites/{site['id']}/dns")).json()
        records = body["records"]
        return records if records and all(r["status"] == "verified" for r in records) else None

    records = await wait_until(dns_verified, timeout=60, what="DNS records verified")
    assert {(r["name"], r["type"]) for r in records} == {
        (f"proxy.{domain}.", "A"),
        (f"{domain}.", "ALIAS"),
        (f"www.{domain}.", "CNAME"),
        (f"media.{domain}.", "CNAME"),
    }
    assert (await query(platform.dns_port, f"proxy.{domain}", "A")) == ("NOERROR", ["127.0.0.1"])
    assert (await query(platform.dns_port, domain, "A")) == ("NOERROR", ["127.0.0.1"])
    assert (await query(platform.dns_port, domain, "CNAME"))[1] == []  # never an apex CNAME
    _, www = await query(platform.dns_port, f"www.{domain}", "CNAME")
    _, media = await query(platform.dns_port, f"media.{domain}", "CNAME")
    assert www and www[0].endswith(".cdn.sitefleet.test.")
    assert media and media[0].endswith(".cdn.sitefleet.test.") and media != www

    # PATCH the params: a new deployment, new content served, one live deployment.
    patched = await api.patch(
        f"/v1/sites/{site['id']}", json={"params": landing_params("Rosa's Bakery & Café")}
    )
    assert patched.status_code == 200, patched.text
    second_id = patched.json()["latest_deployment_id"]
    assert second_id != first["id"]
    second = await wait_deployment(api, second_id)
    assert second["status"] == "live" and second["generation"] == 2
    page = await platform.fetch_site(domain)
    assert "Café" in page.text and second_id in page.text
    deps = (await api.get(f"/v1/sites/{site['id']}/deployments")).json()["items"]
    assert [d["id"] for d in deps] == [second_id, first["id"]]  # newest first
    assert [d["status"] for d in deps] == ["live", "superseded"]

    # A manual redeploy with a reason.
    manual = await api.post(f"/v1/sites/{site['id']}/deployments", json={"reason": "CI push"})
    assert manual.status_code == 202
    assert manual.json()["reason"] == "CI push"
    assert (await wait_deployment(api, manual.json()["id"]))["status"] == "live"

    # DELETE: stops being served, DNS records go, then the site disappears.
    deleted = await api.delete(f"/v1/sites/{site['id']}")
    assert deleted.status_code == 202
    assert deleted.json()["status"] == "deleting"
    assert (await api.patch(f"/v1/sites/{site['id']}", json={})).status_code == 409

    async def gone() -> bool:
        return (await api.get(f"/v1/sites/{site['id']}")).status_code == 404

    await wait_until(gone, timeout=60, what="the site to disappear")
    assert (await platform.fetch_site(domain)).status_code == 404
    assert not (platform.sites_root / domain).exists()
    for name, rdtype in ((f"proxy.{domain}", "A"), (domain, "A"), (f"www.{domain}", "CNAME")):
        assert (await query(platform.dns_port, name, rdtype))[1] == []
    assert (await api.get("/v1/sites")).json()["items"] == []
    # The domain is free again.
    again = await api.post(
        "/v1/sites",
        json={"domain": domain, "template": "landing", "params": landing_params("Again")},
    )
    assert again.status_code == 201
