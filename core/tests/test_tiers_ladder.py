"""The ladder as a value: validation, the fairness rule, qualifying, shortfalls and calendar arithmetic."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tongcrm.errors import Unprocessable
from tongcrm.tiers.ladder import (
    ReviewPolicy,
    add_months,
    describe_missing,
    missing_for,
    on_anniversary,
    parse_ladder,
    window_start,
)
from tongcrm.tiers.testing import LADDER

SH = ZoneInfo("Asia/Shanghai")


def _ladder(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(LADDER)
    doc.update(changes)
    return doc


def test_a_valid_ladder_parses_and_qualifies_the_highest_tier_whose_rule_holds() -> None:
    ladder = parse_ladder(LADDER)
    assert [t.code for t in ladder.tiers] == ["member", "silver", "gold"]
    assert ladder.qualify({}).code == "member"
    assert ladder.qualify({("spend_fen", 12): 100_000}).code == "silver"
    assert ladder.qualify({("spend_fen", 12): 99_999}).code == "member"
    assert ladder.qualify({("order_count", 6): 10}).code == "gold"  # OR: orders alone are enough
    assert ladder.metric_keys() == [("order_count", 6), ("spend_fen", 12)]


def test_all_combinations_need_every_part() -> None:
    doc = _ladder()
    doc["tiers"][1]["rule"] = {
        "all": [{"metric": "spend_fen", "min": 1000}, {"metric": "points_earned", "min": 50, "months": 3}]
    }
    ladder = parse_ladder(doc)
    assert ladder.qualify({("spend_fen", 12): 5000}).code == "member"
    assert ladder.qualify({("spend_fen", 12): 5000, ("points_earned", 3): 50}).code == "silver"
    ways = missing_for(ladder.tiers[1].rule, {("spend_fen", 12): 400})
    assert len(ways) == 1 and [(s.metric, s.missing) for s in ways[0]] == [
        ("spend_fen", 600),
        ("points_earned", 50),
    ]
    assert describe_missing(ways) == "¥6 more and 50 points more"


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d["tiers"][2]["entitlements"].pop(2), "tier 'gold' lacks entitlement 'free_shipping'"),
        (lambda d: d["tiers"][2]["entitlements"].pop(0), "tier 'gold' lacks entitlement 'points_multiplier'"),
        (
            lambda d: d["tiers"][2]["entitlements"][0].update(value=110),
            "tier 'gold' gives a smaller 'points_multiplier' (110) than the lower tier 'silver' (120)",
        ),
        (
            lambda d: d["tiers"][2]["entitlements"][1].update(value=50),
            "tier 'gold' gives a smaller 'birthday_points' (50) than the lower tier 'silver' (100)",
        ),
        (
            lambda d: (
                d["tiers"][1]["entitlements"].append({"kind": "member_price", "value": 95}),
                d["tiers"][2]["entitlements"].append({"kind": "member_price", "value": 98}),
            ),
            "tier 'gold' prices members above the lower tier 'silver' with entitlement 'member_price'",
        ),
    ],
)
def test_unfair_ladders_are_refused_naming_tier_and_entitlement(mutate: Any, fragment: str) -> None:
    doc = _ladder()
    doc["tiers"][1]["entitlements"].append({"kind": "free_shipping"})
    mutate(doc)
    with pytest.raises(Unprocessable) as err:
        parse_ladder(doc)
    assert fragment in err.value.message
    assert err.value.extra["tier"] == "gold"


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d["tiers"][0].update(rule={"metric": "spend_fen", "min": 1}), "base tier"),
        (lambda d: d["tiers"][1].pop("rule"), "needs a rule"),
        (lambda d: d["tiers"][1].update(code="Gold!"), "must be lowercase"),
        (lambda d: d["tiers"][1].update(code="gold"), "used twice"),
        (lambda d: d["tiers"][1]["rule"].update(metric="likes"), "metric must be one of"),
        (lambda d: d["tiers"][1]["rule"].update(min=0), "at least 1"),
        (lambda d: d["tiers"][1]["rule"].update(min=1.5), "must be an integer"),
        (lambda d: d["tiers"][1]["rule"].update(months=0), "'months' must be between"),
        (lambda d: d["tiers"][1]["entitlements"].append({"kind": "caviar"}), "unknown entitlement 'caviar'"),
        (lambda d: d["tiers"][2]["entitlements"].append({"kind": "free_shipping"}), "twice"),
        (lambda d: d["tiers"][1]["entitlements"][0].update(value=90), "at least 100"),
        (lambda d: d.update(review={"mode": "annual", "month": 2, "day": 30}), "not a calendar day"),
        (lambda d: d.update(review={"mode": "weekly"}), "review mode"),
        (lambda d: d.update(tiers=[]), "non-empty list"),
        (lambda d: d.update(colour="red"), "unknown ladder field"),
    ],
)
def test_bad_ladders_are_refused_with_a_message(mutate: Any, fragment: str) -> None:
    doc = _ladder()
    mutate(doc)
    with pytest.raises(Unprocessable) as err:
        parse_ladder(doc)
    assert fragment in err.value.message


def test_member_price_above_list_is_refused() -> None:
    doc = _ladder()
    doc["tiers"][0]["entitlements"] = [{"kind": "member_price", "value": 105}]
    with pytest.raises(Unprocessable, match="at most 100"):
        parse_ladder(doc)


def test_month_arithmetic_clamps_to_month_ends_and_leap_days() -> None:
    assert add_months(date(2026, 3, 31), -1) == date(2026, 2, 28)
    assert add_months(date(2024, 3, 31), -1) == date(2024, 2, 29)
    assert add_months(date(2024, 2, 29), -12) == date(2023, 2, 28)
    assert add_months(date(2026, 1, 15), -13) == date(2024, 12, 15)
    assert on_anniversary(date(2024, 2, 29), 2025) == date(2025, 2, 28)
    assert on_anniversary(date(2024, 2, 29), 2028) == date(2028, 2, 29)


def test_next_review_on_anniversaries_and_annual_dates() -> None:
    anniversary = ReviewPolicy("anniversary")
    leap = date(2024, 2, 29)
    assert anniversary.next_review(leap, leap) == date(2025, 2, 28)
    assert anniversary.next_review(leap, date(2025, 2, 28)) == date(2026, 2, 28)
    assert anniversary.next_review(leap, date(2027, 2, 28)) == date(2028, 2, 29)
    assert anniversary.next_review(date(2026, 1, 31), date(2026, 1, 31)) == date(2027, 1, 31)
    annual = ReviewPolicy("annual", month=3, day=1)
    assert annual.next_review(date(2026, 2, 1), date(2026, 2, 28)) == date(2026, 3, 1)
    assert annual.next_review(date(2026, 2, 1), date(2026, 3, 1)) == date(2027, 3, 1)
    feb29 = ReviewPolicy("annual", month=2, day=29)
    assert feb29.next_review(date(2026, 1, 1), date(2026, 1, 1)) == date(2026, 2, 28)
    assert feb29.next_review(date(2026, 1, 1), date(2027, 3, 1)) == date(2028, 2, 29)


def test_windows_start_at_a_shanghai_midnight() -> None:
    # 2026-03-31 17:00 UTC is already 2026-04-01 01:00 in Shanghai: the window counts from 2026-03-01 local
    assert window_start(datetime(2026, 3, 31, 17, 0, tzinfo=UTC), 1, SH) == datetime(2026, 3, 1, tzinfo=SH)
    assert window_start(datetime(2026, 3, 31, 15, 59, tzinfo=UTC), 1, SH) == datetime(2026, 2, 28, tzinfo=SH)
