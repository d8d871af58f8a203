"""When a campaign runs: once, or on a recurrence, always in the programme's time zone.

A schedule is a small JSON document:

* ``{"kind": "once", "at": "2026-06-18T10:00:00+08:00"}`` — an aware moment, in the future when scheduled;
* ``{"kind": "daily", "time": "10:00"}``;
* ``{"kind": "weekly", "time": "10:00", "weekdays": [1, 5]}`` — ISO weekdays, 1 = Monday;
* ``{"kind": "monthly", "time": "10:00", "day": 31}`` — a day the month lacks means its last day (the 31st runs
  on 30 April and on 28 or 29 February);
* ``{"kind": "yearly", "time": "10:00", "month": 2, "day": 29}`` — 29 February runs on the 28th in other years.

Recurrences take optional ``"from"`` and ``"until"`` local dates (inclusive). Times of day are local to the
programme's zone (Asia/Shanghai unless the programme says otherwise), so a 00:30 run belongs to the local day,
which is the previous UTC day. Quiet hours and fatigue budgets are not the schedule's business: the dispatcher
applies them to every message it sends (a run at 23:00 waits for the marketing window).
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

KINDS = ("once", "daily", "weekly", "monthly", "yearly")
#: How far ahead the next occurrence is searched (a yearly 29 February may be up to a year away).
_HORIZON_DAYS = 800


class InvalidSchedule(ValueError):
    """A schedule document that says something impossible; the message says what."""


@dataclass(frozen=True, slots=True)
class Schedule:
    kind: str
    at: datetime | None = None
    time: time | None = None
    weekdays: frozenset[int] = frozenset()
    day: int | None = None
    month: int | None = None
    start: date | None = None
    until: date | None = None

    def document(self) -> dict[str, Any]:
        """The stored form (the inverse of :func:`parse`)."""
        if self.kind == "once":
            assert self.at is not None
            return {"kind": "once", "at": self.at.astimezone(UTC).isoformat()}
        assert self.time is not None
        doc: dict[str, Any] = {"kind": self.kind, "time": self.time.strftime("%H:%M")}
        if self.kind == "weekly":
            doc["weekdays"] = sorted(self.weekdays)
        if self.kind in ("monthly", "yearly"):
            doc["day"] = self.day
        if self.kind == "yearly":
            doc["month"] = self.month
        if self.start:
            doc["from"] = self.start.isoformat()
        if self.until:
            doc["until"] = self.until.isoformat()
        return doc


def _int(doc: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidSchedule(f"schedule {key!r} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _date(doc: Mapping[str, Any], key: str) -> date | None:
    value = doc.get(key)
    if value is None:
        return None
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise InvalidSchedule(f"schedule {key!r} must be a date like 2026-06-18, not {value!r}") from exc


def parse(doc: Any) -> Schedule:
    """Check a schedule document; :class:`InvalidSchedule` says what is wrong."""
    if not isinstance(doc, Mapping):
        raise InvalidSchedule("a schedule is an object with a 'kind'")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise InvalidSchedule(f"schedule kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    if kind == "once":
        try:
            at = datetime.fromisoformat(str(doc.get("at")))
        except ValueError as exc:
            raise InvalidSchedule("a 'once' schedule needs 'at', an ISO 8601 moment with its offset") from exc
        if at.tzinfo is None:
            raise InvalidSchedule("schedule 'at' needs a UTC offset (like +08:00)")
        return Schedule("once", at=at.astimezone(UTC))
    try:
        at_time = time.fromisoformat(str(doc.get("time")))
    except ValueError as exc:
        raise InvalidSchedule("a recurring schedule needs 'time', a local time of day like 10:00") from exc
    if at_time.tzinfo is not None or at_time.second or at_time.microsecond:
        raise InvalidSchedule("schedule 'time' is a local HH:MM without seconds or offset")
    weekdays: frozenset[int] = frozenset()
    day = month = None
    if kind == "weekly":
        raw = doc.get("weekdays")
        if not isinstance(raw, list) or not raw:
            raise InvalidSchedule("a weekly schedule needs 'weekdays', ISO weekdays 1 (Monday) to 7")
        weekdays = frozenset(_int({"weekdays": w}, "weekdays", 1, 7) for w in raw)
    if kind in ("monthly", "yearly"):
        day = _int(doc, "day", 1, 31)
    if kind == "yearly":
        month = _int(doc, "month", 1, 12)
        assert day is not None
        if day > (29 if month == 2 else calendar.monthrange(2001, month)[1]):
            raise InvalidSchedule(f"there is no {month}-{day} in any year")
    start, until = _date(doc, "from"), _date(doc, "until")
    if start and until and until < start:
        raise InvalidSchedule("schedule 'until' is before 'from'")
    return Schedule(kind, time=at_time, weekdays=weekdays, day=day, month=month, start=start, until=until)


def _clamped(year: int, month: int, day: int) -> date:
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _runs_on(s: Schedule, d: date) -> bool:
    if s.kind == "daily":
        return True
    if s.kind == "weekly":
        return d.isoweekday() in s.weekdays
    assert s.day is not None
    if s.kind == "monthly":
        return d == _clamped(d.year, d.month, s.day)
    assert s.month is not None
    return d.month == s.month and d == _clamped(d.year, s.month, s.day)


def next_after(s: Schedule, after: datetime, tz: ZoneInfo) -> datetime | None:
    """The first run strictly after ``after`` (UTC), or None when none is left."""
    if s.kind == "once":
        assert s.at is not None
        return s.at if s.at > after else None
    assert s.time is not None
    day = after.astimezone(tz).date()
    if s.start and day < s.start:
        day = s.start
    for _ in range(_HORIZON_DAYS):
        if s.until and day > s.until:
            return None
        if _runs_on(s, day):
            moment = datetime.combine(day, s.time, tzinfo=tz).astimezone(UTC)
            if moment > after:
                return moment
        day += timedelta(days=1)
    return None
