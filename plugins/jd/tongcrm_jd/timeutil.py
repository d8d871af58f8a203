"""JD speaks Beijing time (GMT+8) without a zone marker; tongcrm wants aware datetimes.

Every conversion between the two lives here so that no other module guesses at an offset.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

#: JD's platform clock. A fixed offset (not ``Asia/Shanghai``) because China has no daylight saving time and a
#: fixed offset needs no tz database on the host.
GMT8 = timezone(timedelta(hours=8), "GMT+8")

_JD_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?$")
#: ``yyyy-MM-dd HH:mm:ss`` exactly, ASCII digits only (``\d`` would take other scripts' digits)
_JD_SECONDS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}").fullmatch
_JD_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})(?:\.(\d{3}))?(?:([+-])(\d{2})(\d{2}))?$")


def parse_jd_time(value: str) -> datetime:
    """Parse a JD business time (``yyyy-MM-dd HH:mm:ss`` with optional fraction) as GMT+8.

    Raises ``ValueError`` for anything else, including JD's ``0000-00-00 ...`` placeholders: callers decide
    whether a missing time is acceptable.
    """
    text = value.strip()
    if len(text) == 19 and _JD_SECONDS(text):
        # what JD sends, validated above: the C ISO parser, several times faster than the groups below, which
        # cost a visible share of the fetch side's CPU (issue #22)
        return datetime.fromisoformat(text).replace(tzinfo=GMT8)
    match = _JD_TIME.match(text)
    if not match:
        raise ValueError(f"not a JD time: {value!r}")
    year, month, day, hour, minute, second, frac = match.groups()
    micro = int((frac or "0").ljust(6, "0"))
    return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=GMT8)


def format_jd_time(value: datetime) -> str:
    """Render an aware datetime as a JD business time (GMT+8, whole seconds, truncated)."""
    _require_aware(value)
    return value.astimezone(GMT8).strftime("%Y-%m-%d %H:%M:%S")


def format_timestamp(value: datetime) -> str:
    """Render the ``timestamp`` system parameter as current JOS SDKs do: ``yyyy-MM-dd HH:mm:ss.SSS+0800``."""
    _require_aware(value)
    local = value.astimezone(GMT8)
    return f"{local.strftime('%Y-%m-%d %H:%M:%S')}.{local.microsecond // 1000:03d}+0800"


def parse_timestamp(value: str) -> datetime:
    """Parse a ``timestamp`` system parameter in either SDK generation's format (no offset means GMT+8)."""
    match = _JD_TIMESTAMP.match(value.strip())
    if not match:
        raise ValueError(f"not a JOS timestamp: {value!r}")
    base, millis, sign, hours, minutes = match.groups()
    tz = GMT8
    if sign is not None:
        offset = timedelta(hours=int(hours), minutes=int(minutes))
        tz = timezone(offset if sign == "+" else -offset)
    parsed = datetime.strptime(base, "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz)
    return parsed + timedelta(milliseconds=int(millis or "0"))


def _require_aware(value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got naive {value!r}")
