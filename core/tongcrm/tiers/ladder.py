"""The tier ladder (等级) as a pure value: parsing and validation (including the fairness rule), qualifying a
member from metric values, what is missing to reach a tier, and the calendar arithmetic of windows and reviews.

A ladder document::

    {"window_months": 12,
     "review": {"mode": "anniversary", "one_step": true},           # or {"mode": "annual", "month": 1, "day": 1}
     "tiers": [
        {"code": "member", "name": "会员"},
        {"code": "silver", "name": "银卡", "rule": {"metric": "spend_fen", "min": 100000},
         "entitlements": [{"kind": "points_multiplier", "value": 120}]},
        {"code": "gold", "name": "金卡",
         "rule": {"any": [{"metric": "spend_fen", "min": 500000}, {"metric": "order_count", "min": 12, "months": 6}]},
         "entitlements": [{"kind": "points_multiplier", "value": 150}, {"kind": "free_shipping"}]}]}

Tiers are listed lowest first; the first tier has no rule (every member holds at least it). A rule is a
condition ``{"metric", "min", "months"?}`` or ``{"all": [...]}`` / ``{"any": [...]}`` of rules. Metrics:
``spend_fen`` (paid minus refunded, all channels), ``points_earned`` (ledger earns net of their reversals) and
``order_count`` (paid orders not wholly refunded), each summed over the last ``months`` months.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from tongcrm.entitlements.catalogue import CATALOGUE, Direction, kind
from tongcrm.errors import Unprocessable

Metric = Literal["spend_fen", "points_earned", "order_count"]
METRICS: tuple[Metric, ...] = ("spend_fen", "points_earned", "order_count")
MAX_MONTHS = 60
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


# -------------------------------------------------------------------------------------------------------------
# rules


@dataclass(frozen=True, slots=True)
class Condition:
    metric: Metric
    minimum: int
    months: int

    @property
    def key(self) -> tuple[Metric, int]:
        return (self.metric, self.months)

    def holds(self, values: Mapping[tuple[Metric, int], int]) -> bool:
        return values.get(self.key, 0) >= self.minimum

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "min": self.minimum, "months": self.months}


@dataclass(frozen=True, slots=True)
class Combination:
    op: Literal["all", "any"]
    parts: tuple[Rule, ...]

    def holds(self, values: Mapping[tuple[Metric, int], int]) -> bool:
        results = (p.holds(values) for p in self.parts)
        return all(results) if self.op == "all" else any(results)

    def as_dict(self) -> dict[str, Any]:
        return {self.op: [p.as_dict() for p in self.parts]}


Rule = Condition | Combination


def conditions(rule: Rule) -> list[Condition]:
    if isinstance(rule, Condition):
        return [rule]
    return [c for part in rule.parts for c in conditions(part)]


def options(rule: Rule) -> list[list[Condition]]:
    """The rule in disjunctive normal form: it holds when every condition of some option holds."""
    if isinstance(rule, Condition):
        return [[rule]]
    if rule.op == "any":
        return [opt for part in rule.parts for opt in options(part)]
    result: list[list[Condition]] = [[]]
    for part in rule.parts:
        result = [left + right for left in result for right in options(part)]
    return result


# -------------------------------------------------------------------------------------------------------------
# the ladder


@dataclass(frozen=True, slots=True)
class Entitlement:
    kind: str
    value: int = 0
    provider: str | None = None
    validity_days: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "value": self.value}
        if self.provider is not None:
            out["provider"] = self.provider
        if self.validity_days is not None:
            out["validity_days"] = self.validity_days
        if self.params:
            out["params"] = dict(self.params)
        return out


@dataclass(frozen=True, slots=True)
class Tier:
    code: str
    name: str
    rank: int
    rule: Rule | None
    entitlements: tuple[Entitlement, ...] = ()

    def entitlement(self, kind_code: str) -> Entitlement | None:
        return next((e for e in self.entitlements if e.kind == kind_code), None)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "name": self.name}
        if self.rule is not None:
            out["rule"] = self.rule.as_dict()
        out["entitlements"] = [e.as_dict() for e in self.entitlements]
        return out


@dataclass(frozen=True, slots=True)
class ReviewPolicy:
    #: annual: everyone is reviewed on one calendar day (``month``/``day``) each year; anniversary: each member
    #: on the anniversary of their last tier change.
    mode: Literal["annual", "anniversary"] = "anniversary"
    month: int = 1
    day: int = 1
    #: At a review, drop at most one tier even if the member qualifies for less.
    one_step: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "month": self.month, "day": self.day, "one_step": self.one_step}

    def next_review(self, anchor: date, today: date) -> date:
        """The first review strictly after ``today`` for a member whose last tier change was on ``anchor``."""
        if self.mode == "annual":
            fixed = date(2000, self.month, self.day)
            candidate = on_anniversary(fixed, today.year)
            return candidate if candidate > today else on_anniversary(fixed, today.year + 1)
        year = max(anchor.year + 1, today.year)
        candidate = on_anniversary(anchor, year)
        return candidate if candidate > today else on_anniversary(anchor, year + 1)


@dataclass(frozen=True, slots=True)
class Ladder:
    tiers: tuple[Tier, ...]
    window_months: int = 12
    review: ReviewPolicy = ReviewPolicy()
    version: int = 0

    @property
    def base(self) -> Tier:
        return self.tiers[0]

    def tier(self, code: str) -> Tier | None:
        return next((t for t in self.tiers if t.code == code), None)

    def rank_of(self, code: str | None) -> int:
        """The rank of ``code`` (0 for codes this ladder does not know: applying a ladder maps them first)."""
        found = self.tier(code) if code is not None else None
        return found.rank if found is not None else 0

    def at_rank(self, rank: int) -> Tier:
        return self.tiers[max(0, min(rank, len(self.tiers) - 1))]

    def qualify(self, values: Mapping[tuple[Metric, int], int]) -> Tier:
        """The highest tier whose rule holds for these metric values."""
        for tier in reversed(self.tiers):
            if tier.rule is None or tier.rule.holds(values):
                return tier
        return self.base

    def metric_keys(self) -> list[tuple[Metric, int]]:
        keys = {c.key for t in self.tiers if t.rule is not None for c in conditions(t.rule)}
        return sorted(keys)

    def as_dict(self) -> dict[str, Any]:
        return {
            "window_months": self.window_months,
            "review": self.review.as_dict(),
            "tiers": [t.as_dict() for t in self.tiers],
        }


# -------------------------------------------------------------------------------------------------------------
# parsing and validation


def _int(raw: Mapping[str, Any], name: str, what: str, default: int | None = None) -> int:
    value = raw.get(name, default)
    if type(value) is not int:
        raise Unprocessable(
            f"{what}: {name!r} must be an integer",
            code="ladder.not_integer",
            params={"what": what, "name": name},
        )
    return value


def _parse_rule(raw: Any, what: str, window: int, depth: int = 0) -> Rule:
    if depth > 4:
        raise Unprocessable(
            f"{what}: rules nest at most 4 levels deep", code="ladder.too_deep", params={"what": what}
        )
    if not isinstance(raw, Mapping):
        raise Unprocessable(
            f"{what}: a rule must be an object", code="ladder.not_object", params={"part": "rule"}
        )
    ops = [op for op in ("all", "any") if op in raw]
    if ops:
        if len(raw) != 1:
            raise Unprocessable(f"{what}: a combination has exactly one key, 'all' or 'any'")
        parts = raw[ops[0]]
        if not isinstance(parts, list) or not parts:
            raise Unprocessable(
                f"{what}: {ops[0]!r} needs a non-empty list of rules",
                code="ladder.empty_rules",
                params={"what": what},
            )
        op: Literal["all", "any"] = "all" if ops[0] == "all" else "any"
        return Combination(op, tuple(_parse_rule(p, what, window, depth + 1) for p in parts))
    unknown = set(raw) - {"metric", "min", "months"}
    if unknown:
        raise Unprocessable(f"{what}: unknown rule field(s) {', '.join(sorted(unknown))}")
    metric = raw.get("metric")
    if metric not in METRICS:
        raise Unprocessable(
            f"{what}: metric must be one of {', '.join(METRICS)}, got {metric!r}",
            code="ladder.metric",
            params={"what": what, "metric": str(metric)},
        )
    minimum = _int(raw, "min", what)
    if minimum < 1:
        raise Unprocessable(
            f"{what}: threshold 'min' must be at least 1", code="ladder.min_positive", params={"what": what}
        )
    months = _int(raw, "months", what, window)
    if not 1 <= months <= MAX_MONTHS:
        raise Unprocessable(
            f"{what}: 'months' must be between 1 and {MAX_MONTHS}",
            code="ladder.months",
            params={"what": what, "max": MAX_MONTHS},
        )
    metric_name: Metric = metric
    return Condition(metric_name, minimum, months)


def _parse_entitlement(raw: Any, tier_code: str) -> Entitlement:
    if not isinstance(raw, Mapping):
        raise Unprocessable(
            f"tier {tier_code!r}: an entitlement must be an object",
            code="ladder.not_object",
            params={"part": "entitlement", "tier": tier_code},
        )
    unknown = set(raw) - {"kind", "value", "provider", "validity_days", "params"}
    if unknown:
        raise Unprocessable(f"tier {tier_code!r}: unknown entitlement field(s) {', '.join(sorted(unknown))}")
    spec = kind(str(raw.get("kind")))
    what = f"tier {tier_code!r} entitlement {spec.code!r}"
    value = _int(raw, "value", what, 0 if spec.direction is Direction.PRESENCE else None)
    if spec.direction is not Direction.PRESENCE and value < spec.min_value:
        raise Unprocessable(
            f"{what}: value must be at least {spec.min_value} ({spec.unit})",
            code="ladder.entitlement_min",
            params={"tier": tier_code, "kind": spec.code, "min": spec.min_value, "unit": spec.unit},
        )
    if spec.max_value is not None and value > spec.max_value:
        raise Unprocessable(
            f"{what}: value must be at most {spec.max_value} ({spec.unit})",
            code="ladder.entitlement_max",
            params={"tier": tier_code, "kind": spec.code, "max": spec.max_value, "unit": spec.unit},
        )
    validity = raw.get("validity_days")
    if validity is not None and (type(validity) is not int or validity < 1):
        raise Unprocessable(
            f"{what}: validity_days must be a positive integer",
            code="ladder.validity_days",
            params={"tier": tier_code, "kind": spec.code},
        )
    provider = raw.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise Unprocessable(f"{what}: provider must be a string")
    params = raw.get("params") or {}
    if not isinstance(params, Mapping):
        raise Unprocessable(
            f"{what}: params must be an object", code="ladder.not_object", params={"part": "params"}
        )
    return Entitlement(spec.code, value, provider, validity, dict(params))


def parse_ladder(raw: Any, *, version: int = 0) -> Ladder:
    """Parse and validate a ladder document; refuses unfair ladders (see :func:`check_fairness`)."""
    if not isinstance(raw, Mapping):
        raise Unprocessable(
            "a tier ladder must be an object", code="ladder.not_object", params={"part": "ladder"}
        )
    unknown = set(raw) - {"window_months", "review", "tiers"}
    if unknown:
        raise Unprocessable(f"unknown ladder field(s) {', '.join(sorted(unknown))}")
    window = _int(raw, "window_months", "ladder", 12)
    if not 1 <= window <= MAX_MONTHS:
        raise Unprocessable(
            f"ladder: window_months must be between 1 and {MAX_MONTHS}",
            code="ladder.window_months",
            params={"max": MAX_MONTHS},
        )
    review_raw = raw.get("review") or {}
    if not isinstance(review_raw, Mapping):
        raise Unprocessable(
            "ladder: review must be an object", code="ladder.not_object", params={"part": "review"}
        )
    mode = review_raw.get("mode", "anniversary")
    if mode not in ("annual", "anniversary"):
        raise Unprocessable(
            "ladder: review mode must be 'annual' or 'anniversary'", code="ladder.review_mode"
        )
    month = _int(review_raw, "month", "review", 1)
    day = _int(review_raw, "day", "review", 1)
    try:
        date(2000, month, day)  # a leap year, so 02-29 is allowed (it falls on 02-28 in other years)
    except ValueError:
        raise Unprocessable(
            f"ladder: review date {month:02d}-{day:02d} is not a calendar day",
            code="ladder.review_date",
            params={"month": month, "day": day},
        ) from None
    one_step = review_raw.get("one_step", False)
    if not isinstance(one_step, bool):
        raise Unprocessable("ladder: review one_step must be true or false")
    review = ReviewPolicy("annual" if mode == "annual" else "anniversary", month, day, one_step)

    tiers_raw = raw.get("tiers")
    if not isinstance(tiers_raw, list) or not tiers_raw:
        raise Unprocessable(
            "ladder: 'tiers' must be a non-empty list, lowest tier first", code="ladder.no_tiers"
        )
    tiers: list[Tier] = []
    seen: set[str] = set()
    for rank, item in enumerate(tiers_raw):
        if not isinstance(item, Mapping):
            raise Unprocessable(
                f"ladder: tier #{rank + 1} must be an object",
                code="ladder.not_object",
                params={"part": "tier", "n": rank + 1},
            )
        code = item.get("code")
        if not isinstance(code, str) or not _CODE.match(code):
            raise Unprocessable(
                f"ladder: tier #{rank + 1} code {code!r} must be lowercase letters, digits and '_' (max 32)",
                code="ladder.tier_code",
                params={"n": rank + 1, "code": "" if code is None else str(code)},
            )
        if code in seen:
            raise Unprocessable(
                f"ladder: tier code {code!r} is used twice", code="ladder.tier_twice", params={"code": code}
            )
        seen.add(code)
        unknown = set(item) - {"code", "name", "rule", "entitlements"}
        if unknown:
            raise Unprocessable(f"tier {code!r}: unknown field(s) {', '.join(sorted(unknown))}")
        name = item.get("name", code)
        if not isinstance(name, str) or not name.strip():
            raise Unprocessable(
                f"tier {code!r}: name must be a non-empty string",
                code="ladder.tier_name",
                params={"code": code},
            )
        rule_raw = item.get("rule")
        if rank == 0 and rule_raw is not None:
            raise Unprocessable(
                f"tier {code!r} is the base tier: every member holds it, so it has no rule",
                code="ladder.base_rule",
                params={"code": code},
            )
        if rank > 0 and rule_raw is None:
            raise Unprocessable(
                f"tier {code!r} needs a rule (only the first, base tier has none)",
                code="ladder.needs_rule",
                params={"code": code},
            )
        rule = None if rule_raw is None else _parse_rule(rule_raw, f"tier {code!r}", window)
        ents_raw = item.get("entitlements") or []
        if not isinstance(ents_raw, list):
            raise Unprocessable(f"tier {code!r}: entitlements must be a list")
        ents = tuple(_parse_entitlement(e, code) for e in ents_raw)
        kinds = [e.kind for e in ents]
        for k in kinds:
            if kinds.count(k) > 1:
                raise Unprocessable(
                    f"tier {code!r} lists entitlement {k!r} twice",
                    extra={"tier": code},
                    code="ladder.entitlement_twice",
                    params={"code": code, "kind": k},
                )
        tiers.append(Tier(code, name.strip(), rank, rule, ents))
    ladder = Ladder(tuple(tiers), window, review, version)
    check_fairness(ladder)
    return ladder


def check_fairness(ladder: Ladder) -> None:
    """Loyalty must never make a member worse off: each tier keeps every entitlement of the tier below it, at
    least as generous. Checking neighbours is enough (the relation is transitive)."""
    for lower, higher in zip(ladder.tiers, ladder.tiers[1:], strict=False):
        for ent in lower.entitlements:
            spec = CATALOGUE[ent.kind]
            extra = {"tier": higher.code, "entitlement": ent.kind, "lower_tier": lower.code}
            mine = higher.entitlement(ent.kind)
            if mine is None:
                raise Unprocessable(
                    f"unfair ladder: tier {higher.code!r} lacks entitlement {ent.kind!r} that the lower tier "
                    f"{lower.code!r} grants; a higher tier must keep every entitlement of the tiers below it",
                    extra=extra,
                    code="ladder.unfair_lacks",
                    params=extra,
                )
            if not spec.better_or_equal(mine.value, ent.value):
                if spec.direction is Direction.LOWER:
                    message = (
                        f"unfair ladder: tier {higher.code!r} prices members above the lower tier "
                        f"{lower.code!r} with entitlement {ent.kind!r} ({mine.value}% of list against "
                        f"{ent.value}%)"
                    )
                else:
                    message = (
                        f"unfair ladder: tier {higher.code!r} gives a smaller {ent.kind!r} ({mine.value}) than "
                        f"the lower tier {lower.code!r} ({ent.value})"
                    )
                code = "ladder.unfair_price" if spec.direction is Direction.LOWER else "ladder.unfair_smaller"
                params = {**extra, "higher_value": mine.value, "lower_value": ent.value}
                raise Unprocessable(message, extra=extra, code=code, params=params)


# -------------------------------------------------------------------------------------------------------------
# what is missing


@dataclass(frozen=True, slots=True)
class Shortfall:
    metric: Metric
    months: int
    minimum: int
    value: int

    @property
    def missing(self) -> int:
        return max(0, self.minimum - self.value)

    def describe(self) -> str:
        return describe_amount(self.metric, self.missing)


def describe_amount(metric: Metric, amount: int) -> str:
    if metric == "spend_fen":
        yuan, fen = divmod(amount, 100)
        return f"¥{yuan}" if fen == 0 else f"¥{yuan}.{fen:02d}"
    if metric == "points_earned":
        return f"{amount} points"
    return f"{amount} order" + ("" if amount == 1 else "s")


def missing_for(rule: Rule | None, values: Mapping[tuple[Metric, int], int]) -> list[list[Shortfall]]:
    """For each way of meeting ``rule``, the conditions still unmet (empty list: the rule already holds).

    Ways are ordered easiest first (fewest unmet conditions)."""
    if rule is None or rule.holds(values):
        return []
    result = []
    for option in options(rule):
        unmet = [
            Shortfall(c.metric, c.months, c.minimum, values.get(c.key, 0))
            for c in option
            if not c.holds(values)
        ]
        result.append(unmet)
    result.sort(key=len)
    return result


def describe_missing(ways: Sequence[Sequence[Shortfall]]) -> str:
    if not ways:
        return ""
    return " or ".join(" and ".join(f"{s.describe()} more" for s in way) for way in ways[:3])


# -------------------------------------------------------------------------------------------------------------
# calendar


def add_months(day: date, months: int) -> date:
    """``day`` moved by whole months, clamped to the month's last day (03-31 minus one month is 02-28/29)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def on_anniversary(anchor: date, year: int) -> date:
    """The anniversary of ``anchor`` in ``year``; a 02-29 anchor falls on 02-28 in common years."""
    return date(year, anchor.month, min(anchor.day, calendar.monthrange(year, anchor.month)[1]))


def local_date(moment: datetime, tz: ZoneInfo) -> date:
    return moment.astimezone(tz).date()


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz)


def window_start(as_of: datetime, months: int, tz: ZoneInfo) -> datetime:
    """A window of ``months`` months ending at ``as_of`` starts at the local midnight ``months`` months before
    today (business days are days in the programme's time zone)."""
    return local_midnight(add_months(local_date(as_of, tz), -months), tz)


def end_of_local_day(day: date, tz: ZoneInfo) -> datetime:
    return local_midnight(day + timedelta(days=1), tz)
