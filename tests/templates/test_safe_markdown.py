"""The blog's Markdown converter (the script the build step runs), imported from the pack."""

from __future__ import annotations

import random
from html.parser import HTMLParser
from types import ModuleType

import pytest

from tests.templates.conftest import TEMPLATES

SCRIPT = TEMPLATES / "blog" / "1.0.0" / "src" / "_build" / "safe_markdown.py"


def load_module() -> ModuleType:
    # Executed from source, not imported: an import would write __pycache__ into the pack,
    # and a pack's content hash must not change.
    module = ModuleType("blog_safe_markdown")
    module.__file__ = str(SCRIPT)
    exec(compile(SCRIPT.read_text(), str(SCRIPT), "exec"), module.__dict__)
    return module


md = load_module()

ALLOWED_TAGS = {
    "p", "h2", "h3", "h4", "h5", "h6", "em", "strong", "code", "pre", "ul", "ol", "li",
    "a", "blockquote", "hr", "br",
}  # fmt: skip
ALLOWED_ATTRS = {("a", "href"), ("code", "class"), ("ol", "start")}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def tags_of(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    parser = _Tags()
    parser.feed(html)
    parser.close()
    return parser.tags


def test_the_supported_subset() -> None:
    source = (
        "# Title *one*\n\n"
        "Some **bold**, _em_ and `a < b` with [a link](https://example.com/?a=1&b=2).\n"
        "Second line  \nafter a break\n\n"
        "- one\n- two\n\n"
        "3. three\n4. four\n\n"
        "```python\nif a < b:\n    print('<hi>')\n```\n\n"
        "> quoted **text**\n\n"
        "---\n"
        "###### deep"
    )
    assert md.markdown_to_html(source) == (
        "<h2>Title <em>one</em></h2>\n"
        "<p>Some <strong>bold</strong>, <em>em</em> and <code>a &lt; b</code> with "
        '<a href="https://example.com/?a=1&amp;b=2">a link</a>.\n'
        "Second line<br>\nafter a break</p>\n"
        "<ul>\n<li>one</li>\n<li>two</li>\n</ul>\n"
        '<ol start="3">\n<li>three</li>\n<li>four</li>\n</ol>\n'
        '<pre><code class="language-python">if a &lt; b:\n    print(&#x27;&lt;hi&gt;&#x27;)'
        "</code></pre>\n"
        "<blockquote>\n<p>quoted <strong>text</strong></p>\n</blockquote>\n"
        "<hr>\n"
        "<h6>deep</h6>"
    )


def test_raw_html_and_template_syntax_are_text() -> None:
    out = md.markdown_to_html(
        '<script>alert(1)</script>\n\n<img src=x onerror="alert(1)">\n\n{{ 7*7 }} {% raw %}'
    )
    assert tags_of(out) == [("p", []), ("p", []), ("p", [])]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in out
    assert "{{ 7*7 }} {% raw %}" in out


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "javascript:alert%281%29",
        "JaVaScRiPt:alert%281%29",
        " javascript:x",
        "java\tscript:x",
        "vbscript:msgbox",
        "data:text/html;base64,PHNjcmlwdD4=",
        "file:///etc/passwd",
        "/\\evil.example",
    ],
)
def test_dangerous_link_urls_make_no_link(url: str) -> None:
    out = md.markdown_to_html(f"[click]({url})")
    assert tags_of(out) == [("p", [])]
    assert md.safe_url(url) is None


@pytest.mark.parametrize("url", ["&#106;avascript:alert%281%29", "&#x6A;avascript:x"])
def test_entity_encoded_schemes_stay_literal(url: str) -> None:
    # The browser decodes the attribute once and gets the literal "&#106;..." back: a
    # relative URL, not a javascript: one.
    for _, attrs in tags_of(md.markdown_to_html(f"[click]({url})"))[1:]:
        assert attrs == [("href", url)]


@pytest.mark.parametrize(
    "url", ["https://example.com/a", "http://example.com", "mailto:me@example.com", "/posts/x/",
            "../x", "#top", "page?q=a:b"]
)  # fmt: skip
def test_safe_link_urls_are_kept(url: str) -> None:
    out = md.markdown_to_html(f"[go]({url})")
    assert tags_of(out) == [("p", []), ("a", [("href", url)])]


def test_an_attribute_cannot_be_broken_out_of() -> None:
    out = md.markdown_to_html('[x](https://example.com/"onmouseover="alert`1`)')
    assert tags_of(out)[1] == ("a", [("href", 'https://example.com/"onmouseover="alert`1`')])
    assert 'href="https://example.com/&quot;onmouseover=&quot;alert`1`"' in out


def test_random_input_yields_only_the_allowed_tags_and_safe_links() -> None:
    rng = random.Random(6)
    alphabet = list("<>&\"'*_`[]()#->!\n\n  :/ab1.") + ["javascript:", "https://", "<script>"]
    for _ in range(300):
        source = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120)))
        out = md.markdown_to_html(source)
        for tag, attrs in tags_of(out):
            assert tag in ALLOWED_TAGS, (source, out)
            for name, value in attrs:
                assert (tag, name) in ALLOWED_ATTRS, (source, out)
                if name == "href":
                    assert md.safe_url(value) == value, (source, out)
        assert "<script" not in out.lower()


def test_loading_the_script_leaves_the_pack_unchanged() -> None:
    assert list(SCRIPT.parent.rglob("__pycache__")) == []


def test_emphasis_nests_across_kinds_only() -> None:
    assert md.markdown_to_html("**a _b_ c** and **d *e* f**") == (
        "<p><strong>a <em>b</em> c</strong> and **d <em>e</em> f**</p>"
    )
    assert md.markdown_to_html("2 * 3 * 4 and snake_case_name") == (
        "<p>2 * 3 * 4 and snake_case_name</p>"
    )
