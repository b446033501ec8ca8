"""Publishing a template pack: validate it like ``templates validate``, record its content
hash as the version's published content (``template_versions``, through the API's
registry) and install it under the templates directory as ``<name>/<version>``, in one
go: a version is published once, and a different pack under a published version is
refused."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from cli.templates import Report, validate_pack
from services.api.template_registry import publish_pack
from services.deployer.settings import DeployerSettings
from shared.template_packs import TemplatePack, hash_pack, load_pack, pack_changed


@dataclass
class Published:
    report: Report
    pack: TemplatePack | None = None
    # False when exactly this content was already the published version.
    new: bool = False
    installed_at: Path | None = None


async def publish(
    session: AsyncSession, path: Path, templates_dir: Path, settings: DeployerSettings
) -> Published:
    """Validate, then publish and install; nothing is published when validation fails.
    The caller's transaction commits the published hash only if the install succeeded."""
    report = await validate_pack(path, settings)
    if not report.ok:
        return Published(report)
    pack = load_pack(path)
    dest = templates_dir / pack.name / pack.version
    new = await publish_pack(session, pack)  # Conflict if other content was published
    await asyncio.to_thread(_install, pack, dest)
    return Published(report, pack, new, dest)


def _install(pack: TemplatePack, dest: Path) -> None:
    """Copy next to ``dest`` and rename into place, so no reader sees half a pack; a
    pack already installed there must be this very content."""
    if dest.resolve() == pack.path.resolve():
        return
    if dest.exists():
        if hash_pack(dest) != pack.content_hash:
            raise pack_changed(pack.name, pack.version)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".publish-{pack.version}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(pack.path, tmp, ignore=shutil.ignore_patterns("__pycache__"))
        if hash_pack(tmp) != pack.content_hash:
            raise pack_changed(pack.name, pack.version)  # the source changed while copying
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
