"""JD business times: the fast path for whole seconds reads exactly what the general pattern reads."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tongcrm_jd.timeutil import GMT8, parse_jd_time


def _by_fields(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=GMT8)


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2099, 12, 31)))
def test_whole_seconds_parse_as_before(moment: datetime) -> None:
    text = moment.replace(microsecond=0).strftime("%Y-%m-%d %H:%M:%S")
    parsed = parse_jd_time(f" {text} ")
    assert parsed == _by_fields(text)
    assert parsed.tzinfo is GMT8  # the normalised output keeps JD's offset, as it did


def test_fractions_and_bad_values() -> None:
    assert parse_jd_time("2024-01-01 08:00:00.5").microsecond == 500_000
    for text in ("0000-00-00 00:00:00", "2024-13-01 00:00:00", "2024-01-01T08:00:00", "2024-1-1 8:00:00"):
        with pytest.raises(ValueError, match=r"not a JD time|out of range|must be in"):
            parse_jd_time(text)
