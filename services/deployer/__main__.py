"""``python -m services.deployer``: wire settings, database, broker and the local web host
together, consume deploy jobs until SIGTERM/SIGINT, then drain and close."""

from __future__ import annotations

import asyncio
import logging
import signal

from services.deployer.consumer import DeployerHandler
from services.deployer.fence import DatabaseFence
from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from shared import broker
from shared.consumer import Consumer
from shared.db import create_engine
from shared.logs import configure_logging
from shared.template_packs import TemplateCatalog

log = logging.getLogger("services.deployer")


async def run(settings: DeployerSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    catalog = TemplateCatalog(settings.templates_dir)
    engine = create_engine(settings.database_url, application_name="sitefleet-deployer")
    connection = await broker.connect(settings.amqp_url, name="deployer")
    try:
        async with connection.channel() as topology:
            await broker.declare_topology(topology, settings.retry_delays, settings.delivery_limit)
        publisher = await broker.Publisher.open(connection)
        handler = DeployerHandler(
            catalog=catalog,
            host=LocalHost(settings.sites_root),
            publisher=publisher,
            # A job waits for the site's previous job at most as long as one may run.
            fence=DatabaseFence(engine, lock_timeout=settings.deploy_timeout),
            settings=settings,
        )
        consumer = Consumer(broker.DEPLOYER_JOBS, handler, publisher, settings.retry_delays)
        channel = await connection.channel()
        await consumer.start(channel, settings.prefetch)
        log.info(
            "deployer started",
            extra={"templates": len(catalog.packs), "sites_root": str(settings.sites_root)},
        )

        await stop.wait()
        log.info("stopping: no new jobs, waiting for the jobs in hand")
        await consumer.stop(settings.shutdown_grace)
        await channel.close()
        await publisher.channel.close()
    finally:
        await connection.close()
        await engine.dispose()
    log.info("deployer stopped")


def main() -> None:
    settings = DeployerSettings()
    configure_logging("deployer", settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
