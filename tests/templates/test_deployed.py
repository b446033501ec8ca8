"""The blog, portfolio and spa packs deployed by the real deployer (render, sandboxed build,
upload, activation, health check) and fetched through a real nginx."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from shared.messages import DeploymentSucceeded
from shared.template_packs import TemplateCatalog
from tests.deployer.conftest import Fetch, Nginx
from tests.deployer.test_deploy import Deployer, make_job
from tests.templates.conftest import TEMPLATES


@pytest.fixture
def deployer(nginx: Nginx, sites_root: Path, host: LocalHost, tmp_path: Path) -> Deployer:
    settings = DeployerSettings(
        sites_root=sites_root,
        http_host="127.0.0.1",
        http_port=nginx.port,
        work_root=tmp_path / "work",
        templates_dir=TEMPLATES,
        health_check_timeout=5.0,
        build_timeout=30,
        max_release_bytes=20 * 1024 * 1024,
    )
    # The spa needs its nginx rule profile: this host may run the test nginx.
    host.configure_nginx(nginx.command, f"127.0.0.1:{nginx.port}", reload_window=0.5)
    return Deployer(TemplateCatalog(TEMPLATES), host, settings)


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
async def test_the_blog_goes_live_with_clean_urls_and_its_feed(
    deployer: Deployer,
    domain: str,
    fetch: Fetch,
    version: str,
) -> None:
    preview = deployer.catalog.get("blog", version).preview_params
    job = make_job(domain, template="blog", template_version=version, params=preview)

    final = await deployer(job)

    assert isinstance(final, DeploymentSucceeded), final
    home = await fetch(domain, "/")
    assert home.status_code == 200 and f'content="{job.deployment_id}"' in home.text
    for post in preview["posts"]:
        page = await fetch(domain, f"/posts/{post['slug']}/")
        assert page.status_code == 200 and f'<h1 id="page-title">{post["title"]}</h1>' in page.text
    assert (await fetch(domain, "/tags/news/")).status_code == 200
    feed = await fetch(domain, "/feed.xml")
    items = ET.fromstring(feed.content).findall("channel/item")
    assert len(items) == len(preview["posts"])
    assert all(i.findtext("link", "").startswith(f"https://{domain}/posts/") for i in items)
    missing = await fetch(domain, "/posts/no-such-post/")
    assert missing.status_code == 404 and "Page not found" in missing.text
    assert (await fetch(domain, "/build/site.json")).status_code == 404


async def test_the_portfolio_goes_live_with_media_urls(
    deployer: Deployer,
    domain: str,
    fetch: Fetch,
) -> None:
    preview = deployer.catalog.get("portfolio", "1.0.0").preview_params
    job = make_job(domain, template="portfolio", params=preview)

    final = await deployer(job)

    assert isinstance(final, DeploymentSucceeded), final
    home = (await fetch(domain, "/")).text
    for image in preview["images"]:
        assert f'src="https://media.{domain}/{image["path"]}"' in home


async def test_the_spa_goes_live_with_a_page_per_route_and_hashed_assets(
    deployer: Deployer,
    domain: str,
    fetch: Fetch,
) -> None:
    preview = deployer.catalog.get("spa", "1.0.0").preview_params
    job = make_job(domain, template="spa", params=preview)

    final = await deployer(job)

    assert isinstance(final, DeploymentSucceeded), final
    home = await fetch(domain, "/")
    assert home.status_code == 200 and f'content="{job.deployment_id}"' in home.text
    for route in preview["routes"]:
        # Each route is a directory page of the release (nginx answers /app with a redirect
        # to /app/ unless the site's profile serves /app/index.html directly).
        page = await fetch(domain, route["path"].rstrip("/") + "/")
        assert page.status_code == 200, route["path"]
        assert f'<h1 id="page-heading" tabindex="-1">{route["heading"]}</h1>' in page.text
        assert f'content="{job.deployment_id}"' in page.text
    refs = re.findall(r'(?:src|href)="(/assets/[^"]+)"', home.text)
    assert len(refs) == 2
    for ref in refs:
        asset = await fetch(domain, ref)
        assert asset.status_code == 200
        assert asset.headers["content-type"].split(";")[0] in ("text/css", "application/javascript")
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert (await fetch(domain, "/assets/app.js")).status_code == 404  # only hashed ones
    # The build's inputs are not in the release: the address gets the app shell.
    assert (await fetch(domain, "/build/pages.json")).text == home.text
    # The spa profile: a deep link (here a client-side path no page was rendered for) is
    # answered with the app shell, never cached, as are the route pages.
    deep = await fetch(domain, "/app/settings/some-client-side-view")
    assert deep.status_code == 200 and deep.text == home.text
    assert deep.headers["cache-control"] == home.headers["cache-control"] == "no-cache"
    settings_page = await fetch(domain, "/app/settings")
    assert settings_page.status_code == 200 and "no-cache" == settings_page.headers["cache-control"]
