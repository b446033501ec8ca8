"""The template registry (table ``template_versions``): the published content hash of each
(name, version). A version is published once — by ``sitefleet templates publish``, or the
first time the API finds it on disk — and is immutable from then on: a pack whose content
no longer matches its published hash is refused (409 ``template_pack_changed``, and by the
deployer) instead of silently changing live sites."""

from __future__ import annotations

import logging
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.schemas import TemplateDetail, TemplateSummary, TemplateVersionRead
from shared.errors import Conflict, NotFound
from shared.models import TemplateVersion
from shared.template_packs import TemplateCatalog, TemplatePack, pack_changed, version_key

log = logging.getLogger(__name__)


async def register_catalog(session: AsyncSession, catalog: TemplateCatalog) -> list[str]:
    """Publishes the packs on disk not published yet (several API processes may start at
    once: each insert is idempotent); returns the 'name version' of packs refused because
    their content differs from what was published under that version."""
    refused = []
    for (name, version), pack in catalog.packs.items():
        try:
            await publish_pack(session, pack)
        except Conflict:
            refused.append(f"{name} {version}")
            catalog.refuse(name, version)
            log.error(
                "template pack changed under a published version; publish a new version",
                extra={"template": name, "version": version},
            )
        else:
            catalog.published.add((name, version))
    return refused


async def publish_pack(session: AsyncSession, pack: TemplatePack) -> bool:
    """Record ``pack``'s hash as its version's published content. False when that exact
    content was already published; ``Conflict`` when other content was."""
    inserted = await session.scalar(
        insert(TemplateVersion)
        .values(
            name=pack.name,
            version=pack.version,
            title=pack.title,
            description=pack.description,
            params_schema=pack.params_schema,
            content_hash=pack.content_hash,
        )
        .on_conflict_do_nothing(index_elements=["name", "version"])
        .returning(TemplateVersion.name)
    )
    if inserted is not None:
        return True
    published = await session.scalar(
        select(TemplateVersion.content_hash).where(
            TemplateVersion.name == pack.name, TemplateVersion.version == pack.version
        )
    )
    if published != pack.content_hash:
        raise pack_changed(pack.name, pack.version)
    return False


async def resolve_pack(
    session: AsyncSession, catalog: TemplateCatalog, name: str, version: str | None
) -> TemplatePack:
    """The pack a request names, checked once per process against its published hash (a
    version found on disk after start-up and never published is published now)."""
    pack = catalog.get(name, version)
    key = (pack.name, pack.version)
    if key not in catalog.published:
        try:
            await publish_pack(session, pack)
        except Conflict:
            catalog.refuse(*key)
            raise
        catalog.published.add(key)
    return pack


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
