"""S10: an alert storm — N failure events of one error across 50 sites over T seconds —
through our notifier and through Alertmanager 0.25 (Debian ``prometheus-alertmanager``,
gossip off, its own config, storage and port in a temp dir), with the same timers
(group_wait, group_interval) and both posting to a webhook receiver on loopback.

Ours: the notifier as it runs (``python -m services.notifier``) on a fresh vhost and
database, fed ``deployment.failed`` events through RabbitMQ. Alertmanager: the same events
as alerts POSTed to /api/v2/alerts (one POST per batch, as Prometheus sends them), labels
(alertname, tenant, site, error_code), grouped by all of them: 50 groups on both sides.
Figures: notifications received, time from the first event to the first notification,
the shortest time between two notifications of one group, and how many events the
notifications account for (ours: digest counts; Alertmanager reports alerts, not
occurrences, so it accounts for one per group)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.report import Row, ms, verdict
from bench.s5_queue import add_vhost, delete_vhost
from bench.stack import Stack
from cli.devstack import procs
from shared import broker
from shared.messages import DeploymentFailed, ErrorInfo
from shared.migrate import upgrade
from shared.settings import PROJECT_ROOT

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
SITES = 50
GROUP_WAIT = 5.0
GROUP_INTERVAL = 15.0


class Receiver:
    """Records (arrival time, group key, body) of every POST."""

    def __init__(self, group_key: Callable[[dict[str, Any]], str]) -> None:
        self.got: list[tuple[float, str, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                receiver.got.append((time.monotonic(), group_key(body), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def storm(events: int, batches: int) -> list[list[tuple[str, str]]]:
    """(site, message) per event, in batches (sizes differ by one at most, summing to
    ``events``); messages differ only in numbers."""
    bounds = [events * b // batches for b in range(batches + 1)]
    return [
        [
            (f"site_{n % SITES:02d}", f"upload to web-{n % 7} failed after {n} ms")
            for n in range(bounds[b], bounds[b + 1])
        ]
        for b in range(batches)
    ]


async def pace(batches: list[list[tuple[str, str]]], seconds: float, send: Any) -> float:
    """Send each batch at its slot over ``seconds``; returns when the first went out."""
    started = time.monotonic()
    for n, batch in enumerate(batches):
        await send(batch)
        await asyncio.sleep(max(0.0, started + seconds * (n + 1) / len(batches) - time.monotonic()))
    return started


def shortest_gap(times_by_group: dict[str, list[float]]) -> float:
    """The shortest time between two notifications of one group (inf: none had two)."""
    gaps = [
        later - earlier
        for times in times_by_group.values()
        for earlier, later in zip(sorted(times), sorted(times)[1:], strict=False)
    ]
    return min(gaps, default=float("inf"))


def arrivals(got: list[tuple[float, str, dict[str, Any]]]) -> dict[str, list[float]]:
    by_group: dict[str, list[float]] = defaultdict(list)
    for at, key, _ in got:
        by_group[key].append(at)
    return by_group


def scheduled(got: list[tuple[float, str, dict[str, Any]]]) -> dict[str, list[float]]:
    """Ours: when each notification was made (its ``created_at``), before delivery."""
    by_group: dict[str, list[float]] = defaultdict(list)
    for _, key, body in got:
        by_group[key].append(datetime.fromisoformat(body["created_at"]).timestamp())
    return by_group


async def settle(got: list[Any], quiet: float) -> None:
    """Until nothing new arrived for ``quiet`` seconds."""
    seen, since = -1, time.monotonic()
    while time.monotonic() - since < quiet:
        if len(got) != seen:
            seen, since = len(got), time.monotonic()
        await asyncio.sleep(0.5)


async def ours(
    stack: Stack, batches: list[list[tuple[str, str]]], seconds: float
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    vhost = f"sitefleet-bench-s10-{tag}"
    db = f"sitefleet_bench_s10_{tag}"
    work = stack.tempdir("s10-ours")
    receiver = Receiver(lambda body: str(body.get("group_id")))
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{db}"')
    await admin.close()
    database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"
    proc = None
    connection = None
    try:
        await asyncio.to_thread(upgrade, database_url)
        amqp_url = add_vhost(vhost)
        connection = await broker.connect(amqp_url, name="bench")
        channel = await connection.channel()
        await broker.declare_topology(channel, [1.0, 5.0], 10)
        await channel.close()
        publisher = await broker.Publisher.open(connection)
        env = {
            "SITEFLEET_DATABASE_URL": database_url,
            "SITEFLEET_AMQP_URL": amqp_url,
            "SITEFLEET_RETRY_DELAYS": "[1.0, 5.0]",
            "SITEFLEET_OPS_WEBHOOK_URLS": json.dumps([receiver.url]),
            "SITEFLEET_GROUP_WAIT": str(GROUP_WAIT),
            "SITEFLEET_GROUP_INTERVAL": str(GROUP_INTERVAL),
            "SITEFLEET_REPEAT_INTERVAL": "3600",
            "SITEFLEET_PREFETCH": "200",
            "SITEFLEET_CHANNEL_RATES": '{"webhook": 10000}',
            "SITEFLEET_CHANNEL_BURSTS": '{"webhook": 10000}',
            "SITEFLEET_LOG_LEVEL": "WARNING",
        }
        proc = procs.start(
            [sys.executable, "-m", "services.notifier"],
            log=work / "notifier.log",
            env=env,
            cwd=PROJECT_ROOT,
        )
        deadline = time.monotonic() + 60
        while True:  # until it consumes
            ch = await connection.channel()
            queue = await ch.declare_queue("notifier.events", passive=True)
            await ch.close()
            if queue.declaration_result.consumer_count:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("notifier did not start: " + str(work / "notifier.log"))
            await asyncio.sleep(0.2)

        async def send(batch: list[tuple[str, str]]) -> None:
            await asyncio.gather(
                *(
                    publisher.publish_envelope(
                        broker.EVENTS_EXCHANGE,
                        DeploymentFailed(
                            deployment_id=f"dep_{uuid.uuid4().hex}",
                            tenant_id="ten_bench",
                            site_id=site,
                            domain=f"{site}.example",
                            generation=1,
                            status="failed",
                            error=ErrorInfo(code="upload_failed", message=message),
                        ).envelope(),
                    )
                    for site, message in batch
                )
            )

        started = await pace(batches, seconds, send)
        storm_s = time.monotonic() - started
        events = sum(len(b) for b in batches)
        deadline = time.monotonic() + 300
        while sum(b["count_since_last"] for _, _, b in receiver.got) < events:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await settle(receiver.got, GROUP_INTERVAL + 2)
        return {
            "sent": len(receiver.got),
            "first": min(at for at, _, _ in receiver.got) - started,
            "groups": len({key for _, key, _ in receiver.got}),
            "gap": shortest_gap(arrivals(receiver.got)),
            "scheduled_gap": shortest_gap(scheduled(receiver.got)),
            "accounted": sum(b["count_since_last"] for _, _, b in receiver.got),
            "storm_s": storm_s,
        }
    finally:
        if proc is not None:
            procs.stop(proc)
        if connection is not None:
            await connection.close()
        receiver.close()
        delete_vhost(vhost)
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


async def alertmanager(
    stack: Stack, batches: list[list[tuple[str, str]]], seconds: float
) -> dict[str, Any]:
    work = stack.tempdir("s10-am")
    receiver = Receiver(lambda body: str(body.get("groupKey")))
    port = procs.free_port()
    (work / "alertmanager.yml").write_text(
        "route:\n"
        "  receiver: hook\n"
        "  group_by: [alertname, tenant, site, error_code]\n"
        f"  group_wait: {GROUP_WAIT:g}s\n"
        f"  group_interval: {GROUP_INTERVAL:g}s\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: hook\n"
        "    webhook_configs:\n"
        f"      - url: {receiver.url}\n"
        "        send_resolved: true\n"
    )
    proc = procs.start(
        [
            ALERTMANAGER,
            f"--config.file={work / 'alertmanager.yml'}",
            f"--storage.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no gossip
            "--log.level=warn",
        ],
        log=work / "alertmanager.log",
    )
    try:
        procs.wait_for_port(port, proc=proc, timeout=30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            async def send(batch: list[tuple[str, str]]) -> None:
                now = datetime.now(UTC)
                alerts = [
                    {
                        "labels": {
                            "alertname": "DeploymentFailed",
                            "service": "deployer",
                            "tenant": "ten_bench",
                            "site": site,
                            "error_code": "upload_failed",
                        },
                        "annotations": {"message": message},
                        "startsAt": now.isoformat(),
                        "endsAt": (now + timedelta(hours=1)).isoformat(),
                    }
                    for site, message in batch
                ]
                answer = await http.post("/api/v2/alerts", json=alerts)
                answer.raise_for_status()

            started = await pace(batches, seconds, send)
            storm_s = time.monotonic() - started
            await settle(receiver.got, GROUP_INTERVAL + 2)
        return {
            "sent": len(receiver.got),
            "first": min(at for at, _, _ in receiver.got) - started
            if receiver.got
            else float("nan"),
            "groups": len({key for _, key, _ in receiver.got}),
            "gap": shortest_gap(arrivals(receiver.got)),
            # An Alertmanager notification lists alerts (one per site here), not how many
            # times each fired: the storm's occurrences are not counted anywhere.
            "accounted": sum(len(b.get("alerts", [])) for _, _, b in receiver.got),
            "storm_s": storm_s,
        }
    finally:
        procs.stop(proc)
        receiver.close()


def version() -> str:
    try:
        done = subprocess.run(
            [ALERTMANAGER, "--version"], capture_output=True, text=True, timeout=20
        )
    except OSError:
        return "absent"
    text = done.stdout + done.stderr
    return text.split("version ")[1].split()[0] if "version " in text else "unknown"


async def run(stack: Stack, *, quick: bool, reps: int, warmup: int) -> list[Row]:
    if not Path(ALERTMANAGER).exists() or shutil.which("rabbitmqctl") is None:
        raise RuntimeError("prometheus-alertmanager is not installed (bench/bootstrap.sh)")
    events, seconds, batch_count = (2_000, 20.0, 20) if quick else (10_000, 60.0, 60)
    batches = storm(events, batch_count)
    us = await ours(stack, batches, seconds)
    am = await alertmanager(stack, batches, seconds)

    def gap(seconds: float) -> str:
        return (
            "none (one notification per group)" if seconds == float("inf") else f"{seconds:.1f} s"
        )

    row = Row(
        f"S10 alert storm: {events:,} failure events over {seconds:.0f} s across {SITES} sites "
        f"(group_wait {GROUP_WAIT:g} s, group_interval {GROUP_INTERVAL:g} s)",
        f"{us['sent']} notifications to {us['groups']} groups; first after {ms(us['first'])}; "
        f"shortest gap in a group {gap(us['scheduled_gap'])} as scheduled "
        f"({gap(us['gap'])} at arrival); digests count {us['accounted']:,} of {events:,} events",
        f"Alertmanager {version()}: {am['sent']} notifications to {am['groups']} groups; "
        f"first after {ms(am['first'])}; shortest gap in a group {gap(am['gap'])}; "
        f"occurrences counted: none ({am['accounted']} alerts listed)",
        f"{us['sent'] / am['sent']:.1f}× Alertmanager's notifications" if am["sent"] else "—",
        "≤ 1 notification per group per group_interval; every event counted in a digest",
        verdict(
            per_interval=us["scheduled_gap"] >= GROUP_INTERVAL,
            every_event_counted=us["accounted"] == events,
        ),
    )
    row.notes.append(
        f"The same storm, paced in {batch_count} batches, went to each side in turn (ours "
        f"took {us['storm_s']:.1f} s to publish with confirms, Alertmanager's POSTs "
        f"{am['storm_s']:.1f} s); both posted to a webhook receiver on loopback; counted "
        f"until nothing new arrived for group_interval + 2 s. Ours: the notifier process on "
        "a fresh vhost and database, events through RabbitMQ, groups and deliveries in "
        "PostgreSQL. Alertmanager: gossip off, alerts by /api/v2/alerts one POST per batch; "
        "it keeps alerts in memory (a restart would lose them) and reports alerts, not "
        "occurrences: re-posting a firing alert is no news to it, so it sends one "
        "notification per group and nothing about the storm's size, while ours sends a "
        "digest per group_interval while new occurrences arrive, with their count. Ours "
        "'as scheduled' is the notification's created_at (the throttle's decision), 'at "
        "arrival' includes delivery. One run each (a storm, not a distribution)."
    )
    return [row]
