"""infra/rabbitmq/definitions.json is the topology the services declare: imported into a
fresh vhost, the services start against it without a single precondition failure."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile

import aio_pika

from shared import broker
from shared.settings import PROJECT_ROOT, CommonSettings
from tests.fixtures.isolation import AMQP_BASE, create_vhost, drop_vhost


def test_committed_definitions_match_the_code() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITEFLEET_")}
    generated = subprocess.run(
        [".venv/bin/sitefleet", "broker", "definitions"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    committed = (PROJECT_ROOT / "infra" / "rabbitmq" / "definitions.json").read_text()
    assert json.loads(generated) == json.loads(committed), (
        "regenerate: sitefleet broker definitions > infra/rabbitmq/definitions.json"
    )


async def test_imported_definitions_are_what_the_services_declare(run_id: str) -> None:
    vhost = f"sitefleet-test-{run_id}-defs"
    create_vhost(vhost)
    try:
        defs = json.loads(
            subprocess.run(
                [".venv/bin/sitefleet", "broker", "definitions", "--vhost", vhost],
                env={k: v for k, v in os.environ.items() if not k.startswith("SITEFLEET_")},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        defs.pop("vhosts")
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(defs, f)
            f.flush()
            os.chmod(f.name, 0o644)  # the broker node (user rabbitmq) reads the file
            subprocess.run(["rabbitmqctl", "-q", "import_definitions", f.name], check=True)
        names = [q["name"] for q in defs["queues"]]
        assert len(names) == len(broker.ALL_QUEUES) * (2 + len(CommonSettings().retry_delays))
        connection = await aio_pika.connect(f"{AMQP_BASE}/{vhost}")
        async with connection:
            for name in names:  # the import is asynchronous: wait until every queue exists
                for _ in range(100):
                    channel = await connection.channel()
                    try:
                        await channel.declare_queue(name, passive=True)
                        break
                    except aio_pika.exceptions.ChannelClosed:
                        await asyncio.sleep(0.1)
                else:
                    raise AssertionError(f"{name} was not imported")
            settings = CommonSettings()
            # Re-declaring with different arguments would close the channel with 406.
            await broker.declare_topology(
                await connection.channel(), settings.retry_delays, settings.delivery_limit
            )
    finally:
        drop_vhost(vhost)
