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
#: Texts parsed lately and their datetimes (immutable): a trade's ``modified`` is read by the adapter and again
#: by the normaliser, and its lines' ``consign_time`` mostly repeat the trade's — 42 % of a sync's parses repeat a
#: text (issue #22: 17,120 parses of 9,938 texts for 3,000 trades). Emptied when full, so it stays small.
_PARSED: dict[str, datetime] = {}
_PARSED_MAX = 8192


def format_top_time(moment: datetime) -> str:
    """Render an aware datetime as TOP expects it (GMT+8, second precision)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"refusing to format naive datetime {moment!r}: TOP times are GMT+8")
    return moment.astimezone(BEIJING).strftime(_FORMAT)


def parse_top_time(value: object) -> datetime:
    """Parse a TOP time string into an aware UTC datetime; anything else is a ``ValueError``."""
    if not isinstance(value, str):
        raise ValueError(f"expected a 'yyyy-MM-dd HH:mm:ss' string, got {type(value).__name__}")
    parsed = _PARSED.get(value)
    if parsed is not None:
        return parsed
    text = value.strip()
    try:
        if _CANONICAL(text):
            # what TOP sends, validated above: the C ISO parser, then GMT+8 → UTC by subtraction (a fixed
            # offset). strptime, then reading the fields by position, cost a large share of the fetch side's
            # CPU (several times per trade, issue #22); anything else (unpadded fields) goes through strptime
            parsed = (datetime.fromisoformat(text) - _OFFSET).replace(tzinfo=UTC)
            if len(_PARSED) >= _PARSED_MAX:
                _PARSED.clear()
            _PARSED[value] = parsed
            return parsed
        naive = datetime.strptime(text, _FORMAT)
    except ValueError:
        raise ValueError(f"malformed TOP time {value!r}") from None
    return naive.replace(tzinfo=BEIJING).astimezone(UTC)
