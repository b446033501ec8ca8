"""The four templates a customer can choose, each created through the API with its preview
params, built and released by the real deployer, and fetched through the real nginx: the
landing page, the blog's feed, the portfolio's media URLs, the spa's deep links (its nginx
rule profile made live on the way)."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

from shared.template_packs import TemplateCatalog
from tests.e2e.helpers import wait_deployment
from tests.fixtures.platform import PlatformFactory
from tests.templates.conftest import TEMPLATES


async def test_every_template_goes_live_through_the_api(platforms: PlatformFactory) -> None:
    platform = await platforms.start("templates", services=("api", "deployer"))
    catalog = TemplateCatalog(TEMPLATES)
    tag = uuid.uuid4().hex[:8]
    domains = {name: f"{name}-{tag}.example" for name in ("landing", "blog", "portfolio", "spa")}
    async with platform.client(await platform.new_tenant()) as api:
        created = {}
        for name, domain in domains.items():
            response = await api.post(
                "/v1/sites",
                json={
                    "domain": domain,
                    "template": name,
                    "params": catalog.get(name).preview_params,
                },
            )
            assert response.status_code == 201, response.text
            created[name] = response.json()
        for name, site in created.items():
            dep = await wait_deployment(api, site["latest_deployment_id"], timeout=120)
            assert dep["status"] == "live", (name, dep)

    landing = await platform.fetch_site(domains["landing"], "/")
    assert landing.status_code == 200
    assert catalog.get("landing").preview_params["title"] in landing.text

    blog = catalog.get("blog").preview_params
    feed = await platform.fetch_site(domains["blog"], "/feed.xml")
    items = ET.fromstring(feed.content).findall("channel/item")
    assert feed.status_code == 200 and len(items) == len(blog["posts"])

    portfolio = await platform.fetch_site(domains["portfolio"], "/")
    for image in catalog.get("portfolio").preview_params["images"]:
        assert f'src="https://media.{domains["portfolio"]}/{image["path"]}"' in portfolio.text

    spa = domains["spa"]
    shell = await platform.fetch_site(spa, "/")
    settings_page = await platform.fetch_site(spa, "/app/settings")
    assert settings_page.status_code == 200 and settings_page.text != shell.text
    deep = await platform.fetch_site(spa, "/app/settings/a-view-only-the-browser-knows")
    assert deep.status_code == 200 and deep.text == shell.text  # history fallback
    assert deep.headers["cache-control"] == "no-cache"
