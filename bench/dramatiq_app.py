"""The Dramatiq baseline of S5: one no-op actor on Dramatiq's RabbitMQ broker, persistent
(Dramatiq publishes with delivery_mode 2) and confirmed (``confirm_delivery=True``), like
ours and Celery; each run appends "seq sent received" to BENCH_OUT."""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

broker = RabbitmqBroker(
    url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    confirm_delivery=True,
)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", max_retries=0)
def noop(seq: int, sent: float) -> None:
    received = time.time()
    with open(os.environ["BENCH_OUT"], "a") as out:
        out.write(f"{seq} {sent} {received}\n")
