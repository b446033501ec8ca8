"""The spa pack built for real (Jinja render, then its build step in the bubblewrap
sandbox): every route a page of its own pointing at content-hashed assets, data reaching
the script only as escaped JSON, and hostile or malformed params refused or inert."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from shared.errors import Invalid, Permanent
from shared.settings import PROJECT_ROOT
from shared.template_packs import load_pack, validate_params
from tests.templates.conftest import DOMAIN, TEMPLATES, build_site, html_files

SPA = TEMPLATES / "spa" / "1.0.0"
PREVIEW: dict[str, Any] = load_pack(SPA).preview_params
PAGES = {
    "/": "index.html",
    "/app": "app/index.html",
    "/app/settings": "app/settings/index.html",
    "/about": "about/index.html",
}
HASHED = re.compile(r"^(app|style)\.([0-9a-f]{12})\.(js|css)$")
BREAKOUT = "</script><script>alert(1)</script>"


class _Page(HTMLParser):
    """The facts of a page a visitor's browser would act on."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[dict[str, str | None]] = []
        self.script_text: list[str] = []
        self.refs: list[str] = []
        self.shown_views: list[str | None] = []
        self.current: list[str | None] = []
        self.h1 = ""
        self.title = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.refs += [v for k, v in attrs if k in ("href", "src") and v]
        if tag == "script":
            self.scripts.append(values)
            self.script_text.append("")
        if tag == "section" and "hidden" not in values:
            self.shown_views.append(values.get("data-route"))
        if tag == "a" and values.get("aria-current") == "page":
            self.current.append(values.get("href"))
        if tag in ("script", "h1", "title"):
            self._in = tag

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.script_text[-1] += data
        elif self._in == "h1":
            self.h1 += data
        elif self._in == "title":
            self.title += data


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    page.close()
    return page


def app_data(page: _Page) -> Any:
    """The JSON the script reads: the one ``application/json`` block, which must parse."""
    blocks = [
        text
        for attrs, text in zip(page.scripts, page.script_text, strict=True)
        if attrs.get("type") == "application/json"
    ]
    assert len(blocks) == 1
    return json.loads(blocks[0])


def assets(out: Path) -> dict[str, str]:
    """``app.js`` / ``style.css`` -> their hashed file names (each exactly once)."""
    found: dict[str, str] = {}
    for file in sorted((out / "assets").iterdir()):
        match = HASHED.match(file.name)
        assert match, f"un-hashed asset {file.name}"
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        assert digest.startswith(match[2]), f"{file.name} is not named for its content"
        found[f"{match[1]}.{match[3]}"] = file.name
    assert set(found) == {"app.js", "style.css"}
    return found


@pytest.fixture(scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spa") / "site"
    await build_site(SPA, PREVIEW, out)
    return out


def test_every_route_is_a_page_that_shows_its_own_view(site: Path) -> None:
    assert html_files(site) == {*PAGES.values(), "404.html"}
    assert not (site / "build").exists()  # the step's input data is not published
    headings = {r["path"]: r["heading"] for r in PREVIEW["routes"]}
    for route, file in PAGES.items():
        page = parse(site / file)
        assert page.shown_views == [route], file
        assert page.current == [route], file
        assert page.h1 == headings[route]
        assert page.title == ("Tallyboard" if route == "/" else f"{headings[route]} · Tallyboard")
        assert [r["path"] for r in app_data(page)["routes"]] == list(PAGES)
    missing = parse(site / "404.html")
    assert missing.shown_views == [""] and missing.current == []
    assert missing.h1 == "Page not found"


def test_pages_load_only_content_hashed_assets(site: Path) -> None:
    hashed = assets(site)
    for file in html_files(site):
        page = parse(site / file)
        asset_refs = sorted(ref for ref in page.refs if ref.startswith("/assets/"))
        assert asset_refs == [f"/assets/{hashed['app.js']}", f"/assets/{hashed['style.css']}"]
        text = (site / file).read_text()
        assert "/assets/app.js" not in text and "/assets/style.css" not in text
        scripts = [s for s in page.scripts if s.get("type") != "application/json"]
        assert scripts == [{"src": f"/assets/{hashed['app.js']}", "defer": None}]


async def test_the_css_hash_follows_the_accent_and_its_button_text_stays_readable(
    site: Path, tmp_path: Path
) -> None:
    light = tmp_path / "light"
    await build_site(SPA, {**PREVIEW, "accent_color": "#facc15"}, light)

    dark_assets, light_assets = assets(site), assets(light)
    assert dark_assets["app.js"] == light_assets["app.js"]
    assert dark_assets["style.css"] != light_assets["style.css"]
    dark_css = (site / "assets" / dark_assets["style.css"]).read_text()
    light_css = (light / "assets" / light_assets["style.css"]).read_text()
    assert "--accent: #4f46e5;\n  --on-accent: #ffffff;" in dark_css
    assert "--accent: #facc15;\n  --on-accent: #111111;" in light_css


async def test_hostile_params_stay_text_and_cannot_leave_the_json_block(tmp_path: Path) -> None:
    params = {
        "title": "{% include '/etc/passwd' %}",
        "tagline": BREAKOUT,
        "routes": [
            {"path": "/", "nav_label": "<b>Home</b>", "heading": "{{ 7*7 }}", "body": BREAKOUT},
            {
                "path": "/app",
                "nav_label": "App",
                "heading": BREAKOUT,
                "body": "<img src=x onerror=alert(2)>",
                "cards": [{"title": "{{ 7*7 }}", "text": '"><script>alert(3)</script>'}],
            },
        ],
    }
    out = tmp_path / "site"
    await build_site(SPA, params, out)

    for file in ("index.html", "app/index.html", "404.html"):
        text = (out / file).read_text()
        page = parse(out / file)
        # Two script elements, whatever the params: the data block and the app.
        assert [s.get("type") for s in page.scripts] == ["application/json", None]
        data = app_data(page)
        assert [r["heading"] for r in data["routes"]] == ["{{ 7*7 }}", BREAKOUT]
        assert data["notFound"]["title"] == "Page not found · {% include '/etc/passwd' %}"
        assert "</" not in page.script_text[0]
        assert "<script>alert" not in text and "<img src=x" not in text and "<b>" not in text
        assert not re.search(r"\b49\b", text) and "root:" not in text
    home = (out / "index.html").read_text()
    assert '<h1 id="page-heading" tabindex="-1">{{ 7*7 }}</h1>' in home
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in home
    assert "&lt;img src=x onerror=alert(2)&gt;" in home
    assert "&#34;&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in home
    assert parse(out / "app/index.html").h1 == BREAKOUT


ROUTE = {"path": "/", "nav_label": "Home", "heading": "Home", "body": "Hello."}
MEGABYTE = "x" * (1024 * 1024)


def link(url: str) -> dict[str, Any]:
    return {"links": [{"label": "x", "url": url}]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (link("javascript:alert(1)"), "params.links[0].url"),
        (link("JavaScript:alert(1)"), "params.links[0].url"),
        (link(" javascript:alert(1)"), "params.links[0].url"),
        (link("data:text/html,<b>"), "params.links[0].url"),
        (link('https://a.example/"onmouseover="x'), "params.links[0].url"),
        (link("http://a.example/"), "params.links[0].url"),
        ({"routes": [ROUTE, {**ROUTE, "path": "javascript:alert(1)"}]}, "params.routes[1].path"),
        ({"routes": [ROUTE, {**ROUTE, "path": "//evil.example"}]}, "params.routes[1].path"),
        ({"routes": [ROUTE, {**ROUTE, "path": "/../etc"}]}, "params.routes[1].path"),
        ({"routes": [ROUTE, {**ROUTE, "path": "/a//b"}]}, "params.routes[1].path"),
        ({"routes": [ROUTE, {**ROUTE, "path": "/App"}]}, "params.routes[1].path"),
        ({"routes": [ROUTE, {**ROUTE, "path": "/app/"}]}, "params.routes[1].path"),
        ({"routes": [ROUTE, {**ROUTE, "path": "/assets"}]}, "params.routes[1].path"),
        ({"routes": [ROUTE, {**ROUTE, "path": "/assets/app.js"}]}, "params.routes[1].path"),
        ({"routes": [ROUTE, {**ROUTE, "path": "/404"}]}, "params.routes[1].path"),
        ({"routes": [ROUTE, {**ROUTE, "path": "/build"}]}, "params.routes[1].path"),
        ({"routes": [{**ROUTE, "path": "/app"}]}, "params.routes"),  # no home page
        ({"routes": []}, "params.routes"),
        ({"routes": [ROUTE] * 9}, "params.routes"),
        ({"title": 5}, "params.title"),
        ({"title": ["Tallyboard"]}, "params.title"),
        ({"routes": "/"}, "params.routes"),
        ({"routes": [{**ROUTE, "cards": "a card"}]}, "params.routes[0].cards"),
        ({"accent_color": "red"}, "params.accent_color"),
        ({"accent_color": "#fff;}body{display:none"}, "params.accent_color"),
        ({"language": 'en" onload="x'}, "params.language"),
        ({"title": MEGABYTE}, "params.title"),
        ({"routes": [{**ROUTE, "body": MEGABYTE}]}, "params.routes[0].body"),
        ({"script": "alert(1)"}, "params"),
    ],
)
def test_bad_params_are_refused_by_the_schema(change: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as info:
        validate_params(load_pack(SPA), {**PREVIEW, **change})
    assert {f["field"] for f in info.value.details["fields"]} == {field}


async def test_refused_params_fail_the_deployment_before_any_output(tmp_path: Path) -> None:
    out = tmp_path / "site"
    with pytest.raises(Permanent) as info:
        await build_site(SPA, {**PREVIEW, "tagline": MEGABYTE}, out)
    assert info.value.code == "params_invalid"
    assert not out.exists()


async def test_two_routes_with_one_path_fail_the_build(tmp_path: Path) -> None:
    routes = [ROUTE, {**ROUTE, "path": "/app"}, {**ROUTE, "path": "/app", "heading": "Again"}]
    with pytest.raises(Permanent) as info:
        await build_site(SPA, {"title": "Twice", "routes": routes}, tmp_path / "site")
    assert info.value.code == "build_failed"
    assert "two routes have the path '/app'" in info.value.message


async def test_the_smallest_app_is_one_page(tmp_path: Path) -> None:
    out = tmp_path / "site"
    await build_site(SPA, {"title": "Notebook", "routes": [ROUTE]}, out)
    assert html_files(out) == {"index.html", "404.html"}
    page = parse(out / "index.html")
    assert page.h1 == "Home" and page.title == "Notebook"
    home_view = (out / "index.html").read_text().split('data-route="/"')[1].split("</section>")[0]
    assert 'class="button"' not in home_view  # no "get started" button with nowhere to go
    assert f'href="https://{DOMAIN}/"' in (out / "index.html").read_text()


def test_sitefleet_templates_validate_passes() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "sitefleet"), "templates", "validate", str(SPA)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    1 build step(s) succeed in the sandbox" in result.stdout
    assert "ok    internal links resolve" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("valid: ")
