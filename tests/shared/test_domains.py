"""Domain names as customers type them: normalized, or refused with a reason."""

from __future__ import annotations

import pytest

from shared.domains import normalize_domain
from shared.errors import Invalid


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("münchen.de", "xn--mnchen-3ya.de"),
        ("xn--mnchen-3ya.de", "xn--mnchen-3ya.de"),
        ("пример.рф", "xn--e1afmkfd.xn--p1ai"),
        ("例え.jp", "xn--r8jz45g.jp"),
        ("blog.example.co.uk", "blog.example.co.uk"),
        ("demo.sitefleet.test", "demo.sitefleet.test"),
    ],
)
def test_valid_names_are_normalized(raw: str, normalized: str) -> None:
    assert normalize_domain(raw) == normalized


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("a..b", "Empty Label"),
        ("example..com", "Empty Label"),
        ("-x.com", "hyphen"),
        ("x" * 300 + ".com", "253"),
        ("exa mple.com", "not allowed"),
        ("evil.com; include /etc/passwd", "not allowed"),
        ("../../etc", "not allowed"),
        ("localhost", "two labels"),
        ("1.2.3.4", "TLD"),
        ("xn--zz.com", ""),
        ("co.uk", "public suffix"),
        ("github.io", "public suffix"),
        ("com", "two labels"),
        ("аpple.com", "mixes scripts"),  # Cyrillic а among Latin letters
        ("gооgle.com", "mixes scripts"),
    ],
)
def test_invalid_names_are_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(Invalid) as caught:
        normalize_domain(raw)
    assert caught.value.code == "invalid_domain"
    assert reason in caught.value.message
    assert caught.value.details["fields"][0]["field"] == "domain"
