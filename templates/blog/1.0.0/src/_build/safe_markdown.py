"""A small, safe Markdown subset to HTML, standard library only (it runs in the build
sandbox, where no packages are installed).

Blocks: paragraphs, ATX headings (``#`` .. ``######``; ``#`` becomes ``h2`` like ``##``:
the page's title is its only ``h1``), fenced code blocks (three or more backticks or
tildes, with an optional language), ``-``/``*``/``+`` and ``1.`` lists (one level), ``>``
block quotes and ``---`` rules. Inline: backtick code spans, ``**strong**``,
``*em*``/``_em_`` (not nested in their own kind: ``**a _b_ c**``, not ``**a *b* c**``),
``[text](url)`` and hard line breaks (two trailing spaces).

Safety: every character of the input reaches the output through ``html.escape`` (text and
attribute values alike); the only tags are the ones this module writes. Raw HTML is shown as
text. A link is kept only when its URL is ``http(s):``, ``mailto:`` or relative (no scheme,
no whitespace or control characters); otherwise only its text is kept. Images are not
supported (a site may load nothing from elsewhere): ``![alt](url)`` becomes a link.
"""

from __future__ import annotations

import html
import re

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([A-Za-z0-9_+-]{0,32})\s*$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_RULE = re.compile(r"^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$")
_BULLET = re.compile(r"^ {0,3}[-*+][ \t]+(.*)$")
_ORDERED = re.compile(r"^ {0,3}(\d{1,9})[.)][ \t]+(.*)$")
_QUOTE = re.compile(r"^ {0,3}> ?(.*)$")

# The text of a link or an emphasis cannot hold its own delimiters: a match attempt then
# stops at the next delimiter, which keeps the scan linear on input like "[[[[..." (a
# post's body is up to 20,000 characters). The price: no emphasis nested in the same kind.
_INLINE = re.compile(
    r"(?P<code>(?P<ticks>`+)(?P<code_text>.+?)(?P=ticks))"
    r"|(?P<link>!?\[(?P<link_text>[^\[\]\n]*)\]\((?P<url>[^()\s]*)\))"
    r"|(?P<strong>\*\*(?P<strong_text>[^*\s](?:[^*]*?[^*\s])?)\*\*)"
    r"|(?P<em>\*(?P<em_text>[^*\s](?:[^*]*?[^*\s])?)\*)"
    r"|(?P<uem>(?<![A-Za-z0-9])_(?P<uem_text>[^_\s](?:[^_]*?[^_\s])?)_(?![A-Za-z0-9]))",
    re.DOTALL,
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_SAFE_SCHEMES = {"http", "https", "mailto"}
_MAX_DEPTH = 8


def safe_url(url: str) -> str | None:
    """The URL if a link to it is harmless (http, https, mailto or relative), else None."""
    if not url or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return None
    if "\\" in url:  # browsers read "\" as "/": "/\evil.example" would leave the site
        return None
    scheme = _SCHEME.match(url)
    if scheme is None:
        # No scheme before the first ":" at all: a path, query or fragment of this site.
        return None if ":" in url.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0] else url
    return url if scheme.group(1).lower() in _SAFE_SCHEMES else None


def render_inline(text: str, depth: int = 0) -> str:
    """Inline Markdown of one block to HTML; all text escaped."""
    if depth > _MAX_DEPTH:
        return html.escape(text)
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(_text(text[pos : m.start()]))
        pos = m.end()
        if m.group("code") is not None:
            code = m.group("code_text")
            if code.strip():
                code = code.strip(" ") or code
            out.append(f"<code>{html.escape(code.replace(chr(10), ' '))}</code>")
        elif m.group("link") is not None:
            label = render_inline(m.group("link_text"), depth + 1) or html.escape(m.group("url"))
            url = safe_url(m.group("url"))
            if url is None:
                out.append(label)
            else:
                out.append(f'<a href="{html.escape(url)}">{label}</a>')
        else:
            for kind, tag in (("strong", "strong"), ("em", "em"), ("uem", "em")):
                if m.group(kind) is not None:
                    inner = render_inline(m.group(f"{kind}_text"), depth + 1)
                    out.append(f"<{tag}>{inner}</{tag}>")
                    break
    out.append(_text(text[pos:]))
    return "".join(out)


def _text(text: str) -> str:
    """Plain text: escaped, with "two spaces + newline" as a hard line break."""
    parts = re.split(r" {2,}\n", text)
    return "<br>\n".join(html.escape(part) for part in parts)


def markdown_to_html(source: str) -> str:
    """The HTML fragment of a Markdown document (see the module doc for the subset)."""
    return "\n".join(_blocks(source.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 0))


def _blocks(lines: list[str], depth: int) -> list[str]:
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            text = "\n".join(line.lstrip() for line in para).rstrip()
            out.append(f"<p>{render_inline(text)}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            flush()
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            flush()
            marker = fence.group(1)
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(marker):
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence (or the end of the document)
            lang = fence.group(2).lower()
            cls = f' class="language-{html.escape(lang)}"' if lang else ""
            code = html.escape("\n".join(body))
            out.append(f"<pre><code{cls}>{code}</code></pre>")
            continue
        heading = _HEADING.match(line)
        if heading:
            flush()
            level = max(len(heading.group(1)), 2)  # the page's title is its only h1
            out.append(f"<h{level}>{render_inline(heading.group(2) or '')}</h{level}>")
            i += 1
            continue
        if _RULE.match(line):
            flush()
            out.append("<hr>")
            i += 1
            continue
        quote = _QUOTE.match(line)
        if quote:
            flush()
            inner: list[str] = []
            while i < len(lines) and (m := _QUOTE.match(lines[i])):
                inner.append(m.group(1))
                i += 1
            if depth < _MAX_DEPTH:
                rendered = "\n".join(_blocks(inner, depth + 1))
            else:
                rendered = f"<p>{html.escape(' '.join(inner))}</p>"
            out.append(f"<blockquote>\n{rendered}\n</blockquote>")
            continue
        bullet, ordered = _BULLET.match(line), _ORDERED.match(line)
        if (bullet or ordered) and not _RULE.match(line):
            flush()
            pattern = _BULLET if bullet else _ORDERED
            items: list[str] = []
            while i < len(lines) and lines[i].strip():
                m = pattern.match(lines[i])
                if m:
                    items.append(m.group(m.lastindex or 1))
                elif items and lines[i].startswith((" ", "\t")):
                    items[-1] += "\n" + lines[i].strip()  # a continuation line of the item
                else:
                    break
                i += 1
            tag, start = "ul", ""
            if ordered:
                tag = "ol"
                first = int(ordered.group(1))
                start = f' start="{first}"' if first != 1 else ""
            lis = "\n".join(f"<li>{render_inline(item.strip())}</li>" for item in items)
            out.append(f"<{tag}{start}>\n{lis}\n</{tag}>")
            continue
        para.append(line)
        i += 1
    flush()
    return out
