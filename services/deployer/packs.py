"""The deployer's guard on template packs: a pack is built only while its files are still
the content published for its version (``template_versions``, written by the API's
registry and ``sitefleet templates publish``; the deployer only reads it)."""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.errors import Permanent, Unavailable
from shared.models import TemplateVersion
from shared.template_packs import TemplatePack, pack_changed


class PublishedPacks:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # A published hash never changes, so each is read once per process.
        self._hashes: dict[tuple[str, str], str] = {}

    async def check(self, pack: TemplatePack) -> None:
        """``Conflict`` (the deployment fails) when the pack on disk is not its published
        content: loaded changed, or edited since it was loaded."""
        key = (pack.name, pack.version)
        published = self._hashes.get(key)
        if published is None:
            try:
                async with self.engine.connect() as conn:
                    published = await conn.scalar(
                        select(TemplateVersion.content_hash).where(
                            TemplateVersion.name == pack.name,
                            TemplateVersion.version == pack.version,
                        )
                    )
            except DBAPIError as exc:
                raise Unavailable(
                    f"cannot read the published templates: {exc}", code="database_unavailable"
                ) from exc
            if published is None:
                raise Permanent(
                    f"template {pack.name} {pack.version} was never published",
                    code="template_not_published",
                )
            self._hashes[key] = published
        if published != pack.content_hash:
            raise pack_changed(pack.name, pack.version)
        await asyncio.to_thread(pack.check_unchanged)
