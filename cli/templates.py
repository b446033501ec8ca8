"""Validating a template pack the way a deployment would use it: manifest and schema,
preview params and examples, the real render, the build steps in the real sandbox, the
output check, then well-formed HTML/XML and internal links that resolve.

Every problem is collected (not just the first) into a ``Report``; a stage whose input is
missing (no output after a failed build) is skipped, not reported twice.
"""

from __future__ import annotations

import asyncio
import posixpath
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from jsonschema import Draft202012Validator, SchemaError

from services.deployer.output_check import check_output
from services.deployer.render import render_site
from services.deployer.sandbox import parse_build_steps
from services.deployer.settings import DeployerSettings
from shared.errors import Invalid, SitefleetError
from shared.ids import new_id
from shared.template_packs import TemplateCatalog, TemplatePack, load_pack, validate_params

PREVIEW_DOMAIN = "preview.sitefleet.example"

# Limits for a validation build: a preview site is small, and a pack that needs more than
# this for its own preview params is a pack to look at.
VALIDATE_LIMITS = {
    "build_timeout": 30.0,
    "build_memory_bytes": 512 * 1024 * 1024,
    "build_max_processes": 32,
    "build_max_file_bytes": 20 * 1024 * 1024,
    "build_cpu_seconds": 30,
    "max_release_files": 5_000,
    "max_release_bytes": 100 * 1024 * 1024,
}

VOID_ELEMENTS = frozenset("area base br col embed hr img input link meta source track wbr".split())
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# <link> relations whose target the browser fetches on its own.
_LOADED_RELS = frozenset({"stylesheet", "icon", "preload", "modulepreload", "manifest"})


@dataclass
class Report:
    pack: str
    passed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def check(self, what: str, problems: list[str]) -> bool:
        """Record one check; True when it found nothing wrong."""
        if problems:
            self.problems.extend(f"{what}: {p}" for p in problems)
            return False
        self.passed.append(what)
        return True

    def lines(self) -> Iterator[str]:
        yield f"template pack {self.pack}"
        for what in self.passed:
            yield f"  ok    {what}"
        for problem in self.problems:
            yield f"  FAIL  {problem}"
        if self.ok:
            yield f"valid: {len(self.passed)} checks passed"
        else:
            yield f"invalid: {len(self.problems)} problem(s)"


async def validate_pack(
    path: Path, settings: DeployerSettings, *, domain: str = PREVIEW_DOMAIN
) -> Report:
    """Run every check on the pack at ``path``; the build runs in a temp dir, removed after."""
    from services.deployer.build import build_sandbox  # the deployer's wiring of the sandbox

    report = Report(pack=str(path))
    try:
        pack = load_pack(path)
    except (OSError, ValueError, KeyError, TypeError, SchemaError, SitefleetError) as exc:
        report.check("manifest loads", [_describe(exc)])
        return report
    report.check("manifest loads", [])
    report.pack = f"{pack.name} {pack.version} ({path})"
    report.check("params schema", check_schema(pack.params_schema))
    report.check("preview params match the schema", _param_problems(pack, pack.preview_params))
    examples = pack.params_schema.get("examples", [])
    for n, example in enumerate(examples if isinstance(examples, list) else []):
        report.check(f"examples[{n}] match the schema", _param_problems(pack, example))
    try:
        steps = parse_build_steps(pack.build)
    except SitefleetError as exc:
        report.check("build steps", [exc.message])
        return report
    if not report.ok:
        return report  # no render without params the schema accepts

    work = Path(tempfile.mkdtemp(prefix="sitefleet-validate-"))
    out = work / "site"
    release_id = new_id("dep")
    try:
        limited = settings.model_copy(update=VALIDATE_LIMITS)
        try:
            await asyncio.to_thread(
                render_site,
                pack,
                pack.preview_params,
                domain=domain,
                release_id=release_id,
                out_dir=out,
                max_files=limited.max_release_files,
                max_bytes=limited.max_release_bytes,
            )
            report.check("renders with the preview params", [])
            if steps:
                await build_sandbox(limited).run_steps(
                    steps, site_dir=out, src_dir=pack.source_dir.resolve()
                )
                report.check(f"{len(steps)} build step(s) succeed in the sandbox", [])
            await asyncio.to_thread(
                check_output,
                out,
                max_files=limited.max_release_files,
                max_bytes=limited.max_release_bytes,
            )
            report.check("output check (regular files only, within limits)", [])
        except SitefleetError as exc:
            tail = str(exc.details.get("output_tail", "")).strip()[-800:]
            shown = "" if tail[-200:] in exc.message else _indent(tail)  # a failed step quotes it
            report.check("render, build and output check", [exc.message + shown])
            return report
        report.check("pages are well-formed HTML", check_html(out, release_id))
        report.check("XML files parse", check_xml(out))
        report.check("internal links resolve", check_links(out, domain))
        report.check("no resources loaded from other hosts", check_resources(out, domain))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def check_schema(schema: dict[str, Any]) -> list[str]:
    """What a params schema needs beyond being valid JSON Schema (``load_pack`` checked
    that): a closed top-level object, examples, and defaults the schema itself accepts."""
    problems = []
    if schema.get("type") != "object" or schema.get("additionalProperties") is not False:
        problems.append('the top level must be {"type": "object", "additionalProperties": false}')
    examples = schema.get("examples")
    if not isinstance(examples, list) or not examples:
        problems.append("'examples' must be a non-empty list of params")
    for where, sub in _subschemas(schema, "params"):
        if "default" in sub:
            errors = list(Draft202012Validator(sub).iter_errors(sub["default"]))
            if errors:
                problems.append(f"the default of {where} is invalid: {errors[0].message[:200]}")
    return problems


def _subschemas(schema: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(schema, dict):
        return
    yield where, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from _subschemas(sub, f"{where}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _subschemas(schema["items"], f"{where}[]")


def _param_problems(pack: TemplatePack, params: Any) -> list[str]:
    try:
        validate_params(pack, params)
    except Invalid as exc:
        return [f"{f['field']}: {f['message']}" for f in exc.details.get("fields", [])]
    return []


class _PageParser(HTMLParser):
    """Collects tag-balance problems, ids, link targets and a few page facts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, int]] = []
        self.problems: list[str] = []
        self.ids: set[str] = set()
        self.urls: list[str] = []
        self.resources: list[str] = []  # what the browser loads by itself (not links)
        self.doctype = False
        self.lang = ""
        self.h1 = 0
        self.viewport = False
        self.title = False
        self.release: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if "id" in values:
            if values["id"] in self.ids:
                self.problems.append(f"line {self.getpos()[0]}: duplicate id {values['id']!r}")
            self.ids.add(values["id"])
        for name in ("href", "src"):
            if name in values:
                self.urls.append(values[name])
        if "src" in values:
            self.resources.append(values["src"])
        if (
            tag == "link"
            and values.get("href")
            and _LOADED_RELS & set(values.get("rel", "").split())
        ):
            self.resources.append(values["href"])
        if tag == "html":
            self.lang = values.get("lang", "")
        elif tag == "h1":
            self.h1 += 1
        elif tag == "title":
            self.title = True
        elif tag == "img" and "alt" not in values:  # alt="" is right for decoration
            self.problems.append(f"line {self.getpos()[0]}: <img> without an alt attribute")
        elif tag == "meta" and values.get("name") == "viewport":
            self.viewport = True
        elif tag == "meta" and values.get("name") == "sitefleet-release":
            self.release.append(values.get("content", ""))
        if tag not in VOID_ELEMENTS:
            self.stack.append((tag, self.getpos()[0]))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID_ELEMENTS:
            self.problems.append(
                f"line {self.getpos()[0]}: <{tag}/> does not close the element in HTML"
            )
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        line = self.getpos()[0]
        if tag in VOID_ELEMENTS:
            self.problems.append(f"line {line}: end tag </{tag}> of a void element")
        elif self.stack and self.stack[-1][0] == tag:
            self.stack.pop()
        elif any(open_tag == tag for open_tag, _ in self.stack):
            while self.stack[-1][0] != tag:
                open_tag, opened = self.stack.pop()
                self.problems.append(
                    f"line {line}: </{tag}> closes <{open_tag}> (opened on line {opened})"
                )
            self.stack.pop()
        else:
            self.problems.append(f"line {line}: </{tag}> without an open <{tag}>")

    def finish(self) -> None:
        self.close()
        for tag, opened in self.stack:
            self.problems.append(f"<{tag}> opened on line {opened} is never closed")


def _html_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.html") if p.is_file())


def _parse(path: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.finish()
    return parser


def check_html(root: Path, release_id: str) -> list[str]:
    """Balanced tags (every non-void element closed explicitly), a doctype, ``lang``, a
    title, a viewport, exactly one ``h1``, alt on every image and this release's marker."""
    problems: list[str] = []
    pages = _html_files(root)
    if not pages:
        return ["the output holds no HTML page"]
    for path in pages:
        page = _parse(path)
        found = list(page.problems)
        if not page.doctype:
            found.append("no <!doctype html>")
        if not page.lang:
            found.append("<html> has no lang attribute")
        if not page.title:
            found.append("no <title>")
        if not page.viewport:
            found.append('no <meta name="viewport">')
        if page.h1 != 1:
            found.append(f"{page.h1} <h1> elements (a page has exactly one)")
        if page.release != [release_id]:
            found.append(f'<meta name="sitefleet-release"> is {page.release}, not [{release_id!r}]')
        rel = path.relative_to(root).as_posix()
        problems.extend(f"{rel}: {problem}" for problem in found)
    return problems


def check_xml(root: Path) -> list[str]:
    problems = []
    for path in sorted(p for p in root.rglob("*.xml") if p.is_file()):
        try:
            ET.parse(path)  # noqa: S314 -- our own build output, in a temp dir
        except ET.ParseError as exc:
            problems.append(f"{path.relative_to(root).as_posix()}: {exc}")
    return problems


def check_links(root: Path, domain: str) -> list[str]:
    """Every ``href``/``src`` that stays on the site (relative, root-relative, or absolute to
    ``https://<domain>``) names a file of the output, and its ``#fragment`` an id there.
    Clean URLs: ``/posts/x/`` is ``posts/x/index.html``; ``/posts/x`` may also be
    ``posts/x`` or ``posts/x.html``."""
    pages = {p.relative_to(root).as_posix(): _parse(p) for p in _html_files(root)}
    problems = []
    for rel, page in pages.items():
        base = "/" + posixpath.dirname(rel)
        for url in page.urls:
            try:
                target = _site_path(url.strip(), base, domain)
            except ValueError as exc:  # urlsplit: e.g. a bad IPv6 host
                problems.append(f"{rel}: {url!r} is not a valid URL ({exc})")
                continue
            if target is None:
                continue
            path, fragment = target
            file = _resolve(root, path) if path != "" else rel
            if file is None:
                problems.append(f"{rel}: {url!r} leads to no file of the site")
            elif fragment and file in pages and fragment not in pages[file].ids:
                problems.append(f"{rel}: {url!r} names no element id {fragment!r}")
    return problems


def check_resources(root: Path, domain: str) -> list[str]:
    """Pages load nothing from other hosts: only the site itself, its media host
    (``media.<domain>``) and inline ``data:`` URLs (privacy, and no third party can break
    or change a site)."""
    allowed = {domain, f"media.{domain}"}
    problems = []
    for path in _html_files(root):
        for url in _parse(path).resources:
            url = url.strip()
            if url.lower().startswith("data:") or not (_SCHEME.match(url) or url.startswith("//")):
                continue
            try:
                parts = urlsplit(url)
                outside = parts.scheme not in ("https", "") or parts.hostname not in allowed
            except ValueError:
                outside = True
            if outside:
                rel = path.relative_to(root).as_posix()
                problems.append(f"{rel}: loads {url!r} from outside the site")
    return problems


def _site_path(url: str, base: str, domain: str) -> tuple[str, str] | None:
    """(decoded absolute path, fragment) of a link into the site; None for other sites,
    ``mailto:``, ``data:`` and the like. An empty path means "this page"."""
    parts = urlsplit(url)
    if _SCHEME.match(url) or url.startswith("//"):
        if parts.scheme not in ("http", "https", "") or parts.hostname != domain:
            return None
    if not parts.path:
        return "", unquote(parts.fragment)
    joined = posixpath.join(base, unquote(parts.path))
    normal = posixpath.normpath(joined)
    if joined.endswith("/") and normal != "/":
        normal += "/"
    return normal, unquote(parts.fragment)


def _resolve(root: Path, path: str) -> str | None:
    """The output file (relative to ``root``) that ``path`` is served from, if any."""
    if path.startswith("//") or ".." in path.split("/"):
        return None  # normpath keeps a leading ".." only when the path climbs out
    rel = path.lstrip("/")
    # What nginx's `try_files $uri $uri/ $uri.html` serves (infra/nginx/nginx.conf.template).
    candidates = (
        [rel + "index.html"]
        if rel.endswith("/") or not rel
        else [rel, rel + "/index.html", rel + ".html"]
    )
    for candidate in candidates:
        if (root / candidate).is_file() and not (root / candidate).is_symlink():
            return candidate
    return None


def list_packs(templates_dir: Path) -> dict[str, list[str]]:
    """Template name -> its versions, oldest first."""
    catalog = TemplateCatalog(templates_dir)
    return {name: catalog.versions(name) for name in catalog.names()}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SitefleetError):
        return exc.message
    if isinstance(exc, SchemaError):
        return f"params_schema is not valid JSON Schema: {exc.message}"
    if isinstance(exc, KeyError):
        return f"manifest.json lacks {exc}"
    return f"{type(exc).__name__}: {exc}"


def _indent(text: str) -> str:
    return "".join(f"\n        | {line}" for line in text.splitlines()) if text else ""
