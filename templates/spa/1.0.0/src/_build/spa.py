"""The app shell's build step: writes each route's page from ``build/pages.json`` (rendered
by Jinja from the validated params), content-hashes the JS and CSS, then removes ``build/``.

Runs in the build sandbox as ``python3 /src/_build/spa.py`` with the rendered site as its
working directory; standard library only. Output: ``index.html`` (route ``/``),
``<path>/index.html`` for every other route, ``404.html``, and ``assets/<name>.<hash>.<ext>``
for every ``.js`` and ``.css`` file of ``assets/`` — the first 12 hex digits of the file's
SHA-256 — with every page pointing at the hashed name and the unhashed file removed, so a
web server may cache ``/assets/*`` forever and the HTML not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

# A pack is immutable (its content hash is registered): never write __pycache__ into it.
sys.dont_write_bytecode = True

DATA_DIR = Path("build")
ASSETS = Path("assets")
HASH_LENGTH = 12
HASHED_SUFFIXES = (".js", ".css")
# What the params schema allows as a route path; checked again because the output path
# is made from it.
ROUTE = re.compile(r"^/(?:[a-z0-9]+(?:-[a-z0-9]+)*(?:/[a-z0-9]+(?:-[a-z0-9]+)*)*)?$")
RESERVED = {"assets", "build", "404", "404.html", "index.html"}


class BuildError(Exception):
    """Params the schema cannot rule out but the site cannot be built from."""


def page_file(path: str) -> Path:
    if not ROUTE.match(path) or path.strip("/").split("/")[0] in RESERVED:
        raise BuildError(f"route path {path!r} is not allowed")
    return Path(path.strip("/"), "index.html")


def write_pages(pages: list[dict[str, str]]) -> None:
    seen: set[str] = set()
    for page in pages:
        if page["path"] in seen:
            raise BuildError(f"two routes have the path {page['path']!r}; each path must be unique")
        seen.add(page["path"])
        target = page_file(page["path"])
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        target.write_text(page["html"], encoding="utf-8")


def hash_assets() -> dict[str, str]:
    """Rename each asset to its content-hashed name; return old URL -> new URL."""
    renamed = {}
    for asset in sorted(ASSETS.iterdir()):
        if asset.suffix not in HASHED_SUFFIXES or not asset.is_file():
            continue
        digest = hashlib.sha256(asset.read_bytes()).hexdigest()[:HASH_LENGTH]
        hashed = asset.with_name(f"{asset.stem}.{digest}{asset.suffix}")
        os.replace(asset, hashed)
        renamed[f"/{asset.as_posix()}"] = f"/{hashed.as_posix()}"
    return renamed


def rewrite_references(renamed: dict[str, str]) -> None:
    """Point every page at the hashed assets. Only quoted attribute values are replaced:
    params reach the HTML escaped, so they cannot contain a quote to match."""
    for html in sorted(Path(".").rglob("*.html")):
        text = html.read_text(encoding="utf-8")
        for old, new in renamed.items():
            text = text.replace(f'"{old}"', f'"{new}"')
        leftover = [old for old in renamed if f'"{old}"' in text]
        if leftover:
            raise BuildError(f"{html} still references {leftover}")
        html.write_text(text, encoding="utf-8")


def main() -> int:
    try:
        data = json.loads((DATA_DIR / "pages.json").read_text(encoding="utf-8"))
        write_pages(data["pages"])
        rewrite_references(hash_assets())
    except BuildError as exc:
        print(f"spa build: {exc}", file=sys.stderr)
        return 1
    shutil.rmtree(DATA_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
