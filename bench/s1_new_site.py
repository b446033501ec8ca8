"""S1: a new 60-file site on a local web host with 1k and 10k existing sites, until nginx
serves it (first HTTP 200 carrying the new release id).

Ours: ``LocalHost.upload`` + ``activate`` behind the catch-all nginx (no reload; the worker
pids are compared before and after to count reloads). B0: ``cp -a`` of the same files, a
``server{}`` file for the site, ``nginx -s reload`` on an nginx holding 1k / 10k such blocks,
then the same poll."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from bench import sites
from bench.report import Row, ms, pct, spread, verdict
from bench.stack import B0Nginx, OurNginx, Stack, wait_served
from services.deployer.release import LocalHost
from shared.ids import new_id

PAGES, ASSETS, ASSET_SIZE = 20, 40, 1536  # 60 files per site


def seed_existing(our_root: Path, b0: B0Nginx, count: int) -> None:
    """``count`` cheap existing sites on both sides: a release dir with one page and a
    ``current`` symlink for ours, a dir and a ``server{}`` file for B0."""
    our_root.mkdir(parents=True, exist_ok=True)
    body = sites.page("seed", "index.html")
    for n in range(count):
        domain = f"existing-{n}.example.com"
        release = our_root / domain / "releases" / "seed"
        release.mkdir(parents=True)
        (release / "index.html").write_bytes(body)
        os.symlink("releases/seed", our_root / domain / "current")
        site = b0.sites_root / domain
        site.mkdir()
        (site / "index.html").write_bytes(body)
        b0.write_site(domain)
    for path in [our_root, b0.sites_root]:
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)


async def ours_once(
    host: LocalHost, nginx: OurNginx, src: Path, release: str, phases: list[float]
) -> float:
    domain = f"new-{release[-12:]}.example.com"
    started = time.perf_counter()
    await host.upload(domain, release, src)
    uploaded = time.perf_counter()
    await host.activate(domain, release)
    wait_served(nginx.port, domain, release)
    phases.append(uploaded - started)
    return time.perf_counter() - started


def b0_once(b0: B0Nginx, src: Path, release: str) -> float:
    domain = f"new-{release[-12:]}.example.com"
    started = time.perf_counter()
    subprocess.run(["cp", "-a", str(src), str(b0.sites_root / domain)], check=True)
    b0.write_site(domain)
    b0.reload()
    wait_served(b0.port, domain, release, timeout=60)
    return time.perf_counter() - started


async def run_tier(stack: Stack, existing: int, reps: int, warmup: int) -> dict[str, object]:
    ours = stack.our_nginx(f"s1-ours-{existing}")
    b0 = stack.b0_nginx(f"s1-b0-{existing}")
    seed_started = time.perf_counter()
    seed_existing(ours.sites_root, b0, existing)
    b0.start()
    seeded = time.perf_counter() - seed_started
    host = LocalHost(ours.sites_root)
    work = stack.tempdir(f"s1-src-{existing}")
    ours_t: list[float] = []
    b0_t: list[float] = []
    upload_t: list[float] = []
    workers_before = ours.workers()
    for n in range(warmup + reps):
        release = new_id("dep")
        src = work / release
        sites.write_site(src, release, pages=PAGES, assets=ASSETS, asset_size=ASSET_SIZE)
        # Alternate the order so drift on a shared machine hits both sides alike.
        if n % 2:
            b0_s = b0_once(b0, src, release)
            ours_s = await ours_once(host, ours, src, release, upload_t)
        else:
            ours_s = await ours_once(host, ours, src, release, upload_t)
            b0_s = b0_once(b0, src, release)
        shutil.rmtree(src)
        if n >= warmup:
            ours_t.append(ours_s)
            b0_t.append(b0_s)
    del upload_t[:warmup]
    reloads = 0 if ours.workers() == workers_before and ours.workers() else -1
    return {"ours": ours_t, "b0": b0_t, "reloads": reloads, "b0_reloads": b0.reloads,
            "seeded": seeded, "upload": upload_t}  # fmt: skip


async def run(stack: Stack, *, quick: bool, reps: int, warmup: int) -> list[Row]:
    tiers = {}
    for existing in (1_000, 10_000):
        tiers[existing] = await run_tier(stack, existing, reps, warmup)
    rows = []
    p50_1k = pct(tiers[1_000]["ours"], 50)  # type: ignore[arg-type]
    for existing, bar in ((1_000, 10), (10_000, 50)):
        tier = tiers[existing]
        ours_t: list[float] = tier["ours"]  # type: ignore[assignment]
        b0_t: list[float] = tier["b0"]  # type: ignore[assignment]
        ratio = pct(b0_t, 50) / pct(ours_t, 50)
        flat = pct(ours_t, 50) / p50_1k
        checks = {
            "p50": pct(ours_t, 50) <= 0.010,
            "vs_B0": ratio >= bar,
            "reloads": tier["reloads"] == 0,
        }
        if existing == 10_000:
            checks["flat_1k_to_10k"] = flat <= 1.2
        reloads = "0 nginx reloads" if tier["reloads"] == 0 else "nginx workers changed (reload?)"
        row = Row(
            f"S1 new 60-file site, {existing // 1000}k existing sites (local host → first 200)",
            f"{spread(ours_t)}; {reloads}"
            + (f"; {flat:.2f}× the 1k p50" if existing == 10_000 else ""),
            f"{ms(pct(b0_t, 50))} (p99 {ms(pct(b0_t, 99))}; {tier['b0_reloads']} reloads)",
            f"{ratio:.1f}×",
            f"p50 ≤ 10 ms; ≥ {bar}× B0; 0 reloads"
            + ("; ≤ 1.2× the 1k p50" if existing == 10_000 else ""),
            verdict(**checks),
        )  # fmt: skip
        row.notes.append(
            f"{existing} existing sites seeded in {tier['seeded']:.1f} s; of ours, the upload "
            f"alone (hash 60 files, link, rename) took p50 {ms(pct(tier['upload'], 50))}; "  # type: ignore[arg-type]
            "ours = upload + "
            "activate + poll GET / (fresh connection per poll) until 200 with the release id; "
            "B0 = `cp -a` + write `server{}` + `nginx -s reload` + the same poll. 20 pages "
            "embed the release id, 40 assets are the template's (already in the object "
            "store after the first deploy, as they would be for a new site of a known template)."
        )
        rows.append(row)
    return rows
