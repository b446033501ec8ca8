"""Opaque, time-ordered identifiers (``site_0193f1c2a4b7e5d1c2f3a4b5c6d7e8f9``)."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    """48-bit millisecond clock then 64 random bits, hex: sorts by creation time."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"
