"""RabbitMQ definitions (the management plugin's import format) generated from the topology
in shared/broker.py, for fresh brokers and for review: infra/rabbitmq/definitions.json."""

from __future__ import annotations

from typing import Any

from shared import broker


def topology_definitions(
    retry_delays: list[float], delivery_limit: int, vhost: str = "/"
) -> dict[str, Any]:
    quorum = {"x-queue-type": "quorum"}
    queues: list[dict[str, Any]] = []
    bindings: list[dict[str, Any]] = []

    def queue(name: str, arguments: dict[str, Any]) -> None:
        queues.append(
            {
                "name": name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": {**quorum, **arguments},
            }
        )

    for spec in broker.ALL_QUEUES:
        queue(spec.parked, {})
        queue(spec.name, {"x-delivery-limit": delivery_limit, **broker.dead_letter_to(spec.parked)})
        for key in spec.bindings:
            bindings.append(
                {
                    "source": spec.exchange,
                    "vhost": vhost,
                    "destination": spec.name,
                    "destination_type": "queue",
                    "routing_key": key,
                    "arguments": {},
                }
            )
        for delay in retry_delays:
            queue(
                spec.wait_queue(delay),
                {"x-message-ttl": round(delay * 1000), **broker.dead_letter_to(spec.name)},
            )
    exchanges = [
        {
            "name": name,
            "vhost": vhost,
            "type": "topic",
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
        for name in (broker.JOBS_EXCHANGE, broker.EVENTS_EXCHANGE)
    ]
    return {
        "vhosts": [{"name": vhost}],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }
