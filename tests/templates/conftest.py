"""Helpers of the template tests: build a pack the way a deployment does (the real render,
the build steps in the real bubblewrap sandbox, the output check); the deployer tests' real
nginx and web host fixtures, for the packs deployed end to end."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from cli.templates import VALIDATE_LIMITS
from services.deployer.build import build_sandbox
from services.deployer.output_check import check_output
from services.deployer.render import render_site
from services.deployer.sandbox import parse_build_steps
from services.deployer.settings import DeployerSettings
from shared.ids import new_id
from shared.settings import PROJECT_ROOT
from shared.template_packs import load_pack
from tests.deployer.conftest import (  # noqa: F401 -- fixtures: a real nginx serving a web host
    domain,
    fetch,
    host,
    nginx,
    sites_root,
)

TEMPLATES = PROJECT_ROOT / "templates"
DOMAIN = "journal.example.com"


async def build_site(
    pack_dir: Path, params: dict[str, Any], out: Path, site_domain: str = DOMAIN
) -> str:
    """Render and build ``pack_dir`` with ``params`` into ``out``; return the release id."""
    settings = DeployerSettings().model_copy(update=VALIDATE_LIMITS)
    pack = load_pack(pack_dir)
    release_id = new_id("dep")
    await asyncio.to_thread(
        render_site, pack, params, domain=site_domain, release_id=release_id, out_dir=out
    )
    steps = parse_build_steps(pack.build)
    if steps:
        await build_sandbox(settings).run_steps(
            steps, site_dir=out, src_dir=pack.source_dir.resolve()
        )
    check_output(out, max_files=settings.max_release_files, max_bytes=settings.max_release_bytes)
    return release_id


def copy_pack(name: str, root: Path, **manifest_changes: Any) -> Path:
    """A copy of ``templates/<name>/1.0.0`` under ``root``, with manifest keys replaced."""
    target = root / name / "1.0.0"
    shutil.copytree(TEMPLATES / name / "1.0.0", target)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**manifest, **manifest_changes}))
    return target


def html_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.html")}
