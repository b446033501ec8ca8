"""Domain names as customers type them -> the one normalized form we store and serve."""

from __future__ import annotations

import re
from functools import lru_cache

import idna
from confusable_homoglyphs import confusables
from publicsuffixlist import PublicSuffixList

from shared.errors import Invalid

# Scripts that legitimately mix with one other script in a label (Japanese, Chinese,
# Korean writing; digits and hyphens are COMMON). Latin/Cyrillic/Greek mixes are refused.
_MIXABLE = ["COMMON", "HAN", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO"]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_TLD = re.compile(r"^(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$")


def normalize_domain(raw: object, field: str = "domain") -> str:
    """IDNA 2008 (UTS #46 mapping), lower-case A-labels, no trailing dot.

    Rejects anything that is not a plain registrable-looking hostname: empty labels, leading
    or trailing hyphens, spaces, slashes, ``;``, dots-only paths, over-long names, IP-like
    names, single labels.
    """

    def bad(reason: str) -> Invalid:
        return Invalid(
            f"{field} is not a valid domain name: {reason}",
            code="invalid_domain",
            details={"fields": [{"field": field, "message": reason}]},
        )

    if not isinstance(raw, str):
        raise bad("must be a string")
    name = raw.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        raise bad("must be 1 to 253 characters")
    try:
        ascii_name = idna.encode(name, uts46=True, std3_rules=True, transitional=False).decode()
    except idna.IDNAError as exc:
        raise bad(str(exc)) from None
    ascii_name = ascii_name.lower()
    if len(ascii_name) > 253:
        raise bad("must be at most 253 characters once encoded")
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise bad("must have at least two labels, like example.com")
    for label in labels:
        if not _LABEL.match(label):
            raise bad(f"label {label!r} must be 1-63 letters, digits or inner hyphens")
    if not _TLD.match(labels[-1]):
        raise bad(f"top-level label {labels[-1]!r} is not a valid TLD")
    try:
        unicode_name = idna.decode(ascii_name)
    except idna.IDNAError as exc:  # e.g. an xn-- label that is not valid punycode
        raise bad(str(exc)) from None
    for label in unicode_name.split("."):
        if confusables.is_mixed_script(label, allowed_aliases=_MIXABLE):
            raise bad(f"label {label!r} mixes scripts (a possible homograph)")
    if _public_suffixes().is_public(ascii_name):
        raise bad(f"{ascii_name!r} is a public suffix, not a domain anyone can own")
    return ascii_name


@lru_cache(maxsize=1)
def _public_suffixes() -> PublicSuffixList:
    """The Public Suffix List shipped with the package (no network at run time)."""
    return PublicSuffixList()


def domain_slug(domain: str) -> str:
    """A DNS-label-safe name for per-site CDN hostnames (``www-example-com``)."""
    return domain.replace(".", "-")[:63].strip("-")


# Latin characters that read as one another in most fonts, folded after the script mapping.
_LATIN_FOLD = str.maketrans({"1": "l", "i": "l", "0": "o"})


def domain_skeleton(domain: str) -> str:
    """The name as it looks: each character replaced by its Latin look-alike (Unicode
    confusables data), then ``i``/``1``/``l`` and ``0``/``o`` folded. Two names with one
    skeleton are homographs (``аррӏе.com`` in Cyrillic and ``apple.com``)."""
    try:
        text = idna.decode(domain)
    except idna.IDNAError:
        text = domain
    out = []
    for char in text.lower():
        if char.isascii():
            out.append(char)
            continue
        found = confusables.is_confusable(char, greedy=True, preferred_aliases=["latin"])
        latin = [h["c"] for f in found or [] for h in f["homoglyphs"] if h["c"].isascii()]
        out.append(latin[0].lower() if latin else char)
    return "".join(out).translate(_LATIN_FOLD)


def registrable_domain(domain: str) -> str | None:
    """The part of ``domain`` one label under its public suffix (``www.example.co.uk`` ->
    ``example.co.uk``); None for a public suffix itself."""
    found = _public_suffixes().privatesuffix(domain)
    return str(found) if found else None
