"""Building one release in the deployer's work dir: render the pack, run its build steps in
the sandbox, check the output before anything of it is released."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from services.deployer.output_check import check_output
from services.deployer.render import render_site
from services.deployer.sandbox import BuildSandbox, SandboxLimits, parse_build_steps
from services.deployer.settings import DeployerSettings
from shared.errors import Transient
from shared.messages import DeploymentRequested
from shared.template_packs import TemplatePack


async def build_release(
    job: DeploymentRequested, pack: TemplatePack, out_dir: Path, settings: DeployerSettings
) -> None:
    """Render, run the pack's build steps (if any), then check what is to be released."""
    steps = parse_build_steps(pack.build)
    try:
        await asyncio.to_thread(_fresh_dir, out_dir.parent)
        await asyncio.to_thread(
            render_site,
            pack,
            job.params,
            domain=job.domain,
            release_id=job.deployment_id,
            out_dir=out_dir,
            max_files=settings.max_release_files,
            max_bytes=settings.max_release_bytes,
        )
        if steps:
            await build_sandbox(settings).run_steps(
                steps, site_dir=out_dir, src_dir=pack.source_dir.resolve()
            )
        await asyncio.to_thread(
            check_output,
            out_dir,
            max_files=settings.max_release_files,
            max_bytes=settings.max_release_bytes,
        )
    except OSError as exc:
        raise Transient(
            f"writing the build of {job.domain} failed: {exc}", code="build_io_failed"
        ) from exc


def build_sandbox(settings: DeployerSettings) -> BuildSandbox:
    return BuildSandbox(
        limits=SandboxLimits(
            timeout=settings.build_timeout,
            memory_bytes=settings.build_memory_bytes,
            max_processes=settings.build_max_processes,
            max_file_bytes=settings.build_max_file_bytes,
            cpu_seconds=settings.build_cpu_seconds,
            output_limit=settings.build_output_limit,
            max_site_files=settings.max_release_files,
            max_site_bytes=settings.max_release_bytes,
            watch_interval=settings.build_watch_interval,
        ),
        uid_base=settings.build_uid_base,
        uid_count=settings.build_uid_count,
        lock_dir=settings.build_uid_lock_dir,
        bwrap=settings.bwrap_path,
    )


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
