"""The adapter's sync position, serialised as the opaque JSON string the core stores with each page.

A cursor names a time window over JD's ``modified`` time and a page inside it:

- ``since``: start of the current window (inclusive). It never moves backwards.
- ``end``: fixed end of a window being paged (``None`` before its first page: the end is then decided from
  the clock when the window is opened, and written down so that later pages see the same window).
- ``page`` / ``total``: next page to fetch, and ``orderTotal`` as first seen, to notice a window whose
  population changed while it was paged.
- ``span``: length to give the next window; it shrinks for busy windows and grows for quiet ones.
- ``skip``: ``orderId@modified`` keys the previous window already delivered inside the overlap with this one,
  so that the overlap (which catches late-indexed orders) does not deliver the same version twice.
- ``carry``: keys of this window that fall in the overlap with the *next* one (becomes its ``skip``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tongcrm_jd.errors import JosRequestError

VERSION = 1


@dataclass(frozen=True, slots=True)
class SyncCursor:
    since: datetime
    span: int
    end: datetime | None = None
    page: int = 1
    total: int | None = None
    skip: tuple[str, ...] = field(default=())
    carry: tuple[str, ...] = field(default=())

    def encode(self) -> str:
        data: dict[str, Any] = {
            "v": VERSION,
            "since": self.since.isoformat(),
            "span": self.span,
            "end": self.end.isoformat() if self.end else None,
            "page": self.page,
            "total": self.total,
            "skip": list(self.skip),
            "carry": list(self.carry),
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> SyncCursor:
        """Parse a cursor this adapter wrote; anything else is a caller error, not something to guess at."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != VERSION:
                raise ValueError("unknown cursor version")
            since = datetime.fromisoformat(data["since"])
            end = datetime.fromisoformat(data["end"]) if data.get("end") else None
            cursor = cls(
                since=since,
                span=int(data["span"]),
                end=end,
                page=int(data["page"]),
                total=None if data.get("total") is None else int(data["total"]),
                skip=tuple(str(k) for k in data.get("skip", ())),
                carry=tuple(str(k) for k in data.get("carry", ())),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise JosRequestError("invalid_cursor", en_desc=f"not a tongcrm-jd cursor ({exc})") from None
        if (
            since.tzinfo is None
            or (end is not None and end.tzinfo is None)
            or cursor.page < 1
            or cursor.span < 1
        ):
            raise JosRequestError("invalid_cursor", en_desc="not a tongcrm-jd cursor (bad values)")
        return cursor
