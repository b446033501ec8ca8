"""Pre-rendered sites of the benchmarks: pages that embed their release id (so a fetch says
which release served it) and assets shared by every site of the same template."""

from __future__ import annotations

import os
import random
from pathlib import Path

ASSET_SEED = 20261127


def page(release_id: str, rel: str, size: int = 2048) -> bytes:
    head = (
        f'<!doctype html><html><head><meta name="sitefleet-release" content="{release_id}">'
        f"<title>{rel}</title></head><body>\n"
    ).encode()
    filler = (f"<p>{release_id} {rel}</p>\n".encode()) * (size // 40 + 1)
    return (head + filler)[: size - 15] + b"</body></html>\n"


def asset(n: int, size: int) -> bytes:
    """Deterministic bytes: asset n is the same in every site of the template."""
    rnd = random.Random(ASSET_SEED + n)
    return rnd.randbytes(size)


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def write_pages(root: Path, release_id: str, pages: int) -> list[str]:
    """index.html plus ``pages - 1`` pages, each embedding ``release_id``."""
    rels = ["index.html"] + [f"p/page{n}.html" for n in range(1, pages)]
    for rel in rels:
        write_file(root / rel, page(release_id, rel))
    return rels


def write_assets(root: Path, count: int, size: int) -> list[str]:
    rels = [f"assets/a{n}.{'css' if n % 2 else 'js'}" for n in range(count)]
    for n, rel in enumerate(rels):
        write_file(root / rel, asset(n, size))
    return rels


def write_site(root: Path, release_id: str, *, pages: int, assets: int, asset_size: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    write_pages(root, release_id, pages)
    write_assets(root, assets, asset_size)
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
