"""Rendering a template pack with a site's params into a release directory.

Pack layout (``<pack>/src``): ``*.j2`` files are rendered in Jinja2's sandbox and written
without the suffix; a file or directory whose name starts with ``_`` is a partial (reachable
through ``extends``/``include``, never written out); everything else is copied byte for byte.
Output paths come only from the pack's own file names, never from params.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from shared.errors import Invalid, Permanent
from shared.template_packs import TemplatePack, validate_params

TEMPLATE_SUFFIX = ".j2"
# nginx workers run as `nobody`: everything we write must be world-readable.
FILE_MODE = 0o644
DIR_MODE = 0o755


@functools.lru_cache(maxsize=64)
def _environment(source_dir: Path) -> SandboxedEnvironment:
    """One sandboxed environment per pack source, so its compiled templates are kept from
    one deployment to the next (the loader still notices a template file that changed).
    Rendering from several threads at once is safe: Jinja2's template cache is locked."""
    return SandboxedEnvironment(
        autoescape=True,
        loader=jinja2.FileSystemLoader(source_dir),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render_site(
    pack: TemplatePack,
    params: dict[str, Any],
    *,
    domain: str,
    release_id: str,
    out_dir: Path,
    max_files: int = 10_000,
    max_bytes: int = 200 * 1024 * 1024,
) -> None:
    """Write the site into ``out_dir`` (created if missing). Blocking: run it in a thread.

    Raises ``Permanent`` (``params_invalid``, ``render_failed``, ``release_too_large``) when
    this pack and these params can never produce a site; ``OSError`` on I/O trouble.
    """
    try:
        params = validate_params(pack, params)
    except Invalid as exc:
        fields = "; ".join(f"{f['field']}: {f['message']}" for f in exc.details.get("fields", []))
        raise Permanent(f"{exc.message}: {fields}", code="params_invalid") from None

    source_dir = _source_root(pack)
    env = _environment(source_dir)
    context = {
        "params": params,
        "site": {"domain": domain, "url": f"https://{domain}"},
        "release": {"id": release_id},
    }
    budget = _Budget(max_files=max_files, max_bytes=max_bytes)
    _make_dir(out_dir)
    for rel_path in _pack_files(source_dir):
        source = source_dir / rel_path
        rendered = rel_path.name.endswith(TEMPLATE_SUFFIX)
        out_name = rel_path.name.removesuffix(TEMPLATE_SUFFIX) if rendered else rel_path.name
        target = out_dir / rel_path.parent / out_name
        _make_dir(target.parent, up_to=out_dir)
        if not out_name or target.exists() or not target.parent.is_dir():
            raise Permanent(
                f"template pack {pack.name} {pack.version}: {rel_path} collides with another "
                "output path",
                code="render_failed",
            )
        if rendered:
            data = _render_one(env, rel_path, context).encode()
            target.write_bytes(data)
            size = len(data)
        else:
            shutil.copyfile(source, target, follow_symlinks=False)
            size = target.stat().st_size
        os.chmod(target, FILE_MODE)
        budget.spend(size)


def _source_root(pack: TemplatePack) -> Path:
    try:
        root = pack.source_dir.resolve(strict=True)
    except OSError:
        raise Permanent(
            f"template pack {pack.name} {pack.version} has no src/ directory", code="render_failed"
        ) from None
    if not root.is_dir():
        raise Permanent(
            f"template pack {pack.name} {pack.version}: src is not a directory",
            code="render_failed",
        )
    return root


def _pack_files(root: Path) -> list[Path]:
    """Relative paths of the files to output, partials skipped, in a stable order.

    A pack holds only regular files and directories: a symlink could lead the renderer (or
    Jinja's loader, which follows links) out of the pack, so its presence fails the render.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in dirnames + filenames:
            mode = os.lstat(here / name).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise Permanent(
                    f"template pack file {(here / name).relative_to(root)} is not a regular "
                    "file or directory",
                    code="render_failed",
                )
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("_"))
        found.extend(
            (here / name).relative_to(root)
            for name in sorted(filenames)
            if not name.startswith("_")
        )
    return found


def _render_one(env: SandboxedEnvironment, rel_path: Path, context: dict[str, Any]) -> str:
    try:
        return env.get_template(rel_path.as_posix()).render(context)
    # SecurityError is a TemplateError; arithmetic/type errors are template bugs too
    # ({{ 1 / 0 }}, {{ "a" + 1 }}): none of them can succeed on a retry.
    except (jinja2.TemplateError, ArithmeticError, TypeError, ValueError) as exc:
        where = ""
        if isinstance(exc, jinja2.TemplateSyntaxError) and exc.lineno:
            where = f" (line {exc.lineno})"
        raise Permanent(
            f"rendering {rel_path}{where} failed: {type(exc).__name__}: {exc}"[:1000],
            code="render_failed",
        ) from None


def _make_dir(path: Path, up_to: Path | None = None) -> None:
    """Create ``path`` (and parents below ``up_to``) world-readable, whatever the umask."""
    missing = []
    cursor = path
    while cursor != up_to and not cursor.exists() and not cursor.is_symlink():
        missing.append(cursor)
        cursor = cursor.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, DIR_MODE)


class _Budget:
    def __init__(self, *, max_files: int, max_bytes: int) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.files = 0
        self.bytes = 0

    def spend(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files > self.max_files or self.bytes > self.max_bytes:
            raise Permanent(
                f"the rendered site exceeds the release limits ({self.max_files} files, "
                f"{self.max_bytes} bytes)",
                code="release_too_large",
            )
