"""Cursor pagination over time-ordered ids (newest first): the cursor is the last id seen."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute

from shared.errors import Invalid

T = TypeVar("T")
_ID = re.compile(r"^[a-z]+_[0-9a-f]{1,64}$")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    bad = Invalid(
        "cursor is not valid",
        code="invalid_cursor",
        details={"fields": [{"field": "cursor", "message": "not a cursor we issued"}]},
    )
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        last_id = base64.b64decode(padded.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if not _ID.match(last_id):
        raise bad
    return last_id


def paginate(
    query: Select[Any], id_column: InstrumentedAttribute[str], limit: int, cursor: str | None
) -> Select[Any]:
    if cursor:
        query = query.where(id_column < decode_cursor(cursor))
    return query.order_by(id_column.desc()).limit(limit + 1)


def page_of(rows: list[T], limit: int, id_of: Any) -> tuple[list[T], str | None]:
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, encode_cursor(id_of(rows[-1]))
    return rows, None
