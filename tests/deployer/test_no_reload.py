"""Creating sites and deploying content never reloads nginx: the catch-all server follows
the Host header to `<sites>/<domain>/current`. A reload (or restart) replaces nginx's worker
processes, so unchanged worker pids over the whole test prove there was none."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from shared.messages import DeploymentSucceeded
from shared.template_packs import TemplateCatalog
from tests.deployer.conftest import Fetch, Nginx
from tests.deployer.test_deploy import Deployer, make_job


@pytest.fixture
def deployer(catalog: TemplateCatalog, host: LocalHost, settings: DeployerSettings) -> Deployer:
    return Deployer(catalog, host, settings)


def workers(nginx: Nginx) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(nginx.proc.pid)], capture_output=True, text=True)
    return {int(pid) for pid in out.stdout.split()}


async def test_new_sites_and_content_deploys_cause_no_reload(
    deployer: Deployer, nginx: Nginx, fetch: Fetch
) -> None:
    before = workers(nginx)
    assert before, "nginx has worker processes"
    domains = [f"noreload-{uuid.uuid4().hex[:8]}.example" for _ in range(3)]
    for domain in domains:  # three new sites, each with a first deploy and a content change
        for n in (1, 2):
            job = make_job(domain, generation=n, params={"title": f"{domain} v{n}"})
            assert isinstance(await deployer(job), DeploymentSucceeded)
            assert f"<h1>{domain} v{n}</h1>" in (await fetch(domain)).text
    assert workers(nginx) == before
    assert nginx.proc.poll() is None
