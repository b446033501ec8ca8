"""The Celery 5 baseline of S5: one no-op task, persistent and confirmed like ours; each run
appends "seq sent received" to BENCH_OUT so the harness can count and time deliveries."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1//"))
app.conf.update(
    broker_transport_options={"confirm_publish": True},
    task_acks_late=True,
    task_ignore_result=True,
    task_default_delivery_mode="persistent",
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]  # celery is untyped
def noop(seq: int, sent: float) -> None:
    received = time.time()
    with open(os.environ["BENCH_OUT"], "a") as out:
        out.write(f"{seq} {sent} {received}\n")
