"""The adapter's sync cursor: an opaque JSON string to the core, a small typed record here.

Times are epoch seconds (TOP has second precision), so a cursor round-trips exactly. ``walk`` is only set
while a one-second window holds more trades than a page and is being paged backwards (see :mod:`adapter`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from tongcrm.plugin.errors import ChannelRequestError

__all__ = ["Cursor", "Walk"]

VERSION = 1


@dataclass(frozen=True, slots=True)
class Walk:
    """Backward paging through the overfull window ``[cursor.start, end)``; ``page`` is the next to fetch."""

    end: int
    page: int


@dataclass(frozen=True, slots=True)
class Cursor:
    start: int  # everything modified before this was delivered
    span: int  # the window length to try next, adapted to the shop's density
    caught_up: bool = False  # the last page reached the safety lag; the next fetch re-reads an overlap first
    walk: Walk | None = None

    def encode(self) -> str:
        data: dict[str, Any] = {
            "v": VERSION,
            "start": self.start,
            "span": self.span,
            "caught_up": self.caught_up,
        }
        if self.walk is not None:
            data["walk"] = {"end": self.walk.end, "page": self.walk.page}
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    def with_(self, **changes: Any) -> Cursor:
        return replace(self, **changes)

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            data = json.loads(text)
            if data.get("v") != VERSION:
                raise ValueError(f"unsupported cursor version {data.get('v')!r}")
            walk = data.get("walk")
            cursor = cls(
                start=_int(data["start"]),
                span=_int(data["span"]),
                caught_up=bool(data.get("caught_up", False)),
                walk=Walk(end=_int(walk["end"]), page=_int(walk["page"])) if walk else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ChannelRequestError(f"malformed taobao sync cursor: {exc}", code="cursor") from None
        if cursor.span < 1 or (
            cursor.walk is not None and (cursor.walk.page < 1 or cursor.walk.end <= cursor.start)
        ):
            raise ChannelRequestError("inconsistent taobao sync cursor", code="cursor")
        return cursor


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value
