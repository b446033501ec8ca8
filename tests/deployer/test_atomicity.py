"""Release switches are atomic for visitors: 100 switches while clients fetch every file of
the site through the real nginx.

What "atomic" means here, per response and per page load (one pass over every file):
- every response is 200 and is, byte for byte, one whole file of exactly one release;
- no stale read: a request sent after a switch returned serves that release or a newer one;
- nothing from the future: a response never carries a release whose switch had not
  started by the time the response arrived;
- a page load never goes back to an older release once it has seen a newer one, and a page
  load during which no switch started or finished is all one release (no mixed page).
"""

import asyncio
import bisect
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.deployer.release import LocalHost
from shared.ids import new_id
from tests.deployer.conftest import Nginx

SWITCHES = 100
CLIENTS = 3
# (URL path, file): nginx's index and try_files lookups are part of what is tested.
PAGE = [
    ("/", "index.html"),
    ("/about/", "about/index.html"),
    ("/assets/app.css", "assets/app.css"),
    ("/assets/app.js", "assets/app.js"),
    ("/img/hero.bin", "img/hero.bin"),  # large enough to be sent in several chunks
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
    release: int | None  # index of the release whose file came back whole, else None


async def test_release_switches_are_atomic_for_visitors(
    host: LocalHost, domain: str, nginx: Nginx, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex
    ids = [new_id("dep") for _ in range(SWITCHES + 1)]
    index = {release: n for n, release in enumerate(ids)}
    for release in ids:
        src = tmp_path / release
        for _, rel in PAGE:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(file_body(release, rel, tag))
        await host.upload(domain, release, src)
    await host.activate(domain, ids[0])
    # Switch n started at switch_started[n] and returned at switch_done[n].
    switch_started, switch_done = [time.monotonic()], [time.monotonic()]
    stop = asyncio.Event()

    async def switch() -> None:
        try:
            await asyncio.sleep(0.05)  # let every client get going first
            for n in range(1, SWITCHES + 1):
                switch_started.append(time.monotonic())
                await host.activate(domain, ids[n])
                switch_done.append(time.monotonic())
                # Mostly back to back; now and then a pause long enough for whole quiet pages.
                await asyncio.sleep(0.15 if n % 10 == 0 else 0.01)
        finally:
            stop.set()

    *visits, _ = await asyncio.gather(
        *(visit(nginx.port, domain, index, tag, stop) for _ in range(CLIENTS)), switch()
    )

    pages = [page for pages in visits for page in pages]
    fetches = [f for page in pages for f in page]
    assert [f for f in fetches if f.status != 200 or f.release is None] == []
    stale = [f for f in fetches if f.release < bisect.bisect_right(switch_done, f.started) - 1]
    assert stale == []
    future = [f for f in fetches if f.release > bisect.bisect_right(switch_started, f.finished) - 1]
    assert future == []
    backwards = [p for p in pages if [f.release for f in p] != sorted(f.release for f in p)]
    assert backwards == []
    quiet = [p for p in pages if _no_switch_during(p, switch_started, switch_done)]
    mixed = [p for p in quiet if len({f.release for f in p}) != 1]
    assert mixed == []
    # The test saw what it is about: switches under traffic, and whole quiet pages.
    assert len(switch_done) == SWITCHES + 1
    assert len({f.release for f in fetches}) > 1
    assert quiet


async def visit(
    port: int, domain: str, index: dict[str, int], tag: str, stop: asyncio.Event
) -> list[list[Fetched]]:
    """One visitor loading PAGE over and over until ``stop``; each fetch records whether
    it got one release's whole file (its index in ``index``) or not (None)."""
    pages: list[list[Fetched]] = []
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"Host": domain}
    ) as client:
        while not stop.is_set():
            page = []
            for url, rel in PAGE:
                started = time.monotonic()
                response = await client.get(url)
                finished = time.monotonic()
                release = response.content.split(b" ", 1)[0].decode(errors="replace")
                whole = release in index and response.content == file_body(release, rel, tag)
                page.append(
                    Fetched(
                        started, finished, response.status_code, index[release] if whole else None
                    )
                )
            pages.append(page)
    return pages


def _no_switch_during(page: list["Fetched"], started: list[float], done: list[float]) -> bool:
    begin, end = page[0].started, page[-1].finished
    # Switch 0 is the initial activation, before any client ran.
    return not any(
        begin <= s <= end or begin <= d <= end or s <= begin <= d
        for s, d in zip(started[1:], done[1:], strict=True)
    )
