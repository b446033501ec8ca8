import asyncio
from pathlib import Path
from typing import Any

import pytest

from cli.devstack import procs
from services.deployer.deploy import deploy
from services.deployer.fence import Fenced
from services.deployer.health import release_marker
from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from shared.errors import Transient
from shared.ids import new_id
from shared.messages import (
    DeploymentFailed,
    DeploymentProgressed,
    DeploymentReport,
    DeploymentRequested,
    DeploymentSucceeded,
    DeploymentSuperseded,
)
from shared.template_packs import TemplateCatalog
from tests.deployer.conftest import Fetch


def make_job(domain: str, **changes: Any) -> DeploymentRequested:
    fields: dict[str, Any] = {
        "deployment_id": new_id("dep"),
        "tenant_id": "ten_1",
        "site_id": "site_1",
        "domain": domain,
        "generation": 1,
        "template": "demo",
        "template_version": "1.0.0",
        "params": {"title": "Harbour Lane"},
    }
    return DeploymentRequested(**{**fields, **changes})


async def proceed(job: DeploymentRequested) -> Fenced | None:
    return None


class Deployer:
    """deploy() with everything real but the reports (kept in a list) and the fence."""

    def __init__(self, catalog: TemplateCatalog, host: LocalHost, settings: DeployerSettings):
        self.catalog, self.host, self.settings = catalog, host, settings
        self.reports: list[DeploymentReport] = []

    async def report(self, event: DeploymentReport) -> None:
        self.reports.append(event)

    async def __call__(self, job: DeploymentRequested, fence: Any = proceed) -> DeploymentReport:
        self.reports.clear()
        await deploy(
            job,
            catalog=self.catalog,
            host=self.host,
            report=self.report,
            fence=fence,
            settings=self.settings,
        )
        return self.reports[-1] if self.reports else None  # type: ignore[return-value]


@pytest.fixture
def deployer(catalog: TemplateCatalog, host: LocalHost, settings: DeployerSettings) -> Deployer:
    return Deployer(catalog, host, settings)


async def test_a_deployment_goes_live_and_reports_each_phase(
    deployer: Deployer, domain: str, fetch: Fetch, settings: DeployerSettings
) -> None:
    job = make_job(domain)

    final = await deployer(job)

    assert isinstance(final, DeploymentSucceeded)
    assert [type(r) for r in deployer.reports[:-1]] == [DeploymentProgressed] * 4
    assert [r.status for r in deployer.reports] == [
        "building",
        "uploading",
        "activating",
        "activating",
        "live",
    ]
    assert [(p.name, p.status) for p in final.phases] == [
        ("build", "succeeded"),
        ("upload", "succeeded"),
        ("activate", "succeeded"),
        ("health_check", "succeeded"),
    ]
    assert all(p.finished_at is not None and p.finished_at >= p.started_at for p in final.phases)
    # Earlier reports are snapshots: the build phase was still running when reported.
    assert deployer.reports[0].phases[0].status == "running"
    assert (final.deployment_id, final.site_id, final.generation) == (
        job.deployment_id,
        "site_1",
        1,
    )

    release_dir = settings.sites_root / domain / "releases" / job.deployment_id
    files = [p for p in release_dir.rglob("*") if p.is_file()]
    assert final.stats is not None
    assert final.stats.files == len(files) == 5
    assert final.stats.bytes == sum(p.stat().st_size for p in files)
    # The object store is shared by the session's sites: assets another test already
    # uploaded are linked, not sent again (tests/deployer/test_objects.py counts exactly).
    assert 3 <= final.stats.uploaded_files <= final.stats.files

    page = await fetch(domain)
    assert "<h1>Harbour Lane</h1>" in page.text
    assert release_marker(page.text) == job.deployment_id
    assert not (settings.work_root / job.deployment_id).exists()


async def test_a_second_deployment_replaces_the_first_and_old_releases_are_pruned(
    deployer: Deployer, domain: str, fetch: Fetch, host: LocalHost, settings: DeployerSettings
) -> None:
    jobs = [make_job(domain, generation=n, params={"title": f"Version {n}"}) for n in range(1, 5)]
    for job in jobs:
        assert isinstance(await deployer(job), DeploymentSucceeded)
        assert f"<h1>Version {job.generation}</h1>" in (await fetch(domain)).text

    assert settings.keep_releases == 3
    assert await host.releases(domain) == [j.deployment_id for j in jobs[1:]]

    # A redelivered job redoes nothing it does not need to: the release is already there.
    final = await deployer(jobs[-1])
    assert isinstance(final, DeploymentSucceeded) and final.stats is not None
    assert (final.stats.uploaded_files, final.stats.uploaded_bytes) == (0, 0)
    assert final.stats.files == 5


async def test_a_job_fenced_before_the_build_is_superseded(
    deployer: Deployer, domain: str, host: LocalHost, fetch: Fetch
) -> None:
    live = make_job(domain, params={"title": "Live one"})
    await deployer(live)

    async def newer_exists(job: DeploymentRequested) -> Fenced | None:
        return Fenced("superseded by generation 7")

    final = await deployer(make_job(domain, generation=2), fence=newer_exists)

    assert isinstance(final, DeploymentSuperseded)
    assert len(deployer.reports) == 1
    assert final.status == "superseded" and final.phases == []
    assert final.error is not None and final.error.message == "superseded by generation 7"
    assert await host.current_release(domain) == live.deployment_id
    assert "Live one" in (await fetch(domain)).text


async def test_a_job_fenced_before_activation_leaves_current_untouched(
    deployer: Deployer, domain: str, host: LocalHost, fetch: Fetch
) -> None:
    live = make_job(domain, params={"title": "Live one"})
    await deployer(live)
    calls = 0

    async def overtaken_while_building(job: DeploymentRequested) -> Fenced | None:
        nonlocal calls
        calls += 1
        return None if calls == 1 else Fenced("superseded by generation 3")

    late = make_job(domain, generation=2, params={"title": "Too late"})
    final = await deployer(late, fence=overtaken_while_building)

    assert isinstance(final, DeploymentSuperseded)
    assert [p.name for p in final.phases] == ["build", "upload"]
    assert await host.current_release(domain) == live.deployment_id
    assert "Live one" in (await fetch(domain)).text


async def test_a_duplicate_of_a_finished_job_reports_nothing(
    deployer: Deployer, domain: str, host: LocalHost
) -> None:
    async def already_done(job: DeploymentRequested) -> Fenced | None:
        return Fenced("already finished (live)", duplicate=True)

    assert await deployer(make_job(domain), fence=already_done) is None
    assert deployer.reports == []
    assert await host.releases(domain) == []


async def test_an_unhealthy_release_is_rolled_back(
    deployer: Deployer, domain: str, host: LocalHost, fetch: Fetch
) -> None:
    live = make_job(domain, params={"title": "Still here"})
    await deployer(live)

    broken = make_job(domain, generation=2, template="noindex")
    final = await deployer(broken)

    assert isinstance(final, DeploymentFailed)
    assert final.status == "failed"
    assert final.error is not None and final.error.code == "health_check_failed"
    assert live.deployment_id in final.error.message
    assert [(p.name, p.status) for p in final.phases][-2:] == [
        ("health_check", "failed"),
        ("rollback", "succeeded"),
    ]
    assert await host.current_release(domain) == live.deployment_id
    page = await fetch(domain)
    assert page.status_code == 200 and release_marker(page.text) == live.deployment_id


async def test_an_unhealthy_first_release_takes_the_site_offline(
    deployer: Deployer, domain: str, host: LocalHost, fetch: Fetch
) -> None:
    final = await deployer(make_job(domain, template="noindex"))

    assert isinstance(final, DeploymentFailed)
    assert final.error is not None and final.error.code == "health_check_failed"
    assert await host.current_release(domain) is None
    assert (await fetch(domain, "/about.html")).status_code == 404


async def test_a_web_host_that_does_not_answer_is_retried_after_rolling_back(
    deployer: Deployer, domain: str, host: LocalHost, settings: DeployerSettings
) -> None:
    live = make_job(domain)
    await deployer(live)
    deployer.settings = settings.model_copy(update={"http_port": procs.free_port()})

    with pytest.raises(Transient) as info:
        await deployer(make_job(domain, generation=2))

    assert info.value.code == "web_host_unreachable"
    assert {r.status for r in deployer.reports} <= {"building", "uploading", "activating"}
    assert await host.current_release(domain) == live.deployment_id


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"template": "nope"}, "template_not_found"),
        ({"template_version": "9.9.9"}, "template_version_not_found"),
        ({"params": {"title": ""}}, "params_invalid"),
        ({"domain": "Not A Domain"}, "invalid_domain"),
        ({"deployment_id": "../../etc"}, "invalid_release_id"),
    ],
)
async def test_jobs_that_can_never_succeed_fail_without_touching_the_site(
    deployer: Deployer, domain: str, host: LocalHost, changes: dict[str, Any], code: str
) -> None:
    final = await deployer(make_job(**{"domain": domain, **changes}))

    assert isinstance(final, DeploymentFailed)
    assert final.error is not None and final.error.code == code
    assert await host.releases(domain) == []
    assert await host.current_release(domain) is None


async def test_a_rollback_serves_an_earlier_release_again(
    deployer: Deployer, domain: str, host: LocalHost, fetch: Fetch
) -> None:
    first = make_job(domain, params={"title": "First"})
    await deployer(first)
    await deployer(make_job(domain, generation=2, params={"title": "Second"}))

    rollback = make_job(domain, generation=3, rollback_to=first.deployment_id)
    final = await deployer(rollback)

    assert isinstance(final, DeploymentSucceeded)
    assert [p.name for p in final.phases] == ["activate", "health_check"]
    assert await host.current_release(domain) == first.deployment_id
    assert "<h1>First</h1>" in (await fetch(domain)).text


async def test_a_rollback_to_a_release_that_is_gone_fails(
    deployer: Deployer, domain: str, host: LocalHost
) -> None:
    live = make_job(domain)
    await deployer(live)

    final = await deployer(make_job(domain, generation=2, rollback_to=new_id("dep")))

    assert isinstance(final, DeploymentFailed)
    assert final.error is not None and final.error.code == "release_not_found"
    assert await host.current_release(domain) == live.deployment_id


async def test_progress_is_coalesced_and_a_fast_deployment_reports_only_its_outcome(
    deployer: Deployer, domain: str, settings: DeployerSettings
) -> None:
    deployer.settings = settings.model_copy(update={"progress_report_delay": 30.0})

    final = await deployer(make_job(domain))

    assert deployer.reports == [final]
    assert isinstance(final, DeploymentSucceeded)
    assert [p.name for p in final.phases] == ["build", "upload", "activate", "health_check"]


async def test_a_slow_phase_is_reported_once_after_the_delay_then_the_outcome(
    catalog: TemplateCatalog, host: LocalHost, domain: str, settings: DeployerSettings
) -> None:
    reports: list[DeploymentReport] = []

    async def report(event: DeploymentReport) -> None:
        reports.append(event)

    async def slow_pack_check(pack: Any) -> None:  # runs inside the build phase
        await asyncio.sleep(0.6)

    await deploy(
        make_job(domain),
        catalog=catalog,
        host=host,
        report=report,
        fence=proceed,
        settings=settings.model_copy(update={"progress_report_delay": 0.1}),
        verify_pack=slow_pack_check,
    )

    progress, final = reports[:-1], reports[-1]
    assert [(type(r), r.status) for r in progress] == [(DeploymentProgressed, "building")]
    assert [(p.name, p.status) for p in progress[0].phases] == [("build", "running")]
    assert isinstance(final, DeploymentSucceeded)
    assert final.phases[0].status == "succeeded"  # the copy in the report was not rewritten


async def test_a_build_that_cannot_write_is_retried(
    deployer: Deployer, domain: str, settings: DeployerSettings, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the work root should be")
    deployer.settings = settings.model_copy(update={"work_root": blocker})

    with pytest.raises(Transient) as info:
        await deployer(make_job(domain))

    assert info.value.code == "build_io_failed"
    assert all(isinstance(r, DeploymentProgressed) for r in deployer.reports)
