import json
import os
import stat
from pathlib import Path

import pytest

from services.deployer.render import render_site
from shared.errors import Permanent
from shared.ids import new_id
from shared.settings import PROJECT_ROOT
from shared.template_packs import TemplateCatalog, load_pack
from tests.deployer.conftest import LOGO, write_pack

DOMAIN = "shop.example.com"


def output_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_renders_templates_copies_assets_and_skips_partials(
    catalog: TemplateCatalog, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    release = new_id("dep")
    render_site(
        catalog.get("demo", "1.0.0"),
        {"title": "Harbour Lane"},
        domain=DOMAIN,
        release_id=release,
        out_dir=out,
    )

    assert output_files(out) == {
        "index.html",
        "about/index.html",
        "404.html",
        "assets/style.css",
        "assets/logo.bin",
    }
    index = (out / "index.html").read_text()
    assert "<h1>Harbour Lane</h1>" in index
    assert "<p>Built by Sitefleet</p>" in index  # the schema default was filled in
    assert f'<meta name="sitefleet-release" content="{release}">' in index
    assert f'<a href="https://{DOMAIN}/">{DOMAIN}</a>' in index  # from the partial include
    assert (out / "assets/logo.bin").read_bytes() == LOGO
    for path in out.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), path


def test_hostile_params_are_escaped(catalog: TemplateCatalog, tmp_path: Path) -> None:
    out = tmp_path / "out"
    render_site(
        catalog.get("demo", "1.0.0"),
        {"title": '<script>alert("x")</script>', "motto": "{{ 7 * 7 }}"},
        domain=DOMAIN,
        release_id=new_id("dep"),
        out_dir=out,
    )
    index = (out / "index.html").read_text()
    assert "<script>" not in index
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in index
    # Params are data, never template source.
    assert "<p>{{ 7 * 7 }}</p>" in index
    assert "<p>49</p>" not in index


def test_params_are_validated_against_the_schema(catalog: TemplateCatalog, tmp_path: Path) -> None:
    with pytest.raises(Permanent) as info:
        render_site(
            catalog.get("demo", "1.0.0"),
            {"title": "ok", "extra": 1},
            domain=DOMAIN,
            release_id=new_id("dep"),
            out_dir=tmp_path / "out",
        )
    assert info.value.code == "params_invalid"
    assert "extra" in info.value.message


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ params.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ no_such_variable }}",
        "{% include '../../manifest.json' %}",
        "{{ 1 / 0 }}",
        "{% for x in %}",
    ],
)
def test_template_errors_and_escapes_fail_the_render(tmp_path: Path, source: str) -> None:
    pack = load_pack(write_pack(tmp_path / "templates", "evil", {"index.html.j2": source}))
    with pytest.raises(Permanent) as info:
        render_site(
            pack, {"title": "x"}, domain=DOMAIN, release_id=new_id("dep"), out_dir=tmp_path / "out"
        )
    assert info.value.code == "render_failed"
    assert not (tmp_path / "out" / "index.html").exists()


def test_a_symlink_in_the_pack_fails_the_render(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not publish")
    root = write_pack(
        tmp_path / "templates", "linked", {"index.html.j2": '{% include "leak.txt" %}'}
    )
    os.symlink(secret, root / "src" / "leak.txt")
    out = tmp_path / "out"
    with pytest.raises(Permanent) as info:
        render_site(
            load_pack(root), {"title": "x"}, domain=DOMAIN, release_id=new_id("dep"), out_dir=out
        )
    assert info.value.code == "render_failed"
    assert "leak.txt" in info.value.message
    assert not any("do not publish" in p.read_text() for p in out.rglob("*") if p.is_file())


def test_outputs_that_collide_fail_the_render(tmp_path: Path) -> None:
    root = write_pack(
        tmp_path / "templates", "clash", {"index.html": "static", "index.html.j2": "rendered"}
    )
    with pytest.raises(Permanent) as info:
        render_site(
            load_pack(root),
            {"title": "x"},
            domain=DOMAIN,
            release_id=new_id("dep"),
            out_dir=tmp_path / "out",
        )
    assert info.value.code == "render_failed"


def test_a_release_over_the_limits_is_refused(catalog: TemplateCatalog, tmp_path: Path) -> None:
    with pytest.raises(Permanent) as info:
        render_site(
            catalog.get("demo", "1.0.0"),
            {"title": "x"},
            domain=DOMAIN,
            release_id=new_id("dep"),
            out_dir=tmp_path / "out",
            max_files=2,
        )
    assert info.value.code == "release_too_large"


LANDING = PROJECT_ROOT / "templates" / "landing" / "1.0.0"


@pytest.mark.skipif(not LANDING.is_dir(), reason="the landing template is not there yet")
def test_the_landing_template_renders_its_preview(tmp_path: Path) -> None:
    pack = load_pack(LANDING)
    preview = json.loads((LANDING / "manifest.json").read_text())["preview_params"]
    out = tmp_path / "out"
    release = new_id("dep")
    render_site(pack, preview, domain=DOMAIN, release_id=release, out_dir=out)

    index = (out / "index.html").read_text()
    assert f"<title>{preview['title']}</title>" in index
    assert f'<meta name="sitefleet-release" content="{release}">' in index
    assert "index.html" in output_files(out)
    assert not any(name.startswith("_") or name.endswith(".j2") for name in output_files(out))
