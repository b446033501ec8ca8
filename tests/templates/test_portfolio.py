"""The portfolio pack: images come from the site's media host, every image has its alt
text, and paths that could leave the media root are refused by the schema."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from shared.errors import Invalid, Permanent
from shared.template_packs import load_pack, validate_params
from tests.templates.conftest import DOMAIN, TEMPLATES, build_site, html_files

PORTFOLIO = TEMPLATES / "portfolio" / "1.0.0"
IMAGES = [
    {"path": "work/boats.jpg", "alt": "Boats in a harbour", "caption": "Dawn"},
    {"path": "a/b/c_d-e.f.webp", "alt": '"><script>alert(1)</script>'},
    {"path": "x.png", "alt": "{{ 7*7 }}", "caption": "<b>bold?</b>"},
]


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))


def images_of(path: Path) -> list[dict[str, str | None]]:
    parser = _Images()
    parser.feed(path.read_text())
    parser.close()
    return parser.images


async def test_images_come_from_the_media_host_with_their_alt_texts(tmp_path: Path) -> None:
    out = tmp_path / "site"
    await build_site(PORTFOLIO, {"title": "Studio", "images": IMAGES}, out)

    assert html_files(out) == {"index.html", "404.html"}
    images = images_of(out / "index.html")
    # Each image twice: the grid tile and its lightbox.
    expected = [f"https://media.{DOMAIN}/{image['path']}" for image in IMAGES]
    assert [img["src"] for img in images] == expected + expected
    assert [img["alt"] for img in images] == [i["alt"] for i in IMAGES] * 2
    assert all(img["width"] and img["height"] for img in images)  # no layout shift
    assert [img["loading"] for img in images[3:]] == ["lazy"] * 3
    page = (out / "index.html").read_text()
    assert "<script>" not in page and "&lt;b&gt;bold?&lt;/b&gt;" in page
    # The template expression in an alt text stays text: never evaluated to 49.
    assert 'alt="{{ 7*7 }}"' in page and not re.search(r"\b49\b", page)
    for n in (1, 2, 3):
        assert f'href="#photo-{n}"' in page and f'id="photo-{n}"' in page


@pytest.mark.parametrize(
    "path",
    [
        "../secret.jpg",
        "work/../../etc/passwd.jpg",
        "work/..jpg",
        "/etc/photo.jpg",
        "work//photo.jpg",
        "work/.hidden.jpg",
        "https://evil.example/x.jpg",
        "javascript:alert(1).png",
        "Work/Photo.JPG",
        "photo.gif",
        "photo.jpg?x=1",
        "a b.jpg",
    ],
)
def test_unsafe_image_paths_are_rejected(path: str) -> None:
    params = {"title": "Studio", "images": [{"path": path, "alt": "x"}]}
    with pytest.raises(Invalid) as info:
        validate_params(load_pack(PORTFOLIO), params)
    assert [f["field"] for f in info.value.details["fields"]] == ["params.images[0].path"]


@pytest.mark.parametrize(
    ("image", "field"),
    [
        ({"path": "a.jpg"}, "params.images[0]"),
        ({"path": "a.jpg", "alt": ""}, "params.images[0].alt"),
        ({"path": "a.jpg", "alt": "x" * 201}, "params.images[0].alt"),
        ({"path": "a.jpg", "alt": "x", "onclick": "y"}, "params.images[0]"),
    ],
)
def test_alt_text_is_required(image: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as info:
        validate_params(load_pack(PORTFOLIO), {"title": "Studio", "images": [image]})
    assert {f["field"] for f in info.value.details["fields"]} == {field}


async def test_a_rejected_path_fails_the_render(tmp_path: Path) -> None:
    params = {"title": "Studio", "images": [{"path": "../../x.jpg", "alt": "x"}]}
    with pytest.raises(Permanent) as info:
        await build_site(PORTFOLIO, params, tmp_path / "site")
    assert info.value.code == "params_invalid"
    assert not (tmp_path / "site" / "index.html").exists()
