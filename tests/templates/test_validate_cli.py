"""`sitefleet templates validate` on the real packs, and on broken copies of them: each
problem is named in the report and the command exits non-zero."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.templates import validate_pack
from services.deployer.settings import DeployerSettings
from shared.settings import PROJECT_ROOT
from tests.templates.conftest import copy_pack

SITEFLEET = Path(sys.executable).parent / "sitefleet"


def sitefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SITEFLEET), *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name", ["landing", "blog", "portfolio"])
def test_the_shipped_templates_are_valid(name: str) -> None:
    result = sitefleet("templates", "validate", f"templates/{name}/1.0.0")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert "internal links resolve" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("valid: ")


def test_list_shows_every_template() -> None:
    result = sitefleet("templates", "list")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("landing", "portfolio", "spa"):
        assert f"{name}  1.0.0" in lines
    assert "blog  1.0.0, 1.1.0" in lines  # every version, oldest first


def test_unbalanced_html_fails_the_command(tmp_path: Path) -> None:
    pack = copy_pack("landing", tmp_path)
    index = pack / "src" / "index.html.j2"
    index.write_text(index.read_text().replace('<div class="grid">', '<div class="grid"><div>'))

    result = sitefleet("templates", "validate", str(pack))

    assert result.returncode == 1
    assert "FAIL  pages are well-formed HTML: index.html: line " in result.stdout
    assert "</main> closes <div> (opened on line " in result.stdout
    assert result.stdout.rstrip().splitlines()[-1] == "invalid: 1 problem(s)"


async def validate(pack: Path) -> list[str]:
    report = await validate_pack(pack, DeployerSettings())
    assert not report.ok
    assert list(report.lines())[-1] == f"invalid: {len(report.problems)} problem(s)"
    return report.problems


async def test_a_schema_that_is_not_json_schema(tmp_path: Path) -> None:
    schema = json.loads((PROJECT_ROOT / "templates/landing/1.0.0/manifest.json").read_text())
    broken = {**schema["params_schema"], "type": "objekt"}
    pack = copy_pack("landing", tmp_path, params_schema=broken)

    problems = await validate(pack)

    assert len(problems) == 1
    assert problems[0].startswith(
        "manifest loads: params_schema is not valid JSON Schema: 'objekt' is not valid"
    )


async def test_preview_params_and_examples_that_do_not_match(tmp_path: Path) -> None:
    manifest = json.loads((PROJECT_ROOT / "templates/landing/1.0.0/manifest.json").read_text())
    schema = manifest["params_schema"]
    schema["examples"][0]["accent_color"] = "red"
    del schema["properties"]["cta_label"]["default"]
    schema["properties"]["tagline"]["default"] = 42
    pack = copy_pack(
        "landing",
        tmp_path,
        params_schema=schema,
        preview_params={**manifest["preview_params"], "title": 5, "extra": True},
    )

    problems = await validate(pack)

    assert problems == [
        "params schema: the default of params.tagline is invalid: 42 is not of type 'string'",
        "preview params match the schema: params: Additional properties are not allowed "
        "('extra' was unexpected)",
        "preview params match the schema: params.title: 5 is not of type 'string'",
        "examples[0] match the schema: params.accent_color: 'red' does not match "
        "'^#[0-9a-fA-F]{6}$'",
    ]


async def test_a_broken_internal_link(tmp_path: Path) -> None:
    pack = copy_pack("landing", tmp_path)
    page = pack / "src" / "404.html.j2"
    page.write_text(
        page.read_text()
        .replace('href="/"', 'href="/about/"')
        .replace("</p>", ' <a href="#nope">x</a></p>', 1)
    )

    problems = await validate(pack)

    assert problems == [
        "internal links resolve: 404.html: '#nope' names no element id 'nope'",
        "internal links resolve: 404.html: '/about/' leads to no file of the site",
    ]


async def test_a_failing_build_step(tmp_path: Path) -> None:
    step = {"run": ["sh", "-c", "echo 'cannot find posts' >&2; exit 3"]}
    pack = copy_pack("landing", tmp_path, build=[step])

    problems = await validate(pack)

    assert len(problems) == 1
    assert "build step 0 (sh) exited with status 3" in problems[0]
    assert "cannot find posts" in problems[0]


async def test_a_build_that_leaves_a_symlink(tmp_path: Path) -> None:
    pack = copy_pack("landing", tmp_path, build=[{"run": ["ln", "-s", "/etc/passwd", "x"]}])

    problems = await validate(pack)

    assert problems == [
        "render, build and output check: the build output 'x' is a symlink leaving the "
        "site ('/etc/passwd')"
    ]


async def test_resources_from_other_hosts(tmp_path: Path) -> None:
    pack = copy_pack("landing", tmp_path)
    base = pack / "src" / "_base.html.j2"
    base.write_text(
        base.read_text().replace(
            "</head>",
            '<script src="https://cdn.example.com/track.js"></script>\n'
            '<link rel="stylesheet" href="//fonts.example.net/x.css">\n'
            '<link rel="preload" href="https://media.{{ site.domain }}/hero.jpg" as="image">\n'
            "</head>",
        )
    )

    problems = await validate(pack)

    assert problems == [
        f"no resources loaded from other hosts: {page}: loads {url!r} from outside the site"
        for page in ("404.html", "index.html")
        for url in ("https://cdn.example.com/track.js", "//fonts.example.net/x.css")
    ]
