from pathlib import Path

import pytest

from cli.devstack import procs
from services.deployer.health import check_release, release_marker
from services.deployer.release import LocalHost
from shared.errors import Transient
from shared.ids import new_id
from tests.deployer.conftest import Nginx


async def publish(host: LocalHost, domain: str, release: str, index: str, tmp: Path) -> None:
    src = tmp / release
    src.mkdir()
    (src / "index.html").write_text(index)
    await host.upload(domain, release, src)
    await host.activate(domain, release)


def test_release_marker_is_read_from_the_html() -> None:
    page = '<html><head><META content="dep_1" NAME="sitefleet-release"/></head></html>'
    assert release_marker(page) == "dep_1"
    assert release_marker("<html><head><title>x</title></head></html>") is None
    assert release_marker('<meta name="description" content="dep_1">') is None


async def test_the_served_release_is_healthy(
    host: LocalHost, domain: str, nginx: Nginx, tmp_path: Path
) -> None:
    release = new_id("dep")
    await publish(
        host, domain, release, f'<meta name="sitefleet-release" content="{release}">ok', tmp_path
    )
    problem = await check_release(
        domain, release, http_host="127.0.0.1", http_port=nginx.port, request_timeout=5
    )
    assert problem is None


async def test_a_page_of_another_release_is_unhealthy(
    host: LocalHost, domain: str, nginx: Nginx, tmp_path: Path
) -> None:
    release, other = new_id("dep"), new_id("dep")
    await publish(
        host, domain, release, f'<meta name="sitefleet-release" content="{other}">', tmp_path
    )
    problem = await check_release(
        domain, release, http_host="127.0.0.1", http_port=nginx.port, request_timeout=5
    )
    assert problem is not None and other in problem


async def test_a_site_without_a_front_page_is_unhealthy(domain: str, nginx: Nginx) -> None:
    problem = await check_release(
        domain, new_id("dep"), http_host="127.0.0.1", http_port=nginx.port, request_timeout=5
    )
    assert problem is not None and "HTTP 404" in problem


async def test_a_web_host_that_does_not_answer_is_transient(domain: str) -> None:
    with pytest.raises(Transient) as info:
        await check_release(
            domain,
            new_id("dep"),
            http_host="127.0.0.1",
            http_port=procs.free_port(),
            request_timeout=5,
        )
    assert info.value.code == "web_host_unreachable"
