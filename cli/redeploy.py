"""`sitefleet sites redeploy --all|--template NAME`: a new deployment for many sites at
once (after a host was rebuilt, or to pick up a fixed build step), through the API's own
path: each site gets a new generation, a ``deployments`` row and an outbox row in one
transaction (services/api/sites.request_deployment); the API's outbox relay publishes them.
Sites being deleted are skipped. Each site has its own transaction, so an interrupted run
leaves every site either redeployed or untouched, and running it again is harmless (the
newest generation of a site wins, older jobs are acked as superseded)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from services.api.sites import request_deployment
from shared.db import create_engine, create_sessionmaker
from shared.errors import NotFound
from shared.models import Site
from shared.settings import CommonSettings


async def redeploy(
    settings: CommonSettings,
    *,
    template: str | None,
    on_total: Callable[[int], None],
    on_site: Callable[[str], None],
) -> list[str]:
    """Queue a redeploy of every site (or every site of ``template``); returns the ids of
    the deployments requested. ``on_total`` hears the count first, ``on_site`` each domain."""
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    sessionmaker = create_sessionmaker(engine)
    requested: list[str] = []
    try:
        async with sessionmaker() as session:
            query = select(Site.id).where(Site.status != "deleting").order_by(Site.domain)
            if template is not None:
                query = query.where(Site.template == template)
            site_ids = list(await session.scalars(query))
        if template is not None and not site_ids:
            raise NotFound(f"no site uses the template {template!r}", code="template_not_found")
        on_total(len(site_ids))
        for site_id in site_ids:
            async with sessionmaker.begin() as session:
                site = await session.scalar(
                    select(Site).where(Site.id == site_id).with_for_update()
                )
                if site is None or site.status == "deleting":
                    continue  # deleted meanwhile
                deployment = await request_deployment(session, site, reason="bulk redeploy")
                requested.append(deployment.id)
                domain = site.domain
            on_site(domain)
    finally:
        await engine.dispose()
    return requested
