"""Earning rules: the rule-set document, its validation, and the pure arithmetic of earning and expiry.

A rule set is a versioned JSON document::

    {"reversal_policy": "debt", "expiry": {"kind": "end_of_year", "months": 12},
     "rules": [
        {"type": "spend", "code": "beauty-x3", "priority": 10, "points_per_yuan": "3", "stacking": "exclusive",
         "categories": ["beauty"]},
        {"type": "spend", "code": "base", "priority": 100, "points_per_yuan": "1", "rounding": "down",
         "exclude_channels": ["jd"], "release": "return_window", "return_window_days": 7},
        {"type": "event", "code": "birthday", "priority": 10, "event": "birthday", "points": 200,
         "cap": {"points": 200, "period": "year"}}]}

Rules are evaluated in ascending ``priority`` (priorities are unique, so the order is never ambiguous). Every
applicable rule awards its points; a rule with ``stacking: "exclusive"`` stops the evaluation after itself, so
rules of lower priority do not apply to that line (or event). Arithmetic is in integers: the rate is parsed as a
``Decimal`` into an exact fraction and the result rounded once, with the rule's rounding mode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from zoneinfo import ZoneInfo

import msgspec

from tongcrm.errors import Unprocessable

Rounding = Literal["down", "half_up", "up"]
Stacking = Literal["stack", "exclusive"]
Release = Literal["paid", "completed", "return_window"]
EventName = Literal["signup", "birthday", "first_purchase", "referral", "review"]
Period = Literal["day", "month", "year", "lifetime"]

_CODE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class Expiry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """never | days_after (N whole days after the earning day) | end_of_month / end_of_year (of the month/year
    ``months`` after earning). Boundaries are local midnights in the programme's time zone."""

    kind: Literal["never", "days_after", "end_of_month", "end_of_year"] = "never"
    days: int = 0
    months: int = 0


class Cap(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    points: int
    period: Period


class SpendRule(
    msgspec.Struct, tag="spend", tag_field="type", forbid_unknown_fields=True, omit_defaults=True
):
    code: str
    priority: int
    points_per_yuan: str = "1"
    rounding: Rounding = "down"
    stacking: Stacking = "stack"
    channels: list[str] = []
    stores: list[str] = []
    categories: list[str] = []
    exclude_channels: list[str] = []
    exclude_stores: list[str] = []
    exclude_categories: list[str] = []
    exclude_skus: list[str] = []
    tier_multiplier: bool = True
    release: Release = "completed"
    return_window_days: int = 0
    expiry: Expiry | None = None
    cap: Cap | None = None


class EventRule(
    msgspec.Struct, tag="event", tag_field="type", forbid_unknown_fields=True, omit_defaults=True
):
    code: str
    priority: int
    event: EventName
    points: int
    stacking: Stacking = "stack"
    tier_multiplier: bool = False
    expiry: Expiry | None = None
    cap: Cap | None = None


Rule = SpendRule | EventRule


class RuleSetDoc(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    rules: list[Rule] = []
    #: What a refund does when the points it takes back were already spent: ``debt`` records a negative
    #: available balance at once; ``clawback`` takes what it can and owes the rest from future earnings.
    reversal_policy: Literal["debt", "clawback"] = "debt"
    #: Expiry of lots whose rule names none (and of adjustments).
    expiry: Expiry = Expiry()


#: Used while no rule set was ever activated: 1 point per yuan, rounded down, available on completion.
DEFAULT_DOCUMENT = RuleSetDoc(rules=[SpendRule(code="base", priority=100)])


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: int
    doc: RuleSetDoc
    rates: dict[str, tuple[int, int]]  # spend rule code -> (numerator, denominator) points per yuan
    #: The spend rules in order of evaluation (priority), sorted once: every line of every order walks them.
    spend_by_priority: tuple[SpendRule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.spend_rules, key=lambda r: r.priority))
        object.__setattr__(self, "spend_by_priority", ordered)

    @property
    def spend_rules(self) -> list[SpendRule]:
        return [r for r in self.doc.rules if isinstance(r, SpendRule)]

    def event_rules(self, event: str) -> list[EventRule]:
        return [r for r in self.doc.rules if isinstance(r, EventRule) and r.event == event]

    def rule(self, code: str | None) -> Rule | None:
        return next((r for r in self.doc.rules if r.code == code), None)

    @property
    def has_caps(self) -> bool:
        return any(r.cap is not None for r in self.doc.rules)


def parse_document(raw: Any) -> RuleSetDoc:
    try:
        doc = msgspec.convert(raw, RuleSetDoc)
    except msgspec.ValidationError as exc:
        raise Unprocessable(
            f"invalid rule set: {exc}", code="rules.invalid", params={"detail": str(exc)}
        ) from exc
    compile_rules(0, doc)
    return doc


def compile_rules(version: int, doc: RuleSetDoc) -> RuleSet:
    codes: set[str] = set()
    priorities: dict[tuple[str, str], str] = {}
    rates: dict[str, tuple[int, int]] = {}
    for rule in doc.rules:
        if not _CODE.match(rule.code):
            raise Unprocessable(
                f"rule code {rule.code!r} must be lowercase letters, digits, '.', '_' or '-'",
                code="rules.code",
                params={"code": rule.code},
            )
        if rule.code in codes:
            raise Unprocessable(
                f"rule code {rule.code!r} is used twice", code="rules.code_twice", params={"code": rule.code}
            )
        codes.add(rule.code)
        group = ("spend", "") if isinstance(rule, SpendRule) else ("event", rule.event)
        key = (f"{group[0]}:{group[1]}", str(rule.priority))
        if key in priorities:
            raise Unprocessable(
                f"rules {priorities[key]!r} and {rule.code!r} have the same priority {rule.priority}: "
                "priorities must be unique so the order of evaluation is explicit",
                code="rules.priority_twice",
                params={"other": priorities[key], "code": rule.code, "priority": rule.priority},
            )
        priorities[key] = rule.code
        _check_expiry(rule.expiry, rule.code)
        if rule.cap is not None and rule.cap.points < 0:
            raise Unprocessable(
                f"rule {rule.code!r}: a cap cannot be negative",
                code="rules.cap_negative",
                params={"code": rule.code},
            )
        if isinstance(rule, SpendRule):
            rates[rule.code] = parse_rate(rule.points_per_yuan, rule.code)
            if rule.return_window_days < 0:
                raise Unprocessable(
                    f"rule {rule.code!r}: return_window_days cannot be negative",
                    code="rules.return_window",
                    params={"code": rule.code, "max": MAX_RETURN_WINDOW_DAYS},
                )
            if rule.return_window_days > MAX_RETURN_WINDOW_DAYS:
                raise Unprocessable(
                    f"rule {rule.code!r}: return_window_days is at most {MAX_RETURN_WINDOW_DAYS}",
                    code="rules.return_window",
                    params={"code": rule.code, "max": MAX_RETURN_WINDOW_DAYS},
                )
        elif rule.points < 0:
            raise Unprocessable(
                f"rule {rule.code!r}: points cannot be negative (use an adjustment)",
                code="rules.event_points",
                params={"code": rule.code, "max": MAX_RATE},
            )
        elif rule.points > MAX_RATE:
            raise Unprocessable(
                f"rule {rule.code!r}: an event earns at most {MAX_RATE} points",
                code="rules.event_points",
                params={"code": rule.code, "max": MAX_RATE},
            )
    _check_expiry(doc.expiry, "(rule set)")
    return RuleSet(version, doc, rates)


#: Bounds on a rule-set document's numbers, so every date and sum computed from them stays representable:
#: expiry at most a hundred years out, a return window of at most ten years, and at most a million points
#: per yuan or per event (one earning entry is still refused past a balance's bound by the ledger).
MAX_EXPIRY_DAYS = 36_500
MAX_EXPIRY_MONTHS = 1_200
MAX_RETURN_WINDOW_DAYS = 3_650
MAX_RATE = 1_000_000


def _check_expiry(expiry: Expiry | None, code: str) -> None:
    if expiry is None:
        return
    if expiry.days < 0 or expiry.months < 0:
        raise Unprocessable(
            f"rule {code!r}: expiry days and months cannot be negative",
            code="rules.expiry_range",
            params={"code": code, "days": MAX_EXPIRY_DAYS, "months": MAX_EXPIRY_MONTHS},
        )
    if expiry.days > MAX_EXPIRY_DAYS or expiry.months > MAX_EXPIRY_MONTHS:
        raise Unprocessable(
            f"rule {code!r}: expiry is at most {MAX_EXPIRY_DAYS} days or {MAX_EXPIRY_MONTHS} months out",
            code="rules.expiry_range",
            params={"code": code, "days": MAX_EXPIRY_DAYS, "months": MAX_EXPIRY_MONTHS},
        )
    if expiry.kind == "days_after" and expiry.days < 1:
        raise Unprocessable(
            f"rule {code!r}: days_after expiry needs days >= 1",
            code="rules.expiry_days",
            params={"code": code},
        )


def parse_rate(text: str, code: str = "") -> tuple[int, int]:
    """``"1.5"`` → (3, 2): an exact fraction, so no float ever touches the arithmetic."""
    try:
        rate = Decimal(text)
    except InvalidOperation:
        raise Unprocessable(
            f"rule {code!r}: points_per_yuan {text!r} is not a number",
            code="rules.rate",
            params={"code": code, "value": text, "max": MAX_RATE},
        ) from None
    if not rate.is_finite() or rate < 0:
        raise Unprocessable(
            f"rule {code!r}: points_per_yuan must be a non-negative number",
            code="rules.rate",
            params={"code": code, "value": text, "max": MAX_RATE},
        )
    if rate > MAX_RATE:
        raise Unprocessable(
            f"rule {code!r}: points_per_yuan is at most {MAX_RATE}",
            code="rules.rate",
            params={"code": code, "value": text, "max": MAX_RATE},
        )
    num, den = rate.as_integer_ratio()
    return num, den


def divide(numerator: int, denominator: int, rounding: Rounding) -> int:
    """Integer division of non-negative numbers with an explicit rounding mode."""
    q, r = divmod(numerator, denominator)
    if rounding == "up":
        return q + (1 if r else 0)
    if rounding == "half_up":
        return q + (1 if 2 * r >= denominator and r else 0)
    return q


#: Not frozen (issue #22): one is made for every line a page earns on, and a frozen dataclass's ``__init__``
#: sets each field through ``object.__setattr__``; nothing changes one, and none is hashed.
@dataclass(slots=True)
class LineInput:
    channel: str
    store_code: str | None
    sku: str | None
    category: str | None
    amount_fen: int


#: Not frozen, as :class:`LineInput`.
@dataclass(slots=True)
class Earned:
    rule: SpendRule
    points: int
    detail: dict[str, Any]


def spend_applies(rule: SpendRule, line: LineInput) -> bool:
    if rule.channels and line.channel not in rule.channels:
        return False
    if rule.stores and line.store_code not in rule.stores:
        return False
    if rule.categories and line.category not in rule.categories:
        return False
    if line.channel in rule.exclude_channels:
        return False
    if line.store_code is not None and line.store_code in rule.exclude_stores:
        return False
    if line.category is not None and line.category in rule.exclude_categories:
        return False
    return not (line.sku is not None and line.sku in rule.exclude_skus)


def earn_for_line(rules: RuleSet, line: LineInput, multiplier_pct: int) -> list[Earned]:
    """The points each applicable spend rule awards for one line, before caps."""
    out: list[Earned] = []
    for rule in rules.spend_by_priority:
        if not spend_applies(rule, line):
            continue
        num, den = rules.rates[rule.code]
        pct = multiplier_pct if rule.tier_multiplier else 100
        # fen → yuan is /100, the multiplier percentage is /100: one rounding at the very end.
        points = divide(max(line.amount_fen, 0) * num * pct, den * 100 * 100, rule.rounding)
        detail = {
            "base_fen": line.amount_fen,
            "points_per_yuan": rule.points_per_yuan,
            "multiplier_pct": pct,
            "rounding": rule.rounding,
            "priority": rule.priority,
            "stacking": rule.stacking,
        }
        out.append(Earned(rule, points, detail))
        if rule.stacking == "exclusive":
            break
    return out


def event_points(rules: RuleSet, event: str, multiplier_pct: int) -> list[tuple[EventRule, int]]:
    out: list[tuple[EventRule, int]] = []
    for rule in sorted(rules.event_rules(event), key=lambda r: r.priority):
        pct = multiplier_pct if rule.tier_multiplier else 100
        out.append((rule, divide(rule.points * pct, 100, "down")))
        if rule.stacking == "exclusive":
            break
    return out


# -------------------------------------------------------------------------------------------------------------
# time


def _local_midnight(year: int, month: int, day: int, tz: ZoneInfo) -> datetime:
    return datetime.combine(datetime(year, month, day).date(), time(0), tzinfo=tz)


def _add_months(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def expires_at(expiry: Expiry, earned_at: datetime, tz: ZoneInfo) -> datetime | None:
    """When a lot earned at ``earned_at`` expires: a local midnight in the programme's zone, so everyone's
    points of one day expire at the same wall-clock moment."""
    local = earned_at.astimezone(tz)
    if expiry.kind == "never":
        return None
    if expiry.kind == "days_after":
        day = local.date() + timedelta(days=expiry.days + 1)
        return _local_midnight(day.year, day.month, day.day, tz)
    year, month = _add_months(local.year, local.month, expiry.months)
    if expiry.kind == "end_of_month":
        year, month = _add_months(year, month, 1)
        return _local_midnight(year, month, 1, tz)
    return _local_midnight(year + 1, 1, 1, tz)


def period_key(period: Period, at: datetime, tz: ZoneInfo) -> str:
    local = at.astimezone(tz)
    if period == "day":
        return f"day:{local:%Y-%m-%d}"
    if period == "month":
        return f"month:{local:%Y-%m}"
    if period == "year":
        return f"year:{local:%Y}"
    return "lifetime"
