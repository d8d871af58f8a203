"""TOP times: the positional fast path reads exactly what strptime reads, and refuses what it refuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tongcrm_taobao.timefmt import _FORMAT, BEIJING, format_top_time, parse_top_time


def _by_strptime(text: str) -> datetime:
    return datetime.strptime(text.strip(), _FORMAT).replace(tzinfo=BEIJING).astimezone(UTC)


# Hypothesis times how long it takes to draw examples and to run each, in wall time: on a loaded machine both
# fail the test though the property holds. What is checked here is what is parsed, not how fast.
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2099, 12, 31)))
def test_canonical_times_parse_as_strptime_parses_them(moment: datetime) -> None:
    text = moment.replace(microsecond=0).strftime(_FORMAT)
    assert parse_top_time(text) == _by_strptime(text)
    assert parse_top_time(text).tzinfo is UTC  # what the storage's fast path for UTC expects
    assert parse_top_time(f" {text} ") == _by_strptime(text)
    assert format_top_time(parse_top_time(text)) == text


@pytest.mark.parametrize("text", ["2024-1-5 3:04:05", "2024-01-05 3:4:5"])
def test_unpadded_times_still_parse(text: str) -> None:
    assert parse_top_time(text) == _by_strptime(text)


@pytest.mark.parametrize(
    "text",
    [
        "2024-13-01 00:00:00",
        "2023-02-29 00:00:00",
        "2024-01-05 24:00:00",
        "2024-01-05T03:04:05",
        "",
        "2024-01-05",
    ],
)
def test_malformed_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="malformed TOP time"):
        parse_top_time(text)


def test_a_text_parsed_again_is_the_same_time_and_the_memory_stays_bounded() -> None:
    from tongcrm_taobao import timefmt

    first = parse_top_time("2024-11-11 08:00:00")
    assert parse_top_time("2024-11-11 08:00:00") == first == datetime(2024, 11, 11, 0, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="malformed TOP time"):  # a refusal is never remembered as a time
        parse_top_time("2024-11-11 24:00:00")
    with pytest.raises(ValueError, match="malformed TOP time"):
        parse_top_time("2024-11-11 24:00:00")
    for second in range(timefmt._PARSED_MAX + 10):
        moment = datetime(2024, 1, 1, tzinfo=UTC).timestamp() + second
        text = format_top_time(datetime.fromtimestamp(moment, UTC))
        assert parse_top_time(text).timestamp() == moment
    assert len(timefmt._PARSED) <= timefmt._PARSED_MAX
