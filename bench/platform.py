"""The whole platform for S4 and S8: api, deployer, dns and notifier as real processes
(``python -m services.<name>``) on a fresh RabbitMQ vhost and PostgreSQL database, with their
own nginx (the production catch-all config) and PowerDNS in a temp dir — the platform the
end-to-end tests start (``tests/fixtures/platform.py``), reused so both run the same thing.

Also: creating sites through the API and noticing when nginx serves them, and the memory
and disk figures of a running platform."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx

from bench.s9_disk import usage
from bench.stack import children, rss_kib
from tests.fixtures.platform import ALL_SERVICES, Platform, PlatformFactory, wait_until

# Services log warnings only: INFO lines per deployment would be part of what we measure.
QUIET = {"SITEFLEET_LOG_LEVEL": "WARNING"}


@contextlib.asynccontextmanager
async def running(
    name: str,
    *,
    services: tuple[str, ...] = ALL_SERVICES,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Platform]:
    """A started platform, ready (API ready, every consuming service consuming); stopped
    and removed (processes, vhost, database, temp dir) on exit, whatever happened."""
    factory = PlatformFactory(f"bench{uuid.uuid4().hex[:8]}")
    try:
        platform = await factory.start(
            name, services=services, extra_env={**QUIET, **(extra_env or {})}
        )
        await wait_ready(platform, services)
        yield platform
    finally:
        for cleanup in reversed(factory.cleanups):
            with contextlib.suppress(Exception):
                await cleanup()


async def connect(url: str, attempts: int = 10) -> aio_pika.abc.AbstractConnection:
    """A connection to the shared broker, which may stall a handshake under other people's
    load (a run once hung here for good): each try bounded, a few tries."""
    for attempt in range(attempts):
        try:
            return await asyncio.wait_for(aio_pika.connect(url), 15)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(2)
    raise AssertionError("unreachable")


async def wait_ready(platform: Platform, services: tuple[str, ...]) -> None:
    async def api_ready() -> bool:
        async with platform.client() as client:
            return (await client.get("/readyz")).status_code == 200

    if "api" in services:
        await wait_until(api_ready, timeout=60, what="the API to be ready")
    queues = {"deployer": "deployer.jobs", "dns": "dns.jobs", "notifier": "notifier.events"}
    wanted = [queues[s] for s in services if s in queues]
    if not wanted:
        return
    connection = await connect(platform.amqp_url)
    try:

        async def consuming() -> bool:
            for queue_name in wanted:
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(queue_name, passive=True)
                    if not queue.declaration_result.consumer_count:
                        return False
                except aio_pika.exceptions.ChannelClosed:
                    return False  # not declared yet
                finally:
                    with contextlib.suppress(Exception):
                        await channel.close()
            return True

        await wait_until(consuming, timeout=60, interval=0.3, what=f"consumers on {wanted}")
    finally:
        await connection.close()


def landing(title: str) -> dict[str, Any]:
    """The body's params: the landing template (no build step, no nginx rules)."""
    return {"title": title, "contact_email": "owner@example.org", "tagline": "Fresh bread daily"}


async def served(port: int, host: str) -> bool:
    """GET / through nginx on a fresh connection answers 200 (False when the connection
    fails: a loaded machine may refuse or reset one; the watch asks again next pass)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
        await asyncio.wait_for(reader.read(), 5)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return status.split(b" ", 2)[1:2] == [b"200"]


class LiveWatch:
    """Notices when each watched site is first served by nginx: every ``interval`` it looks
    for each pending site's ``current`` link (a stat; no HTTP for sites not switched yet)
    and confirms with a GET through nginx. With many sites pending it looks less often
    (``PER_PENDING`` seconds per pending site between passes), so watching a burst of
    thousands takes a few percent of a core, not the CPU it measures. Times are
    ``time.perf_counter()``."""

    PER_PENDING = 1e-4

    def __init__(self, platform: Platform, interval: float = 0.01) -> None:
        self.sites_root = platform.sites_root
        self.port = platform.http_port
        self.interval = interval
        self.pending: set[str] = set()
        self.live: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def watch(self, domain: str) -> None:
        self.pending.add(domain)

    async def __aenter__(self) -> LiveWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            for domain in [d for d in self.pending if (self.sites_root / d / "current").exists()]:
                if await served(self.port, domain):
                    self.live[domain] = time.perf_counter()
                    self.pending.discard(domain)
                    self._changed.set()
            await asyncio.sleep(max(self.interval, len(self.pending) * self.PER_PENDING))

    async def until_live(self, domains: list[str], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while any(d not in self.live for d in domains):
            if self._task is not None and self._task.done():
                self._task.result()  # the watch died: raise its error, do not wait it out
                raise RuntimeError("the live watch stopped")
            left = deadline - time.perf_counter()
            if left <= 0:
                missing = [d for d in domains if d not in self.live]
                raise TimeoutError(f"{len(missing)} site(s) not live after {timeout} s")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))


async def create_sites(
    api: httpx.AsyncClient,
    watch: LiveWatch,
    domains: list[str],
    concurrency: int,
    posted: dict[str, float],
    answered: list[float] | None = None,
) -> int:
    """POST /v1/sites for each domain, ``concurrency`` at a time; records when each POST
    started; returns the number of non-201 answers."""
    gate = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(domain: str) -> None:
        nonlocal failures
        async with gate:
            watch.watch(domain)
            started = time.perf_counter()
            posted[domain] = started
            response = await api.post(
                "/v1/sites",
                json={"domain": domain, "template": "landing", "params": landing(domain)},
            )
            if answered is not None:
                answered.append(time.perf_counter() - started)
            if response.status_code != 201:
                failures += 1
                watch.pending.discard(domain)

    await asyncio.gather(*(one(d) for d in domains))
    return failures


def tree(pid: int) -> set[int]:
    """A process and all its descendants."""
    pids: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        if current not in pids:
            pids.add(current)
            todo += children(current)
    return pids


def tree_rss_kib(pid: int) -> int:
    """RSS of a process and all its descendants (KiB)."""
    return rss_kib(tree(pid))


TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants,
    with what their waited-for children used."""
    total = 0
    for one in tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def pids_with(fragment: str) -> set[int]:
    """Processes whose command line contains ``fragment``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if fragment.encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
    return found


async def cpu(platform: Platform) -> dict[str, float]:
    """CPU seconds used so far by each service's process tree, nginx, PowerDNS, and the
    PostgreSQL backends connected to the platform's database."""
    out = {name: tree_cpu(proc.pid) for name, proc in platform.procs.items()}
    out["nginx"] = tree_cpu(nginx_pid(platform))
    pdns = pids_with(str(platform.sites_root.parent / "pdns"))
    out["pdns"] = sum(tree_cpu(p) for p in pdns)
    dsn = platform.database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    out["postgres"] = sum(tree_cpu(r["pid"]) for r in rows)
    return out


def nginx_pid(platform: Platform) -> int:
    return int((platform.sites_root.parent / "nginx" / "nginx.pid").read_text().split()[0])


def memory(platform: Platform) -> dict[str, int]:
    """RSS (KiB) of each service's process tree and of nginx (master + workers)."""
    out = {name: tree_rss_kib(proc.pid) for name, proc in platform.procs.items()}
    out["nginx"] = tree_rss_kib(nginx_pid(platform))
    return out


async def disk(platform: Platform) -> dict[str, int]:
    """Bytes the web host's sites root takes (unique inodes: allocated and apparent, and
    the inode count), and the size of the platform's PostgreSQL database."""
    found = await asyncio.to_thread(usage, platform.sites_root)
    dsn = platform.database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        found["database"] = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    return found
