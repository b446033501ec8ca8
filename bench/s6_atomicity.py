"""S6: atomicity under load. 100 release switches while 3 clients fetch every file of the
site (each file embeds its release id), counted as in tests/deployer/test_atomicity.py:
errors (non-200 or not one whole file of one release), stale reads (a release older than
the last switch that returned before the request was sent), backwards pages and mixed
quiet pages (a page load with no switch during it that is not all one release).

Ours: ``LocalHost.activate`` behind the catch-all nginx. B0: the site's ``server{}`` root
rewritten to the new release dir + ``nginx -s reload`` on an nginx with 1k sites; its reload
latency (reload issued → first response of the new release) and nginx's memory (RSS of
master + workers, sampled every 10 ms) are reported."""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import sites
from bench.report import Row, ms, pct, spread, verdict
from bench.s1_new_site import seed_existing
from bench.stack import Stack, rss_kib, wait_served
from services.deployer.release import LocalHost
from shared.ids import new_id

SWITCHES, CLIENTS, EXISTING = 100, 3, 1_000
PAGE = [
    ("/", "index.html"),
    ("/about/", "about/index.html"),
    ("/assets/app.css", "assets/app.css"),
    ("/assets/app.js", "assets/app.js"),
    ("/img/hero.bin", "img/hero.bin"),
]
FILLER = {"img/hero.bin": 96 * 1024}


def file_body(release_id: str, rel: str, tag: str) -> bytes:
    head = f"{release_id} {rel} {tag}\n".encode()
    size = FILLER.get(rel, 2048)
    return head + (release_id.encode() * (size // len(release_id) + 1))[:size]


@dataclass
class Fetched:
    started: float
    finished: float
    status: int
    release: int | None


def write_release(root: Path, release: str, tag: str) -> None:
    for _, rel in PAGE:
        sites.write_file(root / rel, file_body(release, rel, tag))
    for sub in ("about", "assets", "img"):
        (root / sub).chmod(0o755)
    root.chmod(0o755)


async def storm(
    port: int, domain: str, ids: list[str], tag: str, switch_to: Callable[[int], Awaitable[None]]
) -> dict[str, int]:
    index = {release: n for n, release in enumerate(ids)}
    started_at, done_at = [time.monotonic()], [time.monotonic()]
    stop = asyncio.Event()

    async def visit() -> list[list[Fetched]]:
        pages: list[list[Fetched]] = []
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Host": domain}, timeout=10
        ) as client:
            while not stop.is_set():
                page = []
                for url, rel in PAGE:
                    t0 = time.monotonic()
                    try:
                        response = await client.get(url)
                        status, content = response.status_code, response.content
                    except httpx.HTTPError:
                        status, content = 0, b""
                    t1 = time.monotonic()
                    release = content.split(b" ", 1)[0].decode(errors="replace")
                    whole = release in index and content == file_body(release, rel, tag)
                    page.append(Fetched(t0, t1, status, index[release] if whole else None))
                pages.append(page)
        return pages

    async def switch() -> None:
        try:
            await asyncio.sleep(0.05)
            for n in range(1, SWITCHES + 1):
                started_at.append(time.monotonic())
                await switch_to(n)
                done_at.append(time.monotonic())
                await asyncio.sleep(0.15 if n % 10 == 0 else 0.01)
        finally:
            stop.set()

    visits, _ = await asyncio.gather(asyncio.gather(*(visit() for _ in range(CLIENTS))), switch())
    pages = [page for found in visits for page in found]
    fetches = [f for page in pages for f in page]
    good = [f for f in fetches if f.status == 200 and f.release is not None]
    quiet = [p for p in pages if _quiet(p, started_at, done_at)]
    return {
        "fetches": len(fetches),
        "pages": len(pages),
        "errors": len(fetches) - len(good),
        "stale": sum(f.release < bisect.bisect_right(done_at, f.started) - 1 for f in good),  # type: ignore[operator]
        "backwards": sum(
            [f.release for f in p] != sorted(f.release or 0 for f in p)
            for p in pages
            if all(f.release is not None for f in p)
        ),  # fmt: skip
        "quiet": len(quiet),
        "mixed": sum(len({f.release for f in p}) != 1 for p in quiet),
    }


def _quiet(page: list[Fetched], started: list[float], done: list[float]) -> bool:
    begin, end = page[0].started, page[-1].finished
    return not any(
        begin <= s <= end or begin <= d <= end or s <= begin <= d
        for s, d in zip(started[1:], done[1:], strict=True)
    )


def counts(found: dict[str, int]) -> str:
    return (
        f"{found['mixed']} mixed of {found['quiet']} quiet pages, {found['errors']} errors, "
        f"{found['stale']} stale, {found['backwards']} backwards ({found['fetches']:,} fetches)"
    )


async def run(stack: Stack, *, quick: bool, reps: int, warmup: int) -> list[Row]:
    tag = uuid.uuid4().hex
    domain = "switch.example.com"
    ids = [new_id("dep") for _ in range(SWITCHES + 1)]
    ours = stack.our_nginx("s6-ours")
    b0 = stack.b0_nginx("s6-b0")
    seed_existing(ours.sites_root, b0, EXISTING)
    b0.start()
    work = stack.tempdir("s6-src")
    host = LocalHost(ours.sites_root)
    for release in ids:
        write_release(work / release, release, tag)
        await host.upload(domain, release, work / release)
        write_release(b0.sites_root / domain / "releases" / release, release, tag)
    (b0.sites_root / domain).chmod(0o755)
    (b0.sites_root / domain / "releases").chmod(0o755)

    # Ours.
    await host.activate(domain, ids[0])
    switch_t: list[float] = []

    async def ours_switch(n: int) -> None:
        t0 = time.perf_counter()
        await host.activate(domain, ids[n])
        switch_t.append(time.perf_counter() - t0)

    workers = ours.workers()
    ours_found = await storm(ours.port, domain, ids, tag, ours_switch)
    ours_reloads = 0 if ours.workers() == workers else -1

    # B0.
    def b0_root(n: int) -> Path:
        return b0.sites_root / domain / "releases" / ids[n]

    b0.write_site(domain, b0_root(0))
    b0.reload()
    await asyncio.to_thread(wait_served, b0.port, domain, ids[0], 60)
    reload_t: list[float] = []
    idle_rss = rss_kib(b0.processes())
    peak = [idle_rss]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], rss_kib(b0.processes()))
            time.sleep(0.01)

    async def b0_switch(n: int) -> None:
        t0 = time.perf_counter()
        b0.write_site(domain, b0_root(n))
        await asyncio.to_thread(b0.reload)
        # The switch "returns" once the new release is served (B0 has no other signal).
        await asyncio.to_thread(wait_served, b0.port, domain, ids[n], 60)
        reload_t.append(time.perf_counter() - t0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        b0_found = await storm(b0.port, domain, ids, tag, b0_switch)
    finally:
        sampling.set()
        sampler.join()
    ok = [ours_found[k] == 0 for k in ("mixed", "errors", "stale", "backwards")]
    row = Row(
        f"S6 atomicity under load: {SWITCHES} switches, {CLIENTS} clients fetching every file",
        f"{counts(ours_found)}; switch {spread(switch_t)}; "
        f"{'0 nginx reloads' if ours_reloads == 0 else 'nginx workers changed'}",
        f"B0 (1k sites, reload per switch): {counts(b0_found)}; reload → served "
        f"{spread(reload_t)}; nginx RSS {idle_rss / 1024:.0f} MiB idle, "
        f"{peak[0] / 1024:.0f} MiB peak",
        f"switch {pct(reload_t, 50) / pct(switch_t, 50):.0f}× faster",
        "0 mixed, 0 errors, 0 stale reads; report B0's reload latency and memory",
        verdict(*ok, ours_found["quiet"] > 0, ours_reloads == 0),
    )
    row.notes.append(
        "Counted as in tests/deployer/test_atomicity.py. For B0 a switch counts as returned "
        f"only once the new release is served (p50 {ms(pct(reload_t, 50))}), so its stale "
        "count is as favourable to B0 as it can be."
    )
    return [row]
