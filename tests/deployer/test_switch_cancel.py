"""A deployment cancelled once its switch has begun (here: as its health check starts,
``current`` already on the new release; by a SIGTERM handing jobs back or a cancel
request) still runs the switch to its outcome: a release that fails its health check is
switched back, never left serving unchecked (a redelivered job would take it for the
release that served before and have nothing to roll back to)."""

from __future__ import annotations

import asyncio

import pytest

from services.deployer.health import release_marker
from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from shared.messages import DeploymentFailed, DeploymentReport, DeploymentSucceeded
from shared.template_packs import TemplateCatalog
from tests.deployer.conftest import Fetch
from tests.deployer.test_deploy import Deployer, make_job


@pytest.fixture
def deployer(catalog: TemplateCatalog, host: LocalHost, settings: DeployerSettings) -> Deployer:
    return Deployer(catalog, host, settings)


async def test_a_cancel_during_the_switch_still_rolls_a_broken_release_back(
    deployer: Deployer, domain: str, fetch: Fetch, host: LocalHost
) -> None:
    live = make_job(domain, params={"title": "Still here"})
    assert isinstance(await deployer(live), DeploymentSucceeded)

    broken = make_job(domain, generation=2, template="noindex")  # nginx cannot serve "/"
    cancelled_at: list[str] = []

    async def report(event: DeploymentReport) -> None:
        deployer.reports.append(event)
        if event.phases and event.phases[-1].name == "health_check" and not cancelled_at:
            # `current` has just moved to the broken release; its check is starting.
            cancelled_at.append(event.phases[-1].name)
            deploying.cancel()  # as Consumer.stop does to a job it hands back

    deployer.report = report  # type: ignore[method-assign]
    deploying = asyncio.create_task(deployer(broken))
    final = await deploying  # the cancel is withdrawn: the switch ran to its outcome

    assert cancelled_at == ["health_check"]
    assert isinstance(final, DeploymentFailed)
    assert final.error is not None and final.error.code == "health_check_failed"
    assert live.deployment_id in final.error.message
    assert await host.current_release(domain) == live.deployment_id
    page = await fetch(domain)
    assert "Still here" in page.text and release_marker(page.text) == live.deployment_id


async def test_a_cancel_during_the_switch_of_a_good_release_lets_it_go_live(
    deployer: Deployer, domain: str, fetch: Fetch, host: LocalHost
) -> None:
    job = make_job(domain, params={"title": "Switched"})

    async def report(event: DeploymentReport) -> None:
        deployer.reports.append(event)
        if event.phases and event.phases[-1].name == "health_check":
            deploying.cancel()

    deployer.report = report  # type: ignore[method-assign]
    deploying = asyncio.create_task(deployer(job))
    final = await deploying

    assert isinstance(final, DeploymentSucceeded)  # reported: the API records it live
    assert await host.current_release(domain) == job.deployment_id
    assert release_marker((await fetch(domain)).text) == job.deployment_id
