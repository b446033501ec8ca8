"""``python -m services.deployer``: wire settings, database, broker and the web hosts (the
registered ones, else the local one) together, consume deploy jobs until SIGTERM/SIGINT,
then drain and close."""

from __future__ import annotations

import asyncio
import logging

from services.deployer.consumer import DeployerHandler
from services.deployer.fence import DatabaseFence
from services.deployer.hosts import HostRegistry
from services.deployer.packs import PublishedPacks
from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from shared import broker
from shared.consumer import Consumer
from shared.db import create_engine
from shared.logs import configure_logging
from shared.metrics import serve_metrics
from shared.service import consume_until, stop_event
from shared.template_packs import TemplateCatalog

log = logging.getLogger("services.deployer")


async def run(settings: DeployerSettings) -> None:
    stop = stop_event()
    serve_metrics(settings.metrics_host, settings.metrics_port)
    catalog = TemplateCatalog(settings.templates_dir)
    engine = create_engine(
        settings.database_url,
        application_name="sitefleet-deployer",
        pool_size=settings.db_pool_size,
    )
    publisher = broker.Publisher()
    local = LocalHost.from_settings(settings)
    hosts = HostRegistry(engine, settings, local=local)
    try:
        handler = DeployerHandler(
            catalog=catalog,
            host=local,
            hosts=hosts,
            published=PublishedPacks(engine),
            publisher=publisher,
            # A job waits for the site's previous job at most as long as one may run.
            fence=DatabaseFence(engine, lock_timeout=settings.deploy_timeout),
            settings=settings,
        )
        consumer = Consumer(broker.DEPLOYER_JOBS, handler, publisher, settings.retry_delays)
        log.info(
            "deployer started",
            extra={"templates": len(catalog.packs), "sites_root": str(settings.sites_root)},
        )
        await consume_until(
            stop,
            settings,
            name="deployer",
            consumer=consumer,
            prefetch=settings.prefetch,
            grace=settings.shutdown_grace,
            also=handler.listen_for_cancels,
        )
    finally:
        await hosts.close()
        await engine.dispose()
    log.info("deployer stopped")


def main() -> None:
    settings = DeployerSettings()
    configure_logging("deployer", settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
