"""Schedules: parsing with reasons, and occurrences across month ends, leap days and the Asia/Shanghai day."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tongcrm.campaigns.schedule import InvalidSchedule, next_after, parse

SH = ZoneInfo("Asia/Shanghai")


def _runs(doc: dict[str, Any], start: datetime, count: int) -> list[datetime]:
    s = parse(doc)
    out: list[datetime] = []
    at = start
    for _ in range(count):
        nxt = next_after(s, at, SH)
        if nxt is None:
            break
        out.append(nxt)
        at = nxt
    return out


def test_monthly_on_the_31st_runs_on_each_month_end_leap_february_included() -> None:
    runs = _runs({"kind": "monthly", "time": "10:00", "day": 31}, datetime(2028, 1, 1, tzinfo=UTC), 5)
    assert [r.astimezone(SH).date() for r in runs] == [
        date(2028, 1, 31), date(2028, 2, 29), date(2028, 3, 31), date(2028, 4, 30), date(2028, 5, 31),
    ]  # fmt: skip
    assert all(r.astimezone(SH).hour == 10 for r in runs)


def test_yearly_on_29_february_runs_on_the_28th_in_other_years() -> None:
    runs = _runs(
        {"kind": "yearly", "time": "09:00", "month": 2, "day": 29}, datetime(2027, 1, 1, tzinfo=UTC), 3
    )
    assert [r.astimezone(SH).date() for r in runs] == [
        date(2027, 2, 28),
        date(2028, 2, 29),
        date(2029, 2, 28),
    ]


def test_a_time_after_local_midnight_belongs_to_the_shanghai_day_the_previous_utc_day() -> None:
    runs = _runs({"kind": "daily", "time": "00:30"}, datetime(2026, 12, 31, 16, 0, tzinfo=UTC), 2)
    # 00:30 on 1 January in Shanghai is 16:30 UTC on 31 December
    assert runs == [datetime(2026, 12, 31, 16, 30, tzinfo=UTC), datetime(2027, 1, 1, 16, 30, tzinfo=UTC)]
    # asked a minute after the run, the next is the following local day
    assert _runs({"kind": "daily", "time": "00:30"}, datetime(2026, 12, 31, 16, 31, tzinfo=UTC), 1) == [
        datetime(2027, 1, 1, 16, 30, tzinfo=UTC)
    ]


def test_weekly_and_the_from_until_window() -> None:
    doc = {"kind": "weekly", "time": "20:00", "weekdays": [1, 5], "from": "2026-12-07", "until": "2026-12-18"}
    runs = _runs(doc, datetime(2026, 12, 1, tzinfo=UTC), 10)
    assert [r.astimezone(SH).date() for r in runs] == [
        date(2026, 12, 7), date(2026, 12, 11), date(2026, 12, 14), date(2026, 12, 18),
    ]  # fmt: skip


def test_once_runs_once_and_round_trips() -> None:
    s = parse({"kind": "once", "at": "2026-06-18T10:00:00+08:00"})
    assert s.at == datetime(2026, 6, 18, 2, tzinfo=UTC)
    assert next_after(s, datetime(2026, 6, 18, 1, tzinfo=UTC), SH) == s.at
    assert next_after(s, s.at, SH) is None
    assert parse(s.document()) == s
    monthly = parse({"kind": "monthly", "time": "10:00", "day": 5, "until": "2027-01-01"})
    assert parse(monthly.document()) == monthly


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"kind": "hourly"}, "unknown"),
        ({"kind": "once", "at": "2026-06-18T10:00:00"}, "offset"),
        ({"kind": "once"}, "'at'"),
        ({"kind": "daily", "time": "25:00"}, "'time'"),
        ({"kind": "weekly", "time": "10:00", "weekdays": [0]}, "weekdays"),
        ({"kind": "monthly", "time": "10:00", "day": 32}, "'day'"),
        ({"kind": "yearly", "time": "10:00", "month": 4, "day": 31}, "no 4-31"),
        ({"kind": "daily", "time": "10:00", "from": "2027-01-02", "until": "2027-01-01"}, "before"),
        ([], "object"),
    ],
)
def test_impossible_schedules_say_why(doc: Any, says: str) -> None:
    with pytest.raises(InvalidSchedule, match=says):
        parse(doc)
