"""Blog 1.1.0 built for real (Jinja render, then its build step in the bubblewrap sandbox,
importing markdown-it-py from the system python3): post bodies are CommonMark, raw HTML is
text, links and images pass a URL allow-list, and every other page is what 1.0.0 makes."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from shared.errors import Permanent
from shared.settings import PROJECT_ROOT
from shared.template_packs import load_pack, validate_params
from tests.templates.conftest import DOMAIN, TEMPLATES, build_site, html_files

BLOG = TEMPLATES / "blog" / "1.1.0"
OLD = TEMPLATES / "blog" / "1.0.0"

COMMONMARK = """# A title of the body

Some *emphasis*, **strong** text, `inline <code>` and a [link](https://example.org/a?b=1&c=2).

1. first
2. second
   - nested *item*

* * *

    indented code <b>

```python
if a < b:
    print("&")
```

> a quote with [a relative link](/posts/hostile/#top)

Line one\\
line two
"""
HOSTILE = """<script>alert(1)</script>

Text <img src=x onerror=alert(2)> more.

[js](javascript:alert(3)) [JS](JaVaScRiPt:alert(4)) [entity](&#106;avascript:alert(5))
[vb](vbscript:msgbox(6)) [data](data:text/html;base64,PHNjcmlwdD5hbGVydCg3KTwvc2NyaXB0Pg==)
[file](file:///etc/passwd) <javascript:alert(8)> [ref][r]

[r]: javascript:alert(9)

![pixel](data:image/png;base64,iVBORw0KGgo=) ![tracker](https://tracker.example/p.gif)
![own](/img/logo.png) ![media](https://media.journal.example.com/photo.jpg)
[![badge](https://ci.example/badge.svg)](https://ci.example/)

[mail](mailto:ada@example.com) [web](http://example.net/) [frag](#section) [path](../x/)

{{ 7*7 }} {% include '/etc/passwd' %}
"""
POSTS: list[dict[str, Any]] = [
    {
        "title": "CommonMark",
        "slug": "commonmark",
        "date": "2026-02-01",
        "tags": ["markdown"],
        "body_markdown": COMMONMARK,
    },
    {
        "title": "Hostile",
        "slug": "hostile",
        "date": "2026-03-01",
        "tags": ["security", "markdown"],
        "body_markdown": HOSTILE,
    },
    {
        "title": "Plain",
        "slug": "plain",
        "date": "2026-01-01",
        "summary": "Set by hand.",
        "body_markdown": "Just text.",
    },
]
PARAMS = {"title": "Test Journal", "author": "Ada", "description": "About things.", "posts": POSTS}


@pytest.fixture(scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("blog-1.1.0") / "site"
    await build_site(BLOG, PARAMS, out)
    return out


def prose(site: Path, slug: str) -> str:
    """The rendered body of a post: what the Markdown became."""
    page = (site / f"posts/{slug}/index.html").read_text()
    return page[page.index('<div class="prose">') : page.index("</article>")]


def links(fragment: str) -> list[str]:
    return re.findall(r'<a href="([^"]*)"', fragment)


def test_the_body_is_commonmark(site: Path) -> None:
    body = prose(site, "commonmark")

    # A post's "#" is an h2: the page's title stays its only h1.
    assert "<h2>A title of the body</h2>" in body
    page = (site / "posts/commonmark/index.html").read_text()
    assert page.count("<h1") == 1 and '<h1 id="page-title">CommonMark</h1>' in page
    assert "<em>emphasis</em>" in body and "<strong>strong</strong>" in body
    assert "<code>inline &lt;code&gt;</code>" in body
    assert '<a href="https://example.org/a?b=1&amp;c=2">link</a>' in body
    assert re.search(
        r"<ol>\s*<li>first</li>\s*<li>second\s*<ul>\s*<li>nested <em>item</em></li>\s*</ul>"
        r"\s*</li>\s*</ol>",
        body,
    )
    assert "<hr" in body
    assert "<pre><code>indented code &lt;b&gt;\n</code></pre>" in body
    assert (
        '<pre><code class="language-python">if a &lt; b:\n    print(&quot;&amp;&quot;)\n'
        "</code></pre>"
    ) in body
    assert re.search(r'<blockquote>\s*<p>a quote with <a href="/posts/hostile/#top">', body)
    assert re.search(r"Line one<br ?/?>\s*line two", body)


def test_raw_html_is_shown_as_text(site: Path) -> None:
    body = prose(site, "hostile")

    assert "<script" not in body and '<img src="x"' not in body and "<img src=x" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "Text &lt;img src=x onerror=alert(2)&gt; more." in body
    assert not re.search(r"<[a-z]+[^>]*\son[a-z]+=", body)  # no event handler attribute


def test_only_allowed_urls_become_links_or_images(site: Path) -> None:
    body = prose(site, "hostile")

    assert sorted(links(body)) == sorted(
        [
            "https://tracker.example/p.gif",  # an image from another host: only a link
            "https://ci.example/",  # the link around such an image: its alt text inside
            "mailto:ada@example.com",
            "http://example.net/",
            "#section",
            "../x/",
        ]
    )
    assert re.findall(r'<img src="([^"]*)"', body) == [
        "/img/logo.png",
        "https://media.journal.example.com/photo.jpg",
    ]
    assert '<a href="https://tracker.example/p.gif">tracker</a>' in body
    assert '<a href="https://ci.example/">badge</a>' in body
    # Refused URLs leave the Markdown as text, nothing a browser would follow or load.
    assert "[js](javascript:alert(3))" in body and "[JS](JaVaScRiPt:alert(4))" in body
    assert "[vb](vbscript:msgbox(6))" in body and "[file](file:///etc/passwd)" in body
    assert "[data](data:text/html;base64," in body and "![pixel](data:image/png" in body
    assert "&lt;javascript:alert(8)&gt;" in body and "[ref][r]" in body
    for scheme in ("javascript:", "vbscript:", "data:", "file:"):
        assert not re.search(rf'(?:href|src)="\s*{scheme}', body, re.IGNORECASE), scheme


def test_template_syntax_in_a_post_stays_text(site: Path) -> None:
    body = prose(site, "hostile")

    assert "{{ 7*7 }} {% include '/etc/passwd' %}" in html.unescape(body)
    assert not re.search(r"\b49\b", body)


def test_the_feed_is_valid_rss_with_one_item_per_post(site: Path) -> None:
    rss = ET.parse(site / "feed.xml").getroot()  # well-formed XML, or this raises
    channel = rss.find("channel")
    assert rss.tag == "rss" and rss.get("version") == "2.0" and channel is not None
    items = channel.findall("item")
    assert [i.findtext("link") for i in items] == [
        f"https://{DOMAIN}/posts/{slug}/" for slug in ("hostile", "commonmark", "plain")
    ]
    description = items[0].findtext("description") or ""
    assert "&lt;script&gt;" in description and "<script" not in description
    assert items[1].findtext("description", "").startswith("<h2>A title of the body</h2>")
    assert "<script" not in (site / "feed.xml").read_text()


async def test_the_other_pages_are_what_1_0_0_makes(tmp_path: Path) -> None:
    # The same site built by both versions, with bodies they render alike (so summaries
    # taken from the first paragraph match too): every page, the feed, the sitemap and
    # robots.txt are the same, but for the release id and the feed's generator.
    posts = [{**post, "body_markdown": "Short *first* paragraph.\n\nMore."} for post in POSTS]
    new, old = tmp_path / "new", tmp_path / "old"
    new_release = await build_site(BLOG, {**PARAMS, "posts": posts}, new)
    old_release = await build_site(OLD, {**PARAMS, "posts": posts}, old)

    assert html_files(new) == html_files(old)
    for page in sorted(html_files(new) | {"sitemap.xml", "robots.txt", "feed.xml"}):
        ours = (new / page).read_text().replace(new_release, old_release)
        ours = ours.replace("Sitefleet blog 1.1.0", "Sitefleet blog 1.0.0")
        assert ours == (old / page).read_text(), page


async def test_without_markdown_it_the_build_names_the_debian_package(tmp_path: Path) -> None:
    # `python3 -S` skips the site module, so /usr/lib/python3/dist-packages (where the
    # Debian package installs markdown_it) is not on the path: as on a host without it.
    pack = tmp_path / "blog" / "1.1.0"
    shutil.copytree(BLOG, pack)
    manifest = json.loads((pack / "manifest.json").read_text())
    manifest["build"][0]["run"] = ["python3", "-S", "/src/_build/blog.py"]
    (pack / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(Permanent) as info:
        await build_site(pack, PARAMS, tmp_path / "site")

    assert info.value.code == "build_failed"
    assert "python3-markdown-it" in info.value.message
    assert "Traceback" not in info.value.message


def test_params_of_1_0_0_sites_are_valid_for_1_1_0() -> None:
    old, new = load_pack(OLD), load_pack(BLOG)
    assert new.params_schema["required"] == old.params_schema["required"]
    for params in [old.preview_params, *old.params_schema["examples"], PARAMS]:
        assert validate_params(new, params) == validate_params(old, params)
    assert not (BLOG / "src" / "_build" / "safe_markdown.py").exists()


def test_the_pack_passes_templates_validate() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "sitefleet"), "templates", "validate", str(BLOG)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("valid: ")
