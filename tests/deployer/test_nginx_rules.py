"""Per-site nginx rules (rule profiles), against the real nginx: a template with the "spa"
profile gets its server block (history fallback, cache headers) tested with `nginx -t`
before it goes live; reloads happen only when rules change and are coalesced per host; a
refused config is rolled back and never affects other sites; removal takes the rules away.

Reloads are seen two ways: the coalescer's count, and nginx's worker pids (a reload
replaces the workers; worker_processes is 1)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.deployer.nginx import ReloadCoalescer, remove_rules, render_rules
from services.deployer.nginx_rules import rules_path
from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from services.deployer.transport.ssh import SshHost
from shared.errors import Invalid, Permanent
from shared.messages import DeploymentFailed, DeploymentSucceeded
from shared.template_packs import TemplateCatalog, load_pack
from tests.deployer.conftest import SPA_ASSET, Fetch, Nginx, write_pack
from tests.deployer.test_deploy import Deployer, make_job
from tests.deployer.test_ssh_host import ssh_host
from tests.fixtures.sshd import Sshd

REFUSED = "server { listen 1; this_is_no_directive on; }\n"


def workers(nginx: Nginx) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(nginx.proc.pid)], capture_output=True, text=True)
    return {int(pid) for pid in out.stdout.split()}


async def settled_workers(nginx: Nginx) -> set[int]:
    """Worker pids once a reload (if any) is through: old workers gone, new ones up."""
    for _ in range(100):
        pids = workers(nginx)
        if len(pids) == 1:
            return pids
        await asyncio.sleep(0.05)
    raise AssertionError(f"nginx workers did not settle: {pids}")


def spa_domain() -> str:
    return f"spa-{uuid.uuid4().hex[:8]}.example"


@pytest.fixture
def rules_host(sites_root: Path, nginx: Nginx) -> LocalHost:
    host = LocalHost(sites_root)
    host.configure_nginx(nginx.command, f"127.0.0.1:{nginx.port}", reload_window=0.5)
    return host


@pytest.fixture
def deployer(
    catalog: TemplateCatalog, rules_host: LocalHost, settings: DeployerSettings
) -> Deployer:
    return Deployer(catalog, rules_host, settings)


async def test_an_spa_gets_history_fallback_and_cache_rules(
    deployer: Deployer, rules_host: LocalHost, fetch: Fetch, sites_root: Path
) -> None:
    domain = spa_domain()
    assert isinstance(await deployer(make_job(domain, template="app")), DeploymentSucceeded)

    for host in (domain, f"www.{domain}", f"proxy.{domain}"):
        deep = await fetch(host, "/app/settings")
        assert deep.status_code == 200 and "<h1>Harbour Lane</h1>" in deep.text
        assert deep.headers["cache-control"] == "no-cache"
    front = await fetch(domain, "/")
    assert front.headers["cache-control"] == "no-cache" and front.text == deep.text
    asset = await fetch(domain, f"/{SPA_ASSET}")
    assert asset.status_code == 200 and "getElementById" in asset.text
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    # A hashed asset that does not exist is a 404, never index.html served as JavaScript.
    assert (await fetch(domain, "/assets/app.ffffffffffffffff.js")).status_code == 404
    # A plain site on the same nginx keeps the catch-all's rules: no fallback.
    plain = f"plain-{uuid.uuid4().hex[:8]}.example"
    assert isinstance(await deployer(make_job(plain)), DeploymentSucceeded)
    assert (await fetch(plain, "/app/settings")).status_code == 404
    assert rules_path(sites_root, domain).is_file()
    assert not rules_path(sites_root, plain).exists()


async def test_only_a_change_of_rules_reloads_nginx(
    deployer: Deployer, rules_host: LocalHost, nginx: Nginx, fetch: Fetch
) -> None:
    domain = spa_domain()
    before = await settled_workers(nginx)
    job = make_job(domain, template="app", params={"title": "First"})
    final = await deployer(job)
    assert isinstance(final, DeploymentSucceeded)
    assert "nginx_reload" in [phase.name for phase in final.phases]
    assert rules_host.reloads.reloads == 1
    after_first = await settled_workers(nginx)
    assert after_first != before  # the new server block needed one reload

    for n in (2, 3):  # content changes: same rules, no reload
        job = make_job(domain, template="app", generation=n, params={"title": f"Take {n}"})
        final = await deployer(job)
        assert isinstance(final, DeploymentSucceeded)
        assert "nginx_reload" not in [phase.name for phase in final.phases]
        assert f"<h1>Take {n}</h1>" in (await fetch(domain, "/app")).text
    assert rules_host.reloads.reloads == 1
    assert await settled_workers(nginx) == after_first


async def test_rules_in_place_but_never_loaded_get_their_reload(
    deployer: Deployer, rules_host: LocalHost, settings: DeployerSettings, fetch: Fetch
) -> None:
    # A retried job finds its rules file written by the first attempt, whose reload was
    # never seen: the file is unchanged, yet the host still needs the reload.
    domain = spa_domain()
    rules = render_rules(
        "spa",
        domain=domain,
        root=rules_host.site_root(domain),
        listen=rules_host.nginx_listen,
        profiles_dir=settings.nginx_profiles_dir,
    )
    assert rules is not None
    assert (await rules_host.set_rules(domain, rules.text)).changed

    final = await deployer(make_job(domain, template="app"))

    assert isinstance(final, DeploymentSucceeded)
    assert "nginx_reload" in [phase.name for phase in final.phases]
    assert (await fetch(domain, "/app/settings")).status_code == 200


async def test_reloads_of_many_new_sites_are_coalesced(
    catalog: TemplateCatalog, rules_host: LocalHost, settings: DeployerSettings, fetch: Fetch
) -> None:
    # The six deployments below ask for their reload ~0.1 s after the first one here: a
    # 3 s window holds them all with a wide margin.
    rules_host.configure_nginx(rules_host.nginx_command, rules_host.nginx_listen, reload_window=3.0)
    await rules_host.reloads.request()  # the window starts now: the next reload must wait
    assert rules_host.reloads.reloads == 1
    domains = [spa_domain() for _ in range(6)]
    results = await asyncio.gather(
        *(
            Deployer(catalog, rules_host, settings)(
                make_job(d, template="app", site_id=f"site_{d}")
            )
            for d in domains
        )
    )
    assert all(isinstance(r, DeploymentSucceeded) for r in results), results
    # Six sites whose rules changed inside one window: one more reload for all of them.
    assert rules_host.reloads.reloads == 2
    for domain in domains:
        assert (await fetch(domain, "/app/settings")).status_code == 200


async def test_a_refused_config_is_rolled_back_and_spares_other_sites(
    catalog: TemplateCatalog,
    rules_host: LocalHost,
    settings: DeployerSettings,
    nginx: Nginx,
    fetch: Fetch,
    sites_root: Path,
    tmp_path: Path,
) -> None:
    good = Deployer(catalog, rules_host, settings)
    domain, neighbour, plain = spa_domain(), spa_domain(), f"plain-{uuid.uuid4().hex[:8]}.example"
    for d, template in ((domain, "app"), (neighbour, "app"), (plain, "demo")):
        job = make_job(d, template=template, site_id=f"site_{d}", params={"title": "Good"})
        assert isinstance(await good(job), DeploymentSucceeded)
    rules_before = rules_path(sites_root, domain).read_text()

    # An operator's broken profile: what the deployer renders, nginx -t refuses.
    broken = tmp_path / "profiles"
    broken.mkdir()
    (broken / "spa.conf").write_text(
        "server { listen @{listen}; bogus_directive @{domain};\n"
        '  location = /.well-known/sitefleet-rules { return 200 "@{digest}"; } }\n'
    )
    bad = Deployer(catalog, rules_host, settings.model_copy(update={"nginx_profiles_dir": broken}))
    job = make_job(domain, template="app", generation=2, params={"title": "New"})
    final = await bad(job)

    assert isinstance(final, DeploymentFailed)
    assert final.error is not None and final.error.code == "nginx_config_invalid"
    assert "bogus_directive" in final.error.message
    assert "activate" not in [phase.name for phase in final.phases]  # nothing switched
    assert rules_path(sites_root, domain).read_text() == rules_before
    subprocess.run([*nginx.command, "-t", "-q"], check=True)  # the config on disk is whole
    for d in (domain, neighbour):
        page = await fetch(d, "/app/settings")
        assert page.status_code == 200 and "<h1>Good</h1>" in page.text
    assert "<h1>Good</h1>" in (await fetch(plain)).text
    assert nginx.proc.poll() is None


async def test_removing_a_site_removes_its_rules(
    deployer: Deployer, rules_host: LocalHost, fetch: Fetch, sites_root: Path
) -> None:
    domain = spa_domain()
    assert isinstance(await deployer(make_job(domain, template="app")), DeploymentSucceeded)
    reloads = rules_host.reloads.reloads

    await rules_host.remove_site(domain)
    await remove_rules(rules_host, domain)

    assert not rules_path(sites_root, domain).exists()
    assert rules_host.reloads.reloads == reloads + 1
    assert (await fetch(domain, "/app/settings")).status_code == 404


async def test_a_host_without_an_nginx_command_refuses_an_spa_clearly(
    catalog: TemplateCatalog, host: LocalHost, settings: DeployerSettings, sites_root: Path
) -> None:
    domain = spa_domain()
    final = await Deployer(catalog, host, settings)(make_job(domain, template="app"))
    assert isinstance(final, DeploymentFailed)
    assert final.error is not None and final.error.code == "nginx_rules_unsupported"
    assert not (sites_root / domain / "current").exists()


def test_a_pack_naming_an_unknown_profile_is_refused(tmp_path: Path) -> None:
    root = write_pack(tmp_path, "odd", {"index.html.j2": "x"}, nginx_profile="php-fpm")
    with pytest.raises(Invalid) as info:
        load_pack(root)
    assert info.value.code == "unknown_nginx_profile"


async def test_the_coalescer_shares_a_waiting_reload_and_never_one_already_running() -> None:
    started: list[int] = []
    release = asyncio.Event()

    async def reload() -> None:
        started.append(len(started))
        await release.wait()

    coalescer = ReloadCoalescer(reload, host="h", window=0.0)
    first = asyncio.create_task(coalescer.request())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert started == [0]  # running, and blocked
    # Asked while the first runs: their change may be newer than its config -> a second
    # reload, which all of them share.
    later = [asyncio.create_task(coalescer.request()) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *later)
    assert started == [0, 1] and coalescer.reloads == 2


async def test_a_failed_reload_reaches_every_requester() -> None:
    async def reload() -> None:
        raise OSError("nginx: [error] invalid PID number")

    coalescer = ReloadCoalescer(reload, host="h", window=0.0)
    results = await asyncio.gather(*(coalescer.request() for _ in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [OSError] * 3


@pytest.fixture
async def ssh_rules_host(sshd: Sshd, sites_root: Path, nginx: Nginx) -> AsyncIterator[SshHost]:
    host = ssh_host(sshd, sites_root)
    host.configure_nginx(nginx.command, f"127.0.0.1:{nginx.port}", reload_window=0.5)
    yield host
    await host.close()


async def test_rules_through_ssh_deploy_an_spa_and_refuse_a_bad_config(
    catalog: TemplateCatalog,
    ssh_rules_host: SshHost,
    settings: DeployerSettings,
    fetch: Fetch,
    sites_root: Path,
) -> None:
    domain = spa_domain()
    final = await Deployer(catalog, ssh_rules_host, settings)(make_job(domain, template="app"))  # type: ignore[arg-type]
    assert isinstance(final, DeploymentSucceeded)
    assert (await fetch(domain, "/app/settings")).status_code == 200
    assert ssh_rules_host.reloads.reloads == 1
    good = rules_path(sites_root, domain).read_text()

    with pytest.raises(Permanent) as info:
        await ssh_rules_host.set_rules(domain, REFUSED)
    assert info.value.code == "nginx_config_invalid"
    assert rules_path(sites_root, domain).read_text() == good
    unchanged = await ssh_rules_host.set_rules(domain, good)
    assert not unchanged.changed and unchanged.previous == good
