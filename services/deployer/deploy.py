"""The deploy pipeline of one job: build -> upload -> activate -> health check -> report,
in two phases over every web host of the site: the release is built once and uploaded to
(materialized on) every host first; only when all hold it whole does ``current`` switch on
each of them, and a failure on any host (activation or health check) switches every host
back to what it served before.

Outcomes (the consumer maps them to broker actions):
    returns after reporting ``live``            the site serves the new release
    returns after reporting ``failed``          this job can never succeed (ack it)
    returns after reporting ``superseded``      a newer generation or a deleted site won
    returns without a final report              a duplicate of a finished job
    raises ``Transient``                        retry later; nothing final was reported

``current`` only ever moves to a release that was uploaded whole to every host, and moves
back to the release that served before when the new one is not seen healthy through nginx
on every host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from services.deployer.build import build_release
from services.deployer.fence import Fence, Fenced
from services.deployer.health import check_release
from services.deployer.nginx import StagedRules, render_rules, served_paths
from services.deployer.release import HostTransport, check_domain, check_release_id
from services.deployer.settings import DeployerSettings
from services.deployer.target import Target
from shared.errors import Permanent, SitefleetError, Transient
from shared.messages import (
    DeploymentFailed,
    DeploymentProgressed,
    DeploymentReport,
    DeploymentRequested,
    DeploymentStats,
    DeploymentStatus,
    DeploymentSucceeded,
    DeploymentSuperseded,
    ErrorInfo,
    Phase,
)
from shared.service import run_to_end
from shared.template_packs import TemplateCatalog, TemplatePack
from shared.timeutil import utcnow

log = logging.getLogger(__name__)

Report = Callable[[DeploymentReport], Awaitable[None]]
# Refuses a pack that is not its published content (raises); None: trust the catalog.
VerifyPack = Callable[[TemplatePack], Awaitable[None]]
T = TypeVar("T")


async def deploy(
    job: DeploymentRequested,
    *,
    catalog: TemplateCatalog,
    host: HostTransport | None = None,
    targets: Sequence[Target] | None = None,
    report: Report,
    fence: Fence,
    settings: DeployerSettings,
    verify_pack: VerifyPack | None = None,
) -> None:
    """Run one deploy job to its outcome (see the module docstring) on ``targets`` (the
    site's web hosts), or on ``host`` alone with the settings' HTTP address."""
    if targets is None:
        if host is None:
            raise TypeError("deploy() needs host or targets")
        targets = [Target.local(host, settings)]
    if not targets:
        raise ValueError("deploy() needs at least one web host")
    run = _Run(job, report, progress_delay=settings.progress_report_delay)
    try:
        check_domain(job.domain)
        check_release_id(job.deployment_id)
        if job.rollback_to is not None:
            check_release_id(job.rollback_to)
        if await run.fenced(fence):
            return
        if job.rollback_to is not None:
            await run_to_end(
                _roll_back_to(run, job.rollback_to, targets=targets, settings=settings)
            )
        else:
            await _build_and_release(
                run,
                catalog=catalog,
                targets=targets,
                fence=fence,
                settings=settings,
                verify_pack=verify_pack,
            )
    except Transient:
        raise
    except SitefleetError as exc:
        log.warning(
            "deployment failed",
            extra={
                "deployment_id": job.deployment_id,
                "error_code": exc.code,
                "error": exc.message,
            },
        )
        await run.finish(
            DeploymentFailed, "failed", error=ErrorInfo(code=exc.code, message=exc.message)
        )
    finally:
        run.close()


async def _build_and_release(
    run: _Run,
    *,
    catalog: TemplateCatalog,
    targets: Sequence[Target],
    fence: Fence,
    settings: DeployerSettings,
    verify_pack: VerifyPack | None,
) -> None:
    job = run.job
    work_dir = settings.work_root / job.deployment_id
    try:
        try:
            async with asyncio.timeout(settings.deploy_timeout):
                async with run.phase("build", "building"):
                    out_dir = work_dir / "site"
                    pack = catalog.get(job.template, job.template_version)
                    if verify_pack is not None:
                        await verify_pack(pack)
                    await build_release(job, pack, out_dir, settings)
                async with run.phase("upload", "uploading"):
                    stats = await _upload_everywhere(
                        targets, job.domain, job.deployment_id, out_dir
                    )
        except TimeoutError:
            raise Transient(
                f"building and uploading {job.domain} took over {settings.deploy_timeout} s",
                code="deploy_timed_out",
            ) from None
    finally:
        await asyncio.to_thread(shutil.rmtree, work_dir, ignore_errors=True)

    # Time has passed: a newer generation may have been requested meanwhile.
    if await run.fenced(fence):
        return
    await run_to_end(_release(run, pack, stats, targets=targets, settings=settings))


async def _release(
    run: _Run,
    pack: TemplatePack,
    stats: DeploymentStats,
    *,
    targets: Sequence[Target],
    settings: DeployerSettings,
) -> None:
    """Rules, switch, health check (or switch back), report: run to its end once begun
    (see ``run_to_end``): a cancel half-way would leave hosts on a release never checked,
    and a redelivered job would then take that release for what served before."""
    job = run.job
    changed = await _changed_paths(targets, job.domain, job.deployment_id)
    rules = await _stage_rules(run, pack, targets, settings)
    try:
        await _activate_and_check(
            run, job.deployment_id, targets=targets, settings=settings, rules=rules
        )
    except SitefleetError:
        await rules.put_back()
        raise
    await run.finish(DeploymentSucceeded, "live", stats=stats, changed_paths=changed)
    log.info(
        "deployment live",
        extra={
            "deployment_id": job.deployment_id,
            "domain": job.domain,
            "hosts": [t.name for t in targets],
            **stats.model_dump(),
        },
    )
    await _prune(targets, job.domain, settings.keep_releases)


async def _upload_everywhere(
    targets: Sequence[Target], domain: str, release_id: str, src_dir: Path
) -> DeploymentStats:
    """Phase one: the whole release on every host, or an error (nothing switched)."""
    results = await _on_each(targets, lambda t: t.host.upload(domain, release_id, src_dir))
    stats = results[0].model_copy()
    stats.uploaded_files = sum(r.uploaded_files for r in results)
    stats.uploaded_bytes = sum(r.uploaded_bytes for r in results)
    return stats


async def _on_each(
    targets: Sequence[Target], action: Callable[[Target], Coroutine[Any, Any, T]]
) -> list[T]:
    """Run ``action`` on every host at once; all results, or the first host's error (named
    after its host) once every host has finished."""
    results = await asyncio.gather(*(action(t) for t in targets), return_exceptions=True)
    for target, result in zip(targets, results, strict=True):
        if isinstance(result, BaseException):
            if isinstance(result, SitefleetError) and len(targets) > 1:
                _name_host(result, target)
            raise result
    return results  # type: ignore[return-value]


def _name_host(exc: SitefleetError, target: Target) -> None:
    if f"web host {target.name}" not in exc.message:
        exc.message = f"web host {target.name}: {exc.message}"


async def _roll_back_to(
    run: _Run, release_id: str, *, targets: Sequence[Target], settings: DeployerSettings
) -> None:
    """Serve an earlier release again on every host, without building anything."""
    domain = run.job.domain
    held = await _on_each(targets, lambda t: t.host.releases(domain))
    lacking = [
        t.name for t, releases in zip(targets, held, strict=True) if release_id not in releases
    ]
    if lacking:
        where = "the web host" if len(targets) == 1 else f"web host(s) {', '.join(lacking)}"
        raise Permanent(
            f"release {release_id} of {domain} is no longer on {where}",
            code="release_not_found",
        )
    changed = await _changed_paths(targets, domain, release_id)
    await _activate_and_check(run, release_id, targets=targets, settings=settings)
    await run.finish(DeploymentSucceeded, "live", stats=DeploymentStats(), changed_paths=changed)
    log.info(
        "rolled back: release live again",
        extra={"deployment_id": run.job.deployment_id, "domain": domain, "release": release_id},
    )
    await _prune(targets, domain, settings.keep_releases)


async def _changed_paths(
    targets: Sequence[Target], domain: str, release_id: str
) -> list[str] | None:
    """The URL paths whose content the switch to ``release_id`` changes, for the CDN purge
    (read on the first host: all hold the same releases). None: purge everything."""
    try:
        return served_paths(await targets[0].host.changed_files(domain, release_id))
    except SitefleetError as exc:
        log.warning(
            "could not compare releases: the CDN purges the whole site",
            extra={"domain": domain, "error": exc.message},
        )
        return None


async def _stage_rules(
    run: _Run, pack: TemplatePack, targets: Sequence[Target], settings: DeployerSettings
) -> StagedRules:
    """The site's nginx rules (its pack's profile) written and tested with ``nginx -t`` on
    every host, not live yet; if any host refuses them, every host gets its old rules back
    and the deployment fails before anything switched. Unchanged rules touch nothing."""
    domain = run.job.domain
    staged = StagedRules(domain)
    if pack.nginx_profile == "static" and not any(t.host.nginx_command for t in targets):
        return staged  # no rules, and no host that could hold old ones

    async def stage(target: Target) -> None:
        rules = render_rules(
            pack.nginx_profile,
            domain=domain,
            root=target.host.site_root(domain),
            listen=target.host.nginx_listen,
            profiles_dir=settings.nginx_profiles_dir,
            tls_listen=target.host.nginx_tls_listen,
            sites_root=target.host.sites_path,
        )
        if rules is None and not target.host.nginx_command:
            return  # a plain site on a host without rules: nothing to remove
        change = await target.host.set_rules(domain, rules.text if rules else None)
        staged.record(target, change.changed, change.previous, rules)

    async with run.phase("nginx_rules"):
        try:
            await _on_each(targets, stage)
        except SitefleetError:
            await staged.put_back()
            raise
    return staged


async def _activate_and_check(
    run: _Run,
    release_id: str,
    *,
    targets: Sequence[Target],
    settings: DeployerSettings,
    rules: StagedRules | None = None,
) -> None:
    """Phase two: switch every host, make the site's changed nginx ``rules`` live (a
    coalesced reload), then check every host through its nginx; on any failure, every host
    that switched goes back to what it served before."""
    domain = run.job.domain
    previous = await _on_each(targets, lambda t: t.host.current_release(domain))
    # Hosts that were not serving this release before this job (the ones to undo).
    moved = [
        (t, before) for t, before in zip(targets, previous, strict=True) if before != release_id
    ]
    try:
        async with run.phase("activate", "activating"):
            await _on_each(targets, lambda t: t.host.activate(domain, release_id))
        stale = await rules.hosts_to_reload() if rules is not None else []
        if rules is not None and stale:
            async with run.phase("nginx_reload"):
                await rules.go_live(stale, settings.nginx_reload_timeout)
        async with run.phase("health_check"):
            await _check_everywhere(targets, domain, release_id, settings)
    except SitefleetError as exc:
        # Whatever went wrong (even nginx not answering), `current` must not stay on a
        # release that was never seen healthy everywhere: put back what served before.
        if not moved:
            raise  # it was already serving before this job: nothing to undo
        async with run.phase("rollback"):
            exc.message += await _switch_back(domain, moved, single=len(targets) == 1)
        raise


async def _check_everywhere(
    targets: Sequence[Target], domain: str, release_id: str, settings: DeployerSettings
) -> None:
    async def check(target: Target) -> str | None:
        return await check_release(
            domain,
            release_id,
            http_host=target.http_host,
            http_port=target.http_port,
            https_port=target.https_port,
            request_timeout=settings.health_check_timeout,
        )

    results = await asyncio.gather(*(check(t) for t in targets), return_exceptions=True)
    problems = []
    for target, result in zip(targets, results, strict=True):
        if isinstance(result, str):
            problems.append(result if len(targets) == 1 else f"web host {target.name}: {result}")
    if problems:
        raise Permanent("; ".join(problems), code="health_check_failed")
    for target, result in zip(targets, results, strict=True):
        if isinstance(result, BaseException):  # a host whose nginx did not answer
            if isinstance(result, SitefleetError) and len(targets) > 1:
                _name_host(result, target)
            raise result


async def _switch_back(domain: str, moved: list[tuple[Target, str | None]], *, single: bool) -> str:
    """Point each host back at its previous release (or take the site offline there);
    returns what was done, for the error message. A host that cannot be switched back
    raises (``Transient``): the job is retried rather than reported with a host left on
    an unchecked release."""

    before = {target.name: release for target, release in moved}

    async def undo(target: Target) -> str:
        release = before[target.name]
        if release is not None:
            await target.host.activate(domain, release)
            if single:
                return f"rolled back to release {release}"
            return f"rolled back web host {target.name} to release {release}"
        await target.host.deactivate(domain)
        if single:
            return "no earlier release to roll back to, the site is offline"
        return f"no earlier release on web host {target.name}, the site is offline there"

    done = await _on_each([target for target, _ in moved], undo)
    return "; " + "; ".join(done)


async def _prune(targets: Sequence[Target], domain: str, keep: int) -> None:
    # The deployment is already live and reported: a failed clean-up is retried by the
    # next deploy of the site, not by redoing this one.
    for target in targets:
        try:
            removed = await target.host.prune(domain, keep)
        except SitefleetError as exc:
            log.warning(
                "pruning old releases failed",
                extra={"domain": domain, "host": target.name, "error": exc.message},
            )
            continue
        if removed:
            log.info(
                "old releases pruned",
                extra={"domain": domain, "host": target.name, "releases": removed},
            )


class _Run:
    """The phases of one deployment so far, and reporting them.

    Progress is for people watching, so it is coalesced: a phase that starts arms a timer
    and, ``progress_delay`` seconds later, one report carries everything that happened
    meanwhile; a deployment that finishes sooner reports only its outcome (which lists
    every phase). Each progress report costs every listener a transaction, and most
    deployments take well under a second. ``progress_delay`` 0 reports each phase as it
    starts."""

    def __init__(self, job: DeploymentRequested, report: Report, progress_delay: float = 0) -> None:
        self.job = job
        self._report = report
        self.status: DeploymentStatus = "queued"
        self.phases: list[Phase] = []
        self._progress_delay = progress_delay
        self._progress_timer: asyncio.TimerHandle | None = None
        self._progress_sent: asyncio.Task[None] | None = None
        # Reports go out one at a time, in order (an outcome after any progress report).
        self._sending = asyncio.Lock()

    async def fenced(self, fence: Fence) -> bool:
        verdict: Fenced | None = await fence(self.job)
        if verdict is None:
            return False
        log.info(
            "deployment fenced",
            extra={
                "deployment_id": self.job.deployment_id,
                "reason": verdict.reason,
                "duplicate": verdict.duplicate,
            },
        )
        if not verdict.duplicate:
            await self.finish(
                DeploymentSuperseded,
                "superseded",
                error=ErrorInfo(code="superseded", message=verdict.reason),
            )
        return True

    @contextlib.asynccontextmanager
    async def phase(self, name: str, status: DeploymentStatus | None = None) -> AsyncIterator[None]:
        """Record a phase; report progress as it starts (with the new status, if any)."""
        phase = Phase(name=name, started_at=utcnow(), status="running")
        self.phases.append(phase)
        if status is not None:
            self.status = status
        await self._progress()
        try:
            yield
        except BaseException:
            phase.status, phase.finished_at = "failed", utcnow()
            raise
        phase.status, phase.finished_at = "succeeded", utcnow()

    async def finish(
        self,
        event: type[DeploymentReport],
        status: DeploymentStatus,
        *,
        stats: DeploymentStats | None = None,
        error: ErrorInfo | None = None,
        **extra: Any,
    ) -> None:
        self.status = status
        self._cancel_timer()
        if self._progress_sent is not None:
            await asyncio.wait([self._progress_sent])  # its report first, then the outcome
        await self._send(event, status, stats=stats, error=error, **extra)

    def close(self) -> None:
        """The job is over (an outcome, or an error to retry it): no more progress."""
        self._cancel_timer()
        if self._progress_sent is not None:
            self._progress_sent.cancel()

    async def _progress(self) -> None:
        if self._progress_delay <= 0:
            await self._send(DeploymentProgressed, self.status)
        elif self._progress_timer is None:
            loop = asyncio.get_running_loop()
            self._progress_timer = loop.call_later(self._progress_delay, self._progress_due)

    def _progress_due(self) -> None:
        # Sends queue on ``_sending`` in the order their tasks start: once the latest is
        # done, every earlier one is too.
        self._progress_timer = None
        self._progress_sent = asyncio.create_task(self._send(DeploymentProgressed, self.status))

    def _cancel_timer(self) -> None:
        if self._progress_timer is not None:
            self._progress_timer.cancel()
            self._progress_timer = None

    async def _send(
        self,
        event: type[DeploymentReport],
        status: DeploymentStatus,
        *,
        stats: DeploymentStats | None = None,
        error: ErrorInfo | None = None,
        **extra: Any,
    ) -> None:
        job = self.job
        async with self._sending:
            await self._report(
                event(
                    deployment_id=job.deployment_id,
                    tenant_id=job.tenant_id,
                    site_id=job.site_id,
                    domain=job.domain,
                    generation=job.generation,
                    status=status,
                    # Copies: later phase updates must not rewrite what was already reported.
                    phases=[phase.model_copy() for phase in self.phases],
                    stats=stats,
                    error=error,
                    **extra,
                )
            )
