"""A post's Markdown body to an HTML fragment: CommonMark, parsed and rendered by
markdown-it-py (the Debian package ``python3-markdown-it``, imported from the system
``python3`` the build sandbox runs), with what a blog post may not do taken away.

- Raw HTML is off (``"html": False``): ``<script>``, ``<img onerror=...>`` and the like are
  shown as text, escaped. Every other character reaches the page through markdown-it's
  escaping; the only tags are the ones its renderer writes.
- Links (``[text](url)``, ``<url>`` autolinks) and images pass an allow-list of URLs:
  ``http:``, ``https:``, ``mailto:``, and references into the site (paths, queries,
  fragments). Anything else (``javascript:``, ``vbscript:``, ``data:``, ``file:``, ...) is
  refused, and the Markdown stays text: no link is made.
- An image is shown only when it comes from the site itself or its media host
  (``media.<domain>``): a site loads nothing from other hosts. Any other (allowed) image
  URL becomes a link to the image, its alt text as the link text (just the alt text when
  the image is itself inside a link).
- The page's title is its only ``h1``: a post's ``#`` heading becomes ``h2``, like ``##``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

try:
    from markdown_it import MarkdownIt
except ImportError as exc:
    raise ImportError(
        "markdown-it-py is not installed for the system python3 "
        "(/usr/bin/python3): install the Debian package python3-markdown-it "
        "(apt-get install python3-markdown-it)"
    ) from exc

if TYPE_CHECKING:
    from markdown_it.renderer import RendererHTML
    from markdown_it.token import Token
    from markdown_it.utils import OptionsDict

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
SAFE_SCHEMES = frozenset({"http", "https", "mailto"})


def safe_url(url: str) -> bool:
    """Whether a link to ``url`` (as markdown-it normalized it) is harmless: ``http``,
    ``https``, ``mailto`` or a reference into the site (no scheme at all)."""
    if not url or "\\" in url:  # browsers read "\" as "/": "/\evil.example" leaves the site
        return False
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return False
    scheme = _SCHEME.match(url)
    if scheme is None:
        # No scheme: a path, query or fragment, which must not hide a ":" before them
        # (browsers would read what precedes it as a scheme).
        return ":" not in re.split(r"[/?#]", url, maxsplit=1)[0]
    return scheme.group(1).lower() in SAFE_SCHEMES


def _local_image(url: str, domain: str) -> bool:
    """Whether an image at ``url`` is served by the site or its media host."""
    if _SCHEME.match(url) is None and not url.startswith("//"):
        return True  # a path of the site
    try:
        parts = urlsplit(url)
        return parts.scheme in ("https", "") and parts.hostname in (domain, f"media.{domain}")
    except ValueError:
        return False


def renderer(domain: str) -> Callable[[str], str]:
    """The function that renders a post body of the site at ``domain``."""
    md = MarkdownIt("commonmark", {"html": False, "linkify": False})
    md.validateLink = safe_url  # links, images and autolinks alike

    def image(
        self: RendererHTML,
        tokens: Sequence[Token],
        idx: int,
        options: OptionsDict,
        env: MutableMapping,
    ) -> str:
        src = str(tokens[idx].attrGet("src") or "")
        if _local_image(src, domain):
            return self.image(tokens, idx, options, env)
        alt = html.escape(self.renderInlineAsText(tokens[idx].children or [], options, env))
        depth = sum({"link_open": 1, "link_close": -1}.get(t.type, 0) for t in tokens[:idx])
        if depth > 0:  # already inside a link: a link cannot hold another one
            return alt
        return f'<a href="{html.escape(src)}">{alt or html.escape(src)}</a>'

    md.add_render_rule("image", image)

    def render(source: str) -> str:
        tokens = md.parse(source)
        for token in tokens:
            if token.type in ("heading_open", "heading_close") and token.tag == "h1":
                token.tag = "h2"  # the page's title is its only h1
        return md.renderer.render(tokens, md.options, {}).rstrip("\n")

    return render
