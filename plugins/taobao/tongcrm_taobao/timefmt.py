"""TOP's time format: ``yyyy-MM-dd HH:mm:ss`` in Beijing time (GMT+8), without any zone marker.

Every time crossing the wire goes through these two functions, so naive datetimes never leak into the rest of
tongcrm and the platform never sees anything but GMT+8.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

__all__ = ["BEIJING", "format_top_time", "parse_top_time"]

BEIJING = timezone(timedelta(hours=8), "GMT+8")
_OFFSET = timedelta(hours=8)
_FORMAT = "%Y-%m-%d %H:%M:%S"
#: ``yyyy-MM-dd HH:mm:ss`` exactly, ASCII digits only (``int`` would take other scripts' digits and signs).
_CANONICAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}").fullmatch


def format_top_time(moment: datetime) -> str:
    """Render an aware datetime as TOP expects it (GMT+8, second precision)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"refusing to format naive datetime {moment!r}: TOP times are GMT+8")
    return moment.astimezone(BEIJING).strftime(_FORMAT)


def parse_top_time(value: object) -> datetime:
    """Parse a TOP time string into an aware UTC datetime; anything else is a ``ValueError``."""
    if not isinstance(value, str):
        raise ValueError(f"expected a 'yyyy-MM-dd HH:mm:ss' string, got {type(value).__name__}")
    text = value.strip()
    try:
        if _CANONICAL(text):
            # what TOP sends, validated above: the C ISO parser, then GMT+8 → UTC by subtraction (a fixed
            # offset). strptime, then reading the fields by position, cost a large share of the fetch side's
            # CPU (several times per trade, issue #22); anything else (unpadded fields) goes through strptime
            return (datetime.fromisoformat(text) - _OFFSET).replace(tzinfo=UTC)
        naive = datetime.strptime(text, _FORMAT)
    except ValueError:
        raise ValueError(f"malformed TOP time {value!r}") from None
    return naive.replace(tzinfo=BEIJING).astimezone(UTC)
