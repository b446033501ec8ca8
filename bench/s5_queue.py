"""S5: queue overhead with no-op jobs, persistent and confirmed, on a fresh RabbitMQ vhost.

Ours: ``shared.broker.Publisher`` (confirmed, mandatory) into the deployer's quorum queue,
``shared.consumer.Consumer`` decoding each envelope and calling a no-op handler. Throughput:
N jobs published with up to 200 confirms in flight, until the last is handled. Dispatch
latency: one job at a time, publish called → handler entered. Baseline: Celery 5 (prefork,
concurrency 2, confirm_publish, acks late) with a no-op task on the same broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aio_pika

from bench.report import Row, ms, pct, spread, verdict
from bench.stack import Stack
from cli.devstack import procs
from shared.broker import DEPLOYER_JOBS, Publisher, declare_queue
from shared.consumer import Consumer
from shared.messages import Envelope, Message, SiteRemovalRequested
from shared.settings import PROJECT_ROOT

AMQP_BASE = os.environ.get("SITEFLEET_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672")
WINDOW = 200


def add_vhost(name: str) -> str:
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True
    )
    return f"{AMQP_BASE}/{name}"


def delete_vhost(name: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=False)


async def ours(url: str, jobs: int, probes: int) -> tuple[float, list[float]]:
    received: dict[str, float] = {}
    done = asyncio.Event()
    target = [jobs]

    async def handler(envelope: Envelope, payload: Message) -> None:
        received[payload.site_id] = time.perf_counter()  # type: ignore[attr-defined]
        if len(received) >= target[0]:
            done.set()

    pub_conn = await aio_pika.connect(url)
    sub_conn = await aio_pika.connect(url)
    try:
        channel = await pub_conn.channel()
        await declare_queue(channel, DEPLOYER_JOBS, [1.0], 5)
        publisher = await Publisher.open(pub_conn)
        consumer = Consumer(DEPLOYER_JOBS, handler, publisher, [1.0])
        await consumer.start(await sub_conn.channel(), prefetch=100)
        window = asyncio.Semaphore(WINDOW)

        async def submit(n: int) -> None:
            async with window:
                await publisher.submit(
                    SiteRemovalRequested(tenant_id="t", site_id=f"s{n}", domain="example.com")
                )

        started = time.perf_counter()
        await asyncio.gather(*(submit(n) for n in range(jobs)))
        await asyncio.wait_for(done.wait(), 300)
        throughput = jobs / (time.perf_counter() - started)
        latency = []
        for n in range(probes):
            key = f"p{n}"
            target[0] = len(received) + 1
            done.clear()
            t0 = time.perf_counter()
            await publisher.submit(
                SiteRemovalRequested(tenant_id="t", site_id=key, domain="example.com")
            )
            await asyncio.wait_for(done.wait(), 30)
            latency.append(received[key] - t0)
        await consumer.stop(5)
        return throughput, latency
    finally:
        await pub_conn.close()
        await sub_conn.close()


def lines(path: Path) -> list[str]:
    """Complete lines only (the worker may be mid-write)."""
    return path.read_text().split("\n")[:-1] if path.exists() else []


def file_worker(
    name: str,
    argv: list[str],
    url: str,
    work: Path,
    jobs: int,
    probes: int,
) -> tuple[float, list[float]]:
    """A baseline whose worker process appends "seq sent received" per job to a file:
    Celery (``bench.celery_app``) or Dramatiq (``bench.dramatiq_app``)."""
    out = work / f"{name}.out"
    env = {"BENCH_AMQP_URL": url, "BENCH_OUT": str(out), "PYTHONPATH": str(PROJECT_ROOT)}
    worker = procs.start(argv, log=work / f"{name}.log", env=env, cwd=PROJECT_ROOT)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        if name == "celery":
            from bench.celery_app import app, noop

            app.conf.broker_url = url

            def send(seq: int) -> None:
                noop.apply_async((seq, time.time()))
        else:
            from bench.dramatiq_app import noop as actor

            def send(seq: int) -> None:
                actor.send(seq, time.time())

        send(-1)  # warm-up: wait for the worker to take it
        deadline = time.monotonic() + 120
        while not lines(out):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} worker did not start: see {work / name}.log")
            time.sleep(0.05)
        started = time.perf_counter()
        for n in range(jobs):
            send(n)
        while len(lines(out)) < jobs + 1:
            if time.perf_counter() - started > 300:
                raise TimeoutError(f"{name} did not finish the jobs in 300 s")
            time.sleep(0.01)
        throughput = jobs / (time.perf_counter() - started)
        latency = []
        for n in range(probes):
            count = len(lines(out))
            send(jobs + n)
            while len(found := lines(out)) <= count:
                time.sleep(0.0002)
            _, sent, got = found[-1].split()
            latency.append(float(got) - float(sent))
        return throughput, latency
    finally:
        procs.stop(worker)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


CELERY_ARGV = [
    sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool", "prefork",
    "--concurrency", "2", "--without-gossip", "--without-mingle", "--without-heartbeat",
    "-l", "WARNING",
]  # fmt: skip
# Dramatiq's defaults on this machine, named: one process per core, 8 threads each.
DRAMATIQ_ARGV = [
    sys.executable, "-m", "dramatiq", "bench.dramatiq_app", "--processes", "2", "--threads",
    "8",
]  # fmt: skip


async def run(stack: Stack, *, quick: bool, reps: int, warmup: int) -> list[Row]:
    jobs, probes = (1_000, 100) if quick else (10_000, 300)
    work = stack.tempdir("s5")
    ours_vhost = f"sitefleet-bench-{uuid.uuid4().hex[:10]}"
    celery_vhost = ours_vhost + "-celery"
    dramatiq_vhost = ours_vhost + "-dramatiq"
    try:
        ours_tp, ours_lat = await ours(add_vhost(ours_vhost), jobs, probes)
        celery_tp, celery_lat = await asyncio.to_thread(
            file_worker, "celery", CELERY_ARGV, add_vhost(celery_vhost), work, jobs, probes
        )
        dramatiq_tp, dramatiq_lat = await asyncio.to_thread(
            file_worker, "dramatiq", DRAMATIQ_ARGV, add_vhost(dramatiq_vhost), work, jobs, probes
        )
    finally:
        delete_vhost(ours_vhost)
        delete_vhost(celery_vhost)
        delete_vhost(dramatiq_vhost)
    row = Row(
        f"S5 queue overhead: {jobs:,} no-op jobs, persistent + confirmed",
        f"{ours_tp:,.0f} jobs/s; dispatch {spread(ours_lat)}",
        f"Celery 5 prefork ×2: {celery_tp:,.0f} jobs/s; dispatch p50 {ms(pct(celery_lat, 50))}"
        f", p99 {ms(pct(celery_lat, 99))}. Dramatiq 2 ×8 threads: {dramatiq_tp:,.0f} jobs/s; "
        f"dispatch p50 {ms(pct(dramatiq_lat, 50))}, p99 {ms(pct(dramatiq_lat, 99))}",
        f"{ours_tp / celery_tp:.1f}× Celery, {ours_tp / dramatiq_tp:.1f}× Dramatiq throughput",
        "≥ 5,000 jobs/s; dispatch p50 ≤ 1 ms, p99 ≤ 5 ms; ≥ 2× Celery, ≥ Dramatiq",
        verdict(jobs_per_s=ours_tp >= 5000, p50=pct(ours_lat, 50) <= 0.001,
                p99=pct(ours_lat, 99) <= 0.005, vs_Celery=ours_tp >= 2 * celery_tp,
                vs_Dramatiq=ours_tp >= dramatiq_tp),
    )  # fmt: skip
    row.notes.append(
        f"Throughput over {jobs:,} jobs ({WINDOW} confirms in flight for ours; Celery's "
        "apply_async and Dramatiq's send wait for each confirm), dispatch latency over "
        f"{probes} jobs sent one at a time. Ours runs publisher and consumer in this process "
        "on two connections into a quorum queue; the baselines' workers are their own "
        "processes, on classic durable queues (their default), and record arrival in a file. "
        f"Celery 5 (prefork, concurrency 2, confirm_publish, acks late); Dramatiq "
        f"{dramatiq_version()} with its RabbitMQ broker (pika), confirm_delivery, persistent "
        "messages, its CLI defaults on this machine (2 processes × 8 threads), default "
        "middleware. Each on its own vhost of the same RabbitMQ, one after the other."
    )
    return [row]


def dramatiq_version() -> str:
    import dramatiq

    return str(dramatiq.__version__)
