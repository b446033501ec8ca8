"""S9: disk use of 1,000 sites from one template on one host: our content-addressed store
(every release file a hardlink to an object) vs plain per-site copies of the same files.

Each site has 60 files: 5 pages that name the site (unique) and 55 assets of the template
(identical in every site). Sizes are summed over unique inodes (a hardlinked object counts
once): apparent bytes (st_size) and allocated bytes (st_blocks × 512), and inodes."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from pathlib import Path

from bench import sites
from bench.report import Row, verdict
from bench.stack import Stack
from services.deployer.release import LocalHost
from shared.ids import new_id

SITES, PAGES, ASSETS, ASSET_SIZE = 1_000, 5, 55, 6 * 1024
QUICK_SITES = 300  # quick mode: building and walking 1,000 of each takes minutes here


def usage(root: Path) -> dict[str, int]:
    seen: set[tuple[int, int]] = set()
    out = {"apparent": 0, "allocated": 0, "inodes": 0, "dirs": 0, "files": 0}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames + ["."]:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            out["inodes"] += 1
            out["allocated"] += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                out["dirs"] += 1
            else:
                out["files"] += 1
                out["apparent"] += st.st_size
    return out


def unique_content(root: Path) -> tuple[int, int]:
    """(bytes, count) of the distinct file contents under ``root``."""
    found: dict[str, int] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            data = Path(dirpath, name).read_bytes()
            found[hashlib.sha256(data).hexdigest()] = len(data)
    return sum(found.values()), len(found)


async def run(stack: Stack, *, quick: bool, reps: int, warmup: int) -> list[Row]:
    count = QUICK_SITES if quick else SITES
    work = stack.tempdir("s9")
    ours_root, copies_root, src_root = work / "ours", work / "copies", work / "src"
    host = LocalHost(ours_root)
    started = time.perf_counter()
    for n in range(count):
        domain = f"site-{n}.example.com"
        release = new_id("dep")
        src = src_root / domain
        sites.write_site(src, release, pages=PAGES, assets=ASSETS, asset_size=ASSET_SIZE)
        await host.upload(domain, release, src)
        await host.activate(domain, release)
        shutil.copytree(src, copies_root / domain / "current")
    built = time.perf_counter() - started
    unique_bytes, unique_count = unique_content(src_root)
    shutil.rmtree(src_root)
    ours, copies = usage(ours_root), usage(copies_root)
    byte_ratio = ours["apparent"] / unique_bytes
    # Expected inodes: one per unique object, the dirs, and the `current` symlinks.
    expected = unique_count + ours["dirs"] + count
    row = Row(
        f"S9 disk, {count:,} sites × 60 files from one template (5 pages unique per site)"
        + (f" (quick mode: {count}, not 1,000)" if quick else ""),
        f"{ours['apparent'] / 2**20:.1f} MiB apparent ({byte_ratio:.3f}× unique content), "
        f"{ours['allocated'] / 2**20:.1f} MiB allocated, {ours['inodes']:,} inodes",
        f"copies: {copies['apparent'] / 2**20:.1f} MiB apparent, "
        f"{copies['allocated'] / 2**20:.1f} MiB allocated, {copies['inodes']:,} inodes",
        f"{copies['apparent'] / ours['apparent']:.1f}× fewer bytes; "
        f"{copies['allocated'] / ours['allocated']:.1f}× less allocated; "
        f"{copies['inodes'] / ours['inodes']:.1f}× fewer inodes",
        "bytes ≤ 1.05 × unique content; inodes ≈ unique objects + dirs",
        verdict(byte_ratio <= 1.05, ours["inodes"] <= 1.05 * expected),
    )
    row.notes.append(
        f"unique content {unique_bytes / 2**20:.1f} MiB in {unique_count:,} objects; ours "
        f"holds {ours['inodes']:,} inodes = {ours['files']:,} files/symlinks + "
        f"{ours['dirs']:,} dirs (expected ≈ {expected:,}: objects + dirs + {count:,} `current` "
        f"links). Allocated bytes are dominated by 4 KiB blocks per directory. Building both "
        f"trees took {built:.1f} s. One measurement (deterministic), not a distribution."
    )
    return [row]
