"""The API application: wiring of settings, database, broker link, relay and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
from fastapi import FastAPI
from prometheus_client import make_asgi_app

from services.api.broker_link import BrokerLink
from services.api.correlation import CorrelationId
from services.api.deployments import reap_stuck
from services.api.deps import AppState
from services.api.endpoints import (
    deployments,
    domains,
    health,
    hooks,
    identity,
    notifications,
    rollouts,
    sites,
    templates,
)
from services.api.errors import install_error_handlers
from services.api.events import EventRecorder
from services.api.limits import BodyLimit
from services.api.metrics import RequestMetrics
from services.api.outbox import Relay
from services.api.rollout_driver import RolloutDriver
from services.api.settings import ApiSettings
from services.api.template_registry import register_catalog
from shared.db import SessionMaker, create_engine, create_sessionmaker
from shared.registrar import open_registrar
from shared.template_packs import TemplateCatalog

log = logging.getLogger(__name__)


async def reap_forever(sessionmaker: SessionMaker, settings: ApiSettings, relay: Relay) -> None:
    """Fail (and announce) deployments that never reported an outcome."""
    limit = timedelta(seconds=settings.deployment_timeout)
    while True:
        await asyncio.sleep(settings.reaper_interval)
        try:
            async with sessionmaker.begin() as session:
                reaped = await reap_stuck(session, limit)
            if reaped:
                log.warning("reaped stuck deployments", extra={"count": reaped})
                relay.wake()
        except Exception as exc:  # database down: try again next round
            log.warning("reaper pass failed", extra={"error": repr(exc)})


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url,
            application_name="sitefleet-api",
            pool_size=settings.db_pool_size,
        )
        sessionmaker = create_sessionmaker(engine)
        catalog = TemplateCatalog(settings.templates_dir)
        async with sessionmaker.begin() as session:
            await register_catalog(session, catalog)
        relay = Relay(
            sessionmaker,
            poll_interval=settings.outbox_poll_interval,
            batch=settings.outbox_batch,
            publish_timeout=settings.publish_timeout,
        )
        driver = RolloutDriver(
            sessionmaker, catalog, relay, interval=settings.rollout_driver_interval
        )
        link = BrokerLink(settings, relay, EventRecorder(sessionmaker, on_outcome=driver.wake))
        http = httpx.AsyncClient()
        registrar = open_registrar(settings, sessionmaker=sessionmaker, http=http)
        app.state.sitefleet = AppState(settings, sessionmaker, catalog, relay, link, registrar)
        relaying = asyncio.create_task(relay.run())
        linked = asyncio.create_task(link.run())
        loops = [
            asyncio.create_task(reap_forever(sessionmaker, settings, relay)),
            asyncio.create_task(driver.run()),
        ]
        try:
            yield
        finally:
            # Shutdown (SIGTERM): uvicorn has stopped accepting and finished the requests
            # in flight. Stop taking events, stop the loops that write outbox rows (their
            # transactions roll back whole), let the relay publish what is pending, and
            # only then drop the broker connection.
            await link.stop_consuming()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            relay.stop()
            try:
                await asyncio.wait_for(asyncio.shield(relaying), settings.api_shutdown_grace)
            except TimeoutError:
                log.warning("outbox relay still busy at shutdown; the next API publishes the rest")
                relaying.cancel()
                await asyncio.gather(relaying, return_exceptions=True)
            await link.close()
            linked.cancel()
            await asyncio.gather(linked, return_exceptions=True)
            await http.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Sitefleet API",
        version="1.0.0",
        description="Domains, templates and params in; live websites out.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for module in (health, identity, templates, sites, deployments, hooks, domains):
        app.include_router(module.router)
    app.include_router(notifications.router)
    app.include_router(rollouts.router)
    app.mount("/metrics", make_asgi_app())
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(CorrelationId)
    app.add_middleware(RequestMetrics)
    return app
