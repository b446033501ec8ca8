"""The blog's build step: turns ``build/site.json`` (rendered by Jinja from the validated
params) into the site's pages, feed and sitemap, then removes ``build/``.

Runs in the build sandbox as ``python3 /src/_build/blog.py`` with the rendered site as its
working directory; the standard library and markdown-it-py (Debian ``python3-markdown-it``,
see ``post_body``). Output (clean URLs, every page a directory
``index.html``): ``index.html``, ``posts/<slug>/index.html``, ``tags/index.html``,
``tags/<tag>/index.html``, ``404.html``, ``feed.xml`` (RSS 2.0), ``sitemap.xml``,
``robots.txt``. Every value from the params is escaped on the way out; post bodies are
CommonMark, rendered (without raw HTML, links through a URL allow-list) by ``post_body``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import html
import json
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# A pack is immutable (its content hash is registered): never write __pycache__ into it.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    from post_body import renderer
except ImportError as exc:  # markdown-it-py is missing from the system python3
    print(f"blog build: {exc}", file=sys.stderr)
    sys.exit(1)

DATA_DIR = "build"
MONTHS = (
    "January February March April May June July August September October November December"
).split()
ATOM = "http://www.w3.org/2005/Atom"
SITEMAP = "http://www.sitemaps.org/schemas/sitemap/0.9"


class BuildError(Exception):
    """Params the schema cannot rule out but the site cannot be built from."""


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def human_date(iso: str) -> str:
    day = dt.date.fromisoformat(iso)
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def summary_of(post: dict) -> str:
    """The post's summary, or the start of its first paragraph as plain text."""
    if post.get("summary"):
        return post["summary"]
    first = re.search(r"<p>(.*?)</p>", post["body_html"], re.DOTALL)
    if first is None:
        return ""
    text = " ".join(html.unescape(re.sub(r"<[^>]*>", "", first.group(1))).split())
    if len(text) > 200:
        text = text[:200].rsplit(" ", 1)[0] + "…"
    return text


def page(
    site: dict,
    *,
    path: str,
    title: str,
    description: str,
    main: str,
    head_extra: str = "",
    current: str = "",
) -> str:
    params = site["params"]
    full_title = title if title == params["title"] else f"{title} · {params['title']}"

    def nav_link(href: str, label: str) -> str:
        aria = ' aria-current="page"' if href == current else ""
        return f'<a class="nav-link" href="{href}"{aria}>{label}</a>'

    return f"""<!doctype html>
<html lang="{e(params["language"])}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(full_title)}</title>
<meta name="description" content="{e(description)}">
<meta name="sitefleet-release" content="{e(site["release"]["id"])}">
<meta name="color-scheme" content="light dark">
<meta name="theme-color" content="{e(params["accent_color"])}">
<link rel="canonical" href="{e(site["site"]["url"] + path)}">
<link rel="alternate" type="application/rss+xml" title="{e(params["title"])}" href="/feed.xml">
{head_extra}<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/style.css">
<style>:root{{--accent: {e(params["accent_color"])}}}</style>
</head>
<body>
<a class="skip-link" href="#main">Skip to content</a>
<header class="site-header">
  <div class="container header-inner">
    <a class="brand" href="/">{e(params["title"])}</a>
    <nav aria-label="Main">
      {nav_link("/", "Posts")}
      {nav_link("/tags/", "Tags")}
      <a class="nav-link" href="/feed.xml">RSS</a>
    </nav>
  </div>
</header>
<main id="main" class="container">
{main}
</main>
<footer class="site-footer">
  <div class="container footer-inner">
    <p>&copy; {e(params["author"])}</p>
    <p><a href="/feed.xml">RSS feed</a> · <a href="/sitemap.xml">Sitemap</a></p>
  </div>
</footer>
</body>
</html>
"""


def tag_links(tags: list[str]) -> str:
    if not tags:
        return ""
    items = "".join(f'<li><a class="tag" href="/tags/{e(t)}/">#{e(t)}</a></li>' for t in tags)
    return f'<ul class="tags" aria-label="Tags">{items}</ul>'


def post_list(posts: list[dict], heading_level: int = 2) -> str:
    if not posts:
        return '<p class="empty">No posts yet.</p>'
    h = f"h{heading_level}"
    cards = []
    for post in posts:
        summary = summary_of(post)
        cards.append(
            f"""<li>
<article class="post-card">
  <{h}><a href="/posts/{e(post["slug"])}/">{e(post["title"])}</a></{h}>
  <p class="meta"><time datetime="{e(post["date"])}">{human_date(post["date"])}</time></p>
  {f'<p class="summary">{e(summary)}</p>' if summary else ""}
  {tag_links(post["tags"])}
</article>
</li>"""
        )
    return '<ul class="post-list">\n' + "\n".join(cards) + "\n</ul>"


def write(root: Path, rel: str, text: str) -> None:
    target = root / rel
    for parent in reversed(target.relative_to(root).parents[:-1]):  # [-1] is root itself
        directory = root / parent
        if not directory.is_dir():
            directory.mkdir()
        os.chmod(directory, 0o755)  # noqa: S103 -- nginx workers (nobody) read the site
    target.write_text(text, encoding="utf-8")
    os.chmod(target, 0o644)


def load_site(root: Path) -> dict:
    site = json.loads((root / DATA_DIR / "site.json").read_text(encoding="utf-8"))
    posts = site["params"]["posts"]
    render = renderer(site["site"]["domain"])
    seen: set[str] = set()
    for post in posts:
        if post["slug"] in seen:
            raise BuildError(f"two posts have the slug {post['slug']!r}; slugs must be unique")
        seen.add(post["slug"])
        post["tags"] = list(dict.fromkeys(post.get("tags", [])))  # unique, in order
        # Each body is needed three times (page, summary, feed): convert it once.
        post["body_html"] = render(post["body_markdown"])
    # Newest first; same day: alphabetical, so every build orders them the same way.
    posts.sort(key=lambda p: p["title"].lower())
    posts.sort(key=lambda p: p["date"], reverse=True)
    return site


def build_pages(root: Path, site: dict) -> list[tuple[str, str | None]]:
    """Write the HTML pages; return (URL path, last-modified date) of each indexable one."""
    params = site["params"]
    posts = params["posts"]
    pages: list[tuple[str, str | None]] = []
    newest = posts[0]["date"] if posts else None

    intro = f'<p class="lead">{e(params["description"])}</p>' if params["description"] else ""
    main = f"""<section class="intro" aria-labelledby="page-title">
<h1 id="page-title">{e(params["title"])}</h1>
{intro}
</section>
<section aria-label="Posts">
{post_list(posts)}
</section>"""
    description = params["description"] or params["title"]
    write(
        root,
        "index.html",
        page(
            site, path="/", title=params["title"], description=description, main=main, current="/"
        ),
    )
    pages.append(("/", newest))

    for n, post in enumerate(posts):
        path = f"/posts/{post['slug']}/"
        neighbours = []
        if n + 1 < len(posts):
            older = posts[n + 1]
            neighbours.append(
                f'<a rel="prev" href="/posts/{e(older["slug"])}/">← {e(older["title"])}</a>'
            )
        if n > 0:
            newer = posts[n - 1]
            neighbours.append(
                f'<a rel="next" href="/posts/{e(newer["slug"])}/">{e(newer["title"])} →</a>'
            )
        nav = (
            f'<nav class="post-nav" aria-label="More posts">{"".join(neighbours)}</nav>'
            if neighbours
            else ""
        )
        main = f"""<article class="post">
<header class="post-header">
<h1 id="page-title">{e(post["title"])}</h1>
<p class="meta"><time datetime="{e(post["date"])}">{human_date(post["date"])}</time>
 · by {e(params["author"])}</p>
{tag_links(post["tags"])}
</header>
<div class="prose">
{post["body_html"]}
</div>
</article>
{nav}"""
        head = (
            '<meta property="og:type" content="article">\n'
            f'<meta property="og:title" content="{e(post["title"])}">\n'
        )
        write(
            root,
            f"posts/{post['slug']}/index.html",
            page(
                site,
                path=path,
                title=post["title"],
                description=summary_of(post) or post["title"],
                main=main,
                head_extra=head,
            ),
        )
        pages.append((path, post["date"]))

    by_tag: dict[str, list[dict]] = {}
    for post in posts:
        for tag in post["tags"]:
            by_tag.setdefault(tag, []).append(post)
    tags = sorted(by_tag)
    if tags:
        items = "\n".join(
            f'<li><a class="tag" href="/tags/{e(t)}/">#{e(t)}</a> '
            f'<span class="count">{len(by_tag[t])} post{"s" if len(by_tag[t]) != 1 else ""}'
            "</span></li>"
            for t in tags
        )
        listing = f'<ul class="tag-index">\n{items}\n</ul>'
    else:
        listing = '<p class="empty">No tags yet.</p>'
    main = f'<h1 id="page-title">Tags</h1>\n{listing}'
    write(
        root,
        "tags/index.html",
        page(
            site,
            path="/tags/",
            title="Tags",
            description=f"All tags of {params['title']}",
            main=main,
            current="/tags/",
        ),
    )
    pages.append(("/tags/", newest))
    for tag in tags:
        path = f"/tags/{tag}/"
        main = (
            f'<h1 id="page-title">Posts tagged <span class="tag">#{e(tag)}</span></h1>\n'
            f"{post_list(by_tag[tag])}\n"
            '<p><a href="/tags/">All tags</a></p>'
        )
        write(
            root,
            f"tags/{tag}/index.html",
            page(
                site,
                path=path,
                title=f"Posts tagged #{tag}",
                description=f"Posts tagged #{tag} on {params['title']}",
                main=main,
            ),
        )
        pages.append((path, by_tag[tag][0]["date"]))

    main = """<section class="not-found">
<p class="eyebrow">Error 404</p>
<h1 id="page-title">Page not found</h1>
<p>Sorry, the page you were looking for doesn't exist or has moved.</p>
<p><a class="button" href="/">Back to all posts</a></p>
</section>"""
    write(
        root,
        "404.html",
        page(
            site,
            path="/404.html",
            title="Page not found",
            description="Page not found",
            head_extra='<meta name="robots" content="noindex">\n',
            main=main,
        ),
    )
    return pages


def rfc822(iso: str) -> str:
    day = dt.date.fromisoformat(iso)
    return email.utils.format_datetime(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC))


def build_feed(site: dict) -> str:
    """RSS 2.0 of every post, newest first, with absolute URLs."""
    params, base = site["params"], site["site"]["url"]
    ET.register_namespace("atom", ATOM)
    rss = ET.Element("rss", {"version": "2.0"})
    channel = ET.SubElement(rss, "channel")
    ET.SubElement(channel, "title").text = params["title"]
    ET.SubElement(channel, "link").text = f"{base}/"
    ET.SubElement(channel, "description").text = params["description"] or params["title"]
    ET.SubElement(channel, "language").text = params["language"]
    ET.SubElement(
        channel,
        f"{{{ATOM}}}link",
        {"href": f"{base}/feed.xml", "rel": "self", "type": "application/rss+xml"},
    )
    ET.SubElement(channel, "generator").text = "Sitefleet blog 1.1.0"
    if params["posts"]:
        ET.SubElement(channel, "lastBuildDate").text = rfc822(params["posts"][0]["date"])
    for post in params["posts"]:
        url = f"{base}/posts/{post['slug']}/"
        item = ET.SubElement(channel, "item")
        ET.SubElement(item, "title").text = post["title"]
        ET.SubElement(item, "link").text = url
        ET.SubElement(item, "guid", {"isPermaLink": "true"}).text = url
        ET.SubElement(item, "pubDate").text = rfc822(post["date"])
        for tag in post["tags"]:
            ET.SubElement(item, "category").text = tag
        # The post's HTML as text: ElementTree escapes it, feed readers unescape it.
        ET.SubElement(item, "description").text = post["body_html"]
    ET.indent(rss)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(rss, "unicode") + "\n"


def build_sitemap(site: dict, pages: list[tuple[str, str | None]]) -> str:
    ET.register_namespace("", SITEMAP)
    urlset = ET.Element(f"{{{SITEMAP}}}urlset")
    for path, lastmod in pages:
        url = ET.SubElement(urlset, f"{{{SITEMAP}}}url")
        ET.SubElement(url, f"{{{SITEMAP}}}loc").text = site["site"]["url"] + path
        if lastmod:
            ET.SubElement(url, f"{{{SITEMAP}}}lastmod").text = lastmod
    ET.indent(urlset)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(urlset, "unicode") + "\n"


def build_site(root: Path) -> None:
    site = load_site(root)
    pages = build_pages(root, site)
    write(root, "feed.xml", build_feed(site))
    write(root, "sitemap.xml", build_sitemap(site, pages))
    write(
        root,
        "robots.txt",
        f"User-agent: *\nAllow: /\n\nSitemap: {site['site']['url']}/sitemap.xml\n",
    )
    shutil.rmtree(root / DATA_DIR)


def main() -> int:
    try:
        build_site(Path.cwd())
    except BuildError as exc:
        print(f"blog build: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
