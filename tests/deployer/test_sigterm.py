"""``python -m services.deployer`` stopped with SIGTERM in the middle of a burst of
deployments (some building, some uploading, some activating): it takes no new job,
finishes the deployments in hand within its grace and exits 0; with a grace too short
for them it hands them back (unacked, so redelivered) and still leaves the web host
consistent. Either way no site's ``current`` points at a partial release, and after a
restart every deployment goes live exactly as requested: none lost, none parked, none
failed, and none reported twice unless it was handed back mid-flight."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from aio_pika.abc import AbstractQueue, AbstractRobustConnection
from sqlalchemy import select

from shared import broker
from shared.db import SessionMaker, create_engine, create_sessionmaker
from shared.messages import Envelope
from shared.models import Deployment
from shared.settings import PROJECT_ROOT, CommonSettings
from tests.fixtures.components import world_readable_tempdir
from tests.fixtures.platform import PlatformFactory, wait_until

pytestmark = pytest.mark.slow

SITES = 16
FILES = 60  # per release, each naming its release: a partial or mixed release shows
# Seconds each site's build sleeps, by site number: the deployer's prefetch (8) jobs run at
# once and leave the build at different times, so a SIGTERM finds every phase in progress.
DELAYS = (0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.1, 2.4)
STOP_TIMEOUT = 90.0  # bounds how long a broken drain takes to show (not a timing assertion)
IN_FLIGHT = ("building", "uploading", "activating")
OUTCOMES = ("deployment.succeeded", "deployment.failed", "deployment.superseded")

BUILD_SCRIPT = f"""
import os, re, time
rid = re.search(r'content="([a-z]+_[0-9a-f]+)"', open("index.html").read()).group(1)
time.sleep(float(open("delay.txt").read()))
os.makedirs("files")
for i in range({FILES}):
    open(f"files/{{i}}.txt", "w").write(f"{{rid}} {{i}} ".ljust(2048, "x"))
"""
MANIFEST = {
    "name": "burst",
    "version": "1.0.0",
    "title": "Burst",
    "description": "A build that takes a while, then many files.",
    "params_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["title", "delay"],
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 80},
            "delay": {"type": "number", "minimum": 0, "maximum": 10},
        },
    },
    "preview_params": {"title": "Burst", "delay": 0},
    "nginx_profile": "static",
    "build": [{"run": ["/usr/bin/python3", "-c", BUILD_SCRIPT]}],
}
INDEX = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="sitefleet-release" content="{{ release.id }}">'
    "<title>{{ params.title }}</title></head><body><h1>{{ params.title }}</h1></body></html>"
)
RELEASE_FILES = {"index.html", "delay.txt", *(f"files/{i}.txt" for i in range(FILES))}


def templates_with_burst() -> Path:
    root = world_readable_tempdir("templates")
    shutil.copytree(PROJECT_ROOT / "templates" / "landing", root / "landing")
    pack = root / "burst" / "1.0.0"
    (pack / "src").mkdir(parents=True)
    (pack / "manifest.json").write_text(json.dumps(MANIFEST))
    (pack / "src" / "index.html.j2").write_text(INDEX)
    (pack / "src" / "delay.txt.j2").write_text("{{ params.delay }}")
    return root


def check_release(release: Path) -> None:
    """A release directory on the host holds the whole build, all of it its own."""
    files = {str(p.relative_to(release)) for p in release.rglob("*") if not p.is_dir()}
    assert files == RELEASE_FILES, f"{release}: {len(files)} files"
    assert f'content="{release.name}"' in (release / "index.html").read_text()
    for i in range(FILES):
        assert (release / "files" / f"{i}.txt").read_text().startswith(f"{release.name} {i} ")


def check_host(sites_root: Path, domains: Iterable[str]) -> dict[str, str | None]:
    """Each site's current release on the web host, after checking that the host is
    consistent: every release directory whole, ``current`` absent or on one of them, no
    ``current.tmp-*`` link left behind. (A ``releases/.tmp-*`` directory is an upload cut
    short: never served, redone or pruned by the next deployment.)"""
    served: dict[str, str | None] = {}
    for domain in domains:
        site = sites_root / domain
        served[domain] = None
        if not site.exists():
            continue
        stray = [p.name for p in site.iterdir() if p.name.startswith("current.tmp-")]
        assert not stray, f"{domain}: {stray}"
        releases = site / "releases"
        for release in releases.iterdir() if releases.exists() else ():
            if not release.name.startswith(".tmp-"):
                check_release(release)
        current = site / "current"
        if current.is_symlink():
            target = os.readlink(current)
            assert target.startswith("releases/") and (site / target).is_dir(), target
            served[domain] = target.removeprefix("releases/")
        else:
            assert not current.exists(), f"{domain}: current is not a symlink"
    return served


async def statuses(sessionmaker: SessionMaker, ids: Iterable[str]) -> dict[str, str]:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(Deployment.id, Deployment.status).where(Deployment.id.in_(list(ids)))
        )
    return {dep_id: status for dep_id, status in rows}


async def drain(queue: AbstractQueue, into: list[Envelope]) -> None:
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        into.append(Envelope.model_validate_json(message.body))


async def test_sigterm_mid_burst_finishes_or_hands_back_and_loses_nothing(
    platforms: PlatformFactory,
) -> None:
    templates = templates_with_burst()
    platform = await platforms.start(
        "depsigterm",
        services=("api",),
        extra_env={
            "SITEFLEET_TEMPLATES_DIR": str(templates),
            # Every phase reported as it starts: the test watches deployments in flight.
            "SITEFLEET_PROGRESS_REPORT_DELAY": "0",
        },
    )
    engine = create_engine(platform.database_url, application_name="tests", pool_size=1)
    sessionmaker = create_sessionmaker(engine)
    connection = await broker.connect(platform.amqp_url, name="tests-deployer-sigterm")
    channel = await connection.channel()
    # Declared here too (idempotent), so the events exchange exists before anyone publishes.
    await broker.declare_topology(
        channel,
        json.loads(platform.env["SITEFLEET_RETRY_DELAYS"]),
        CommonSettings().delivery_limit,
    )
    outcomes = await channel.declare_queue(exclusive=True)
    for key in (*OUTCOMES, "deployment.parked"):
        await outcomes.bind(broker.EVENTS_EXCHANGE, routing_key=key)
    events: list[Envelope] = []

    def start_deployer(**env: str) -> None:
        platform.start_service("deployer", env)

    async def sigterm_deployer() -> tuple[int, str]:
        proc = platform.procs.pop("deployer")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        return code, platform.log_tail("deployer", 400)

    deployments: dict[str, str] = {}  # domain -> deployment id

    async def until(
        what: str, done: Callable[[dict[str, str]], bool], timeout: float = 60
    ) -> dict[str, str]:
        async def probe() -> dict[str, str] | None:
            now = await statuses(sessionmaker, deployments.values())
            return now if done(now) else None

        result: dict[str, str] = await wait_until(probe, timeout=timeout, what=what)
        return result

    async def jobs_accounted_for() -> None:
        """With no deployer running: every job has either announced its outcome (published
        before its ack) or is back in ``deployer.jobs``; none is in between."""
        await drain(outcomes, events)
        announced = {e.payload["deployment_id"] for e in events}
        assert await depth(connection, broker.DEPLOYER_JOBS.name) == SITES - len(announced)

    try:
        async with platform.client(await platform.new_tenant()) as api:
            for n in range(SITES):
                domain = f"burst-{n:02d}.sigterm.example"
                response = await api.post(
                    "/v1/sites",
                    json={
                        "domain": domain,
                        "template": "burst",
                        "params": {"title": f"Burst {n}", "delay": DELAYS[n % len(DELAYS)]},
                    },
                )
                assert response.status_code == 201, response.text
                deployments[domain] = response.json()["latest_deployment_id"]

            # 1. SIGTERM with deployments in every phase: they finish, the rest wait.
            start_deployer()
            before = await until(
                "deployments live and in flight",
                lambda s: _count(s, "live") >= 3 and _count(s, *IN_FLIGHT) >= 3,
            )
            code, log = await sigterm_deployer()
            assert code == 0, log
            assert "still in hand" not in log
            check_host(platform.sites_root, deployments)
            await jobs_accounted_for()
            in_flight = {d for d, s in before.items() if s in IN_FLIGHT}
            # Without a deployer running, every deployment it had started goes live (the
            # API records the outcomes it published while draining), and no other starts.
            after = await until(
                "the drained deployments to be recorded live",
                lambda s: all(s[d] == "live" for d in in_flight),
                timeout=30,
            )
            assert set(after.values()) <= {"live", "queued"}, Counter(after.values())
            assert _count(after, "queued") > 0, "the deployer took every job before SIGTERM"

            # 2. SIGTERM with a grace too short for the deployments in hand: they are handed
            # back, and the host is left consistent.
            start_deployer(SITEFLEET_SHUTDOWN_GRACE="0.2")
            before = await until(
                "more deployments in flight",
                lambda s: _count(s, *IN_FLIGHT) >= 3,
            )
            code, log = await sigterm_deployer()
            assert code == 0, log
            assert "still in hand" in log  # the grace did run out on deployments in hand
            check_host(platform.sites_root, deployments)
            await jobs_accounted_for()
            live_before_hand_back = {d for d, s in before.items() if s == "live"}

            # 3. A new deployer finishes every job.
            start_deployer()
            final = await until(
                "every deployment live",
                lambda s: set(s.values()) == {"live"} and len(s) == SITES,
                timeout=90,
            )
            assert len(final) == SITES
            served = check_host(platform.sites_root, deployments)
            assert served == {domain: dep for domain, dep in deployments.items()}
            for domain, dep_id in deployments.items():
                page = await platform.fetch_site(domain)
                assert page.status_code == 200
                assert f'content="{dep_id}"' in page.text
                leftovers = [
                    p.name
                    for p in (platform.sites_root / domain / "releases").iterdir()
                    if p.name != dep_id
                ]
                assert not leftovers, f"{domain}: {leftovers}"  # pruned: no upload cut short

            # Outcomes: one success per deployment; only one handed back mid-flight may
            # have announced its success twice (same release: harmless), nothing else.
            await asyncio.sleep(1)  # a late duplicate would be published by now
            await drain(outcomes, events)
            kinds = Counter(e.type for e in events)
            assert set(kinds) == {"deployment.succeeded"}, kinds
            reported = Counter(e.payload["deployment_id"] for e in events)
            assert set(reported) == set(deployments.values())
            twice = {dep for dep, n in reported.items() if n > 1}
            assert not twice & live_before_hand_back, twice
            assert await depth(connection, broker.DEPLOYER_JOBS.parked) == 0
            assert await depth(connection, broker.DEPLOYER_JOBS.name) == 0
    finally:
        for name in list(platform.procs):
            platform.stop_service(name)
        await channel.close()
        await connection.close()
        await engine.dispose()
        shutil.rmtree(templates, ignore_errors=True)


async def depth(connection: AbstractRobustConnection, name: str) -> int:
    """The messages ready in queue ``name`` now. On a channel of its own: a robust channel
    answers a passive declare of a queue it declared before from its cache (stale)."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await channel.close()


def _count(statuses: dict[str, str], *wanted: str) -> int:
    return sum(1 for s in statuses.values() if s in wanted)
