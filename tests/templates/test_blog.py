"""The blog pack built for real (Jinja render, then its build step in the bubblewrap
sandbox): clean URLs, tag pages, RSS, sitemap, and hostile Markdown made inert, by each
version (1.0.0: the pack's own Markdown subset; 1.1.0: CommonMark through markdown-it-py,
whose own behaviour is in test_blog_commonmark.py)."""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from shared.errors import Invalid, Permanent
from shared.template_packs import load_pack, validate_params
from tests.templates.conftest import DOMAIN, TEMPLATES, build_site, copy_pack, html_files

BLOG = TEMPLATES / "blog" / "1.0.0"
VERSIONS = ["1.0.0", "1.1.0"]
HOSTILE = (
    "Before <script>alert('owned')</script> after.\n\n"
    '<img src=x onerror="alert(1)"> and <a href="javascript:alert(2)">raw</a>\n\n'
    "[click me](javascript:alert%283%29) and [ok](https://example.org/)\n\n"
    "{{ 7*7 }} {% include '/etc/passwd' %}"
)
POSTS: list[dict[str, Any]] = [
    {
        "title": "First steps",
        "slug": "first-steps",
        "date": "2026-01-05",
        "tags": ["news", "guides"],
        "body_markdown": "Hello *world*.",
    },
    {
        "title": "Hostile post",
        "slug": "hostile",
        "date": "2026-03-01",
        "tags": ["security"],
        "body_markdown": HOSTILE,
    },
    {
        "title": "Second <b>guide</b>",
        "slug": "second-guide",
        "date": "2026-02-10",
        "tags": ["guides"],
        "body_markdown": "## Setup\n\n- one\n- two",
    },
]
PARAMS = {"title": "Test Journal", "author": "Ada", "posts": POSTS}


@pytest.fixture(scope="module", params=VERSIONS)
async def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("blog") / "site"
    release_id = await build_site(TEMPLATES / "blog" / request.param, PARAMS, out)
    return out, release_id


def hrefs(html: str) -> list[str]:
    return re.findall(r'href="([^"]*)"', html)


def test_posts_render_to_clean_urls_newest_first(site: tuple[Path, str]) -> None:
    out, release_id = site
    assert html_files(out) == {
        "index.html",
        "404.html",
        "posts/first-steps/index.html",
        "posts/hostile/index.html",
        "posts/second-guide/index.html",
        "tags/index.html",
        "tags/news/index.html",
        "tags/guides/index.html",
        "tags/security/index.html",
    }
    assert not (out / "build").exists()  # the step's input data is not published
    index = (out / "index.html").read_text()
    post_links = [h for h in hrefs(index) if h.startswith("/posts/")]
    assert post_links == ["/posts/hostile/", "/posts/second-guide/", "/posts/first-steps/"]
    assert "Second &lt;b&gt;guide&lt;/b&gt;" in index
    for page in html_files(out):
        text = (out / page).read_text()
        assert f'<meta name="sitefleet-release" content="{release_id}">' in text, page
        assert text.count("<h1") == 1, page
    post = (out / "posts/second-guide/index.html").read_text()
    assert "<h2>Setup</h2>" in post and "<li>one</li>" in post


def test_tag_pages_list_the_posts_with_that_tag(site: tuple[Path, str]) -> None:
    out, _ = site

    def listed(tag: str) -> list[str]:
        page = (out / f"tags/{tag}/index.html").read_text()
        return [h for h in hrefs(page) if h.startswith("/posts/")]

    assert listed("guides") == ["/posts/second-guide/", "/posts/first-steps/"]
    assert listed("news") == ["/posts/first-steps/"]
    assert listed("security") == ["/posts/hostile/"]
    tag_index = hrefs((out / "tags/index.html").read_text())
    assert {"/tags/guides/", "/tags/news/", "/tags/security/"} <= set(tag_index)


def test_the_feed_is_rss_with_one_item_per_post(site: tuple[Path, str]) -> None:
    out, _ = site
    rss = ET.parse(out / "feed.xml").getroot()
    assert rss.tag == "rss" and rss.get("version") == "2.0"
    channel = rss.find("channel")
    assert channel is not None
    assert channel.findtext("title") == "Test Journal"
    assert channel.findtext("link") == f"https://{DOMAIN}/"
    items = channel.findall("item")
    assert [i.findtext("link") for i in items] == [
        f"https://{DOMAIN}/posts/{slug}/" for slug in ("hostile", "second-guide", "first-steps")
    ]
    assert [i.findtext("guid") for i in items] == [i.findtext("link") for i in items]
    assert items[2].findtext("pubDate") == "Mon, 05 Jan 2026 00:00:00 +0000"
    assert [c.text for c in items[2].findall("category")] == ["news", "guides"]
    assert items[2].findtext("description") == "<p>Hello <em>world</em>.</p>"


def test_the_sitemap_lists_every_page(site: tuple[Path, str]) -> None:
    out, _ = site
    ns = {"s": "http://www.sitemaps.org/schemas/sitemap/0.9"}
    locs = [loc.text for loc in ET.parse(out / "sitemap.xml").getroot().findall("s:url/s:loc", ns)]
    pages = {
        f"https://{DOMAIN}/" + page.removesuffix("index.html")
        for page in html_files(out)
        if page != "404.html"
    }
    assert sorted(locs) == sorted(pages)
    assert f"Sitemap: https://{DOMAIN}/sitemap.xml" in (out / "robots.txt").read_text()


def test_hostile_markdown_comes_out_inert(site: tuple[Path, str]) -> None:
    out, _ = site
    page = (out / "posts/hostile/index.html").read_text()
    body = page[page.index('<div class="prose">') :]
    assert "<script" not in page and "onerror=" not in body.replace("onerror=&quot;", "")
    assert "javascript:" not in " ".join(hrefs(page))
    # The HTML is there as text a reader sees, escaped (1.0.0 also escapes quotes).
    assert "&lt;script&gt;alert(" in body and "&lt;img src=x onerror=&quot;" in body
    text = html.unescape(body)
    assert "<script>alert('owned')</script>" in text
    assert '<img src=x onerror="alert(1)">' in text
    assert '<a href="https://example.org/">ok</a>' in body
    assert "{{ 7*7 }} {% include '/etc/passwd' %}" in text
    assert not re.search(r"\b49\b", body) and "root:" not in page
    feed = (out / "feed.xml").read_text()
    assert "<script" not in feed


@pytest.mark.parametrize("version", VERSIONS)
async def test_duplicate_slugs_fail_the_build(tmp_path: Path, version: str) -> None:
    posts = [{**POSTS[0]}, {**POSTS[1], "slug": "first-steps"}]
    with pytest.raises(Permanent) as info:
        await build_site(
            TEMPLATES / "blog" / version, {**PARAMS, "posts": posts}, tmp_path / "site"
        )
    assert info.value.code == "build_failed"
    assert "two posts have the slug 'first-steps'" in info.value.message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"slug": "Not A Slug"}, "params.posts[0].slug"),
        ({"slug": "../../etc"}, "params.posts[0].slug"),
        ({"date": "2026-02-30"}, "params.posts[0].date"),
        ({"tags": ["ok", "no spaces"]}, "params.posts[0].tags[1]"),
        ({"body_markdown": "x" * 20_001}, "params.posts[0].body_markdown"),
        ({"html": "<b>"}, "params.posts[0]"),
    ],
)
def test_bad_posts_are_rejected_by_the_schema(change: dict[str, Any], field: str) -> None:
    with pytest.raises(Invalid) as info:
        validate_params(load_pack(BLOG), {**PARAMS, "posts": [{**POSTS[0], **change}]})
    assert {f["field"] for f in info.value.details["fields"]} == {field}


async def test_a_blog_without_posts_builds(tmp_path: Path) -> None:
    pack = copy_pack("blog", tmp_path)
    out = tmp_path / "site"
    await build_site(pack, {"title": "Empty", "author": "Nobody"}, out)
    assert "No posts yet." in (out / "index.html").read_text()
    rss = ET.parse(out / "feed.xml").getroot()
    assert rss.findall("channel/item") == []
    manifest = json.loads((pack / "manifest.json").read_text())
    assert manifest["build"][0]["run"] == ["python3", "/src/_build/blog.py"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_pathological_markdown_builds_within_the_step_timeout(
    tmp_path: Path, version: str
) -> None:
    # Inputs that once took seconds each (regex scans to the end of the body from every
    # delimiter); 20 of them at the schema's maximum size must still build.
    bodies = ["[" * 20_000, "_a " * 6_666, "*a " * 6_666, "**a " * 5_000, "![" * 10_000]
    posts = [
        {"title": f"Post {n}", "slug": f"p{n}", "date": "2026-01-01", "body_markdown": body}
        for n, body in enumerate(bodies * 4)
    ]
    out = tmp_path / "site"
    await build_site(TEMPLATES / "blog" / version, {**PARAMS, "posts": posts}, out)
    assert len(list((out / "posts").iterdir())) == 20
