"""The template registry: packs found on disk are registered once per (name, version);
a registered version is immutable, so a pack whose content changed under the same version
is refused (and logged) instead of silently changing live sites."""

from __future__ import annotations

import logging
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.schemas import TemplateDetail, TemplateSummary, TemplateVersionRead
from shared.errors import NotFound
from shared.models import TemplateVersion
from shared.template_packs import TemplateCatalog, version_key

log = logging.getLogger(__name__)


async def register_catalog(session: AsyncSession, catalog: TemplateCatalog) -> list[str]:
    """Registers new packs; returns the 'name version' of packs refused as changed."""
    known = {(r.name, r.version): r for r in await session.scalars(select(TemplateVersion))}
    refused = []
    for (name, version), pack in catalog.packs.items():
        row = known.get((name, version))
        if row is None:
            session.add(
                TemplateVersion(
                    name=name,
                    version=version,
                    title=pack.title,
                    description=pack.description,
                    params_schema=pack.params_schema,
                    content_hash=pack.content_hash,
                )
            )
        elif row.content_hash != pack.content_hash:
            refused.append(f"{name} {version}")
            log.error(
                "template pack changed under a published version; publish a new version",
                extra={"template": name, "version": version},
            )
    return refused


async def _versions(session: AsyncSession) -> dict[str, list[TemplateVersion]]:
    by_name: dict[str, list[TemplateVersion]] = defaultdict(list)
    for row in await session.scalars(select(TemplateVersion)):
        by_name[row.name].append(row)
    for rows in by_name.values():
        rows.sort(key=lambda r: version_key(r.version))
    return by_name


async def list_templates(session: AsyncSession) -> list[TemplateSummary]:
    return [
        TemplateSummary(
            name=name,
            title=rows[-1].title,
            description=rows[-1].description,
            latest_version=rows[-1].version,
            versions=[r.version for r in rows],
        )
        for name, rows in sorted((await _versions(session)).items())
    ]


async def get_template(session: AsyncSession, name: str) -> TemplateDetail:
    rows = (await _versions(session)).get(name)
    if not rows:
        raise NotFound(f"template {name!r} does not exist", code="template_not_found")
    return TemplateDetail(
        name=name,
        title=rows[-1].title,
        description=rows[-1].description,
        latest_version=rows[-1].version,
        versions=[
            TemplateVersionRead(
                version=r.version, params_schema=r.params_schema, created_at=r.created_at
            )
            for r in rows
        ],
    )
