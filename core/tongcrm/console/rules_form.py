"""A points rule set as the console's form edits it: the default expiry and the refund policy, then one row of fields
per rule (spend rules with their earn rate in points per yuan, event rules with their points; priority, stacking,
rounding, release, the channel/store/category filters as comma-separated lists, a cap and an expiry of their own).

As with the ladder (:mod:`tongcrm.console.ladder_form`), the form is plain HTML: fields named by position
(``rules-0-points_per_yuan``), rows added and removed by submit buttons named ``edit`` (``add-spend``,
``add-event``, ``remove-rule:1``), and what the form builds is the API's document, which goes to the same service
(``POST /api/points/rules``, the backtest). The rule set has no amount of money in it: a spend rule's rate is
already points per *yuan* (``"1.5"``, exact: a decimal string, never a float). A document with a field the form
has no control for is edited as JSON (:func:`from_document` answers None).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from tongcrm.console.ladder_form import count_field
from tongcrm.errors import TongcrmError, Unprocessable
from tongcrm.points.rules import EventName, Period

#: The filters of a spend rule, lists of codes (typed comma-separated).
LISTS: tuple[str, ...] = (
    "channels",
    "stores",
    "categories",
    "exclude_channels",
    "exclude_stores",
    "exclude_categories",
    "exclude_skus",
)
EVENTS: tuple[str, ...] = get_args(EventName)
PERIODS: tuple[str, ...] = get_args(Period)
EXPIRY_KINDS: tuple[str, ...] = ("never", "days_after", "end_of_month", "end_of_year")
MAX_RULES = 30

_SPEND_KEYS = {"type", "code", "priority", "points_per_yuan", "rounding", "stacking", "tier_multiplier",
               "release", "return_window_days", "expiry", "cap", *LISTS}  # fmt: skip
_EVENT_KEYS = {"type", "code", "priority", "event", "points", "stacking", "tier_multiplier", "expiry", "cap"}


@dataclass(slots=True)
class RuleRow:
    type: str = "spend"
    code: str = ""
    priority: str = ""
    stacking: str = "stack"
    tier_multiplier: bool = True
    points_per_yuan: str = "1"
    rounding: str = "down"
    release: str = "completed"
    return_window_days: str = ""
    lists: dict[str, str] = field(default_factory=dict)
    event: str = "birthday"
    points: str = ""
    cap_points: str = ""
    cap_period: str = "year"
    #: Empty: the rule set's default expiry.
    expiry_kind: str = ""
    expiry_days: str = ""
    expiry_months: str = ""


@dataclass(slots=True)
class RulesForm:
    reversal_policy: str = "debt"
    expiry_kind: str = "never"
    expiry_days: str = ""
    expiry_months: str = ""
    rules: list[RuleRow] = field(default_factory=list)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _expiry(raw: Any) -> tuple[str, str, str] | None:
    if raw is None:
        return "", "", ""
    if not isinstance(raw, Mapping) or set(raw) - {"kind", "days", "months"}:
        return None
    kind = raw.get("kind", "never")
    if kind not in EXPIRY_KINDS:
        return None
    days, months = raw.get("days", 0), raw.get("months", 0)
    return str(kind), "" if days in (0, None) else _text(days), "" if months in (0, None) else _text(months)


def _rule_row(raw: Any) -> RuleRow | None:
    if not isinstance(raw, Mapping):
        return None
    kind = raw.get("type")
    if kind not in ("spend", "event") or set(raw) - (_SPEND_KEYS if kind == "spend" else _EVENT_KEYS):
        return None
    expiry = _expiry(raw.get("expiry"))
    cap = raw.get("cap")
    if expiry is None or (
        cap is not None and (not isinstance(cap, Mapping) or set(cap) - {"points", "period"})
    ):
        return None
    lists: dict[str, str] = {}
    for name in LISTS:
        value = raw.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None
        lists[name] = ", ".join(value)
    return RuleRow(
        type=str(kind),
        code=_text(raw.get("code")),
        priority=_text(raw.get("priority")),
        stacking=_text(raw.get("stacking", "stack")),
        tier_multiplier=bool(raw.get("tier_multiplier", kind == "spend")),
        points_per_yuan=_text(raw.get("points_per_yuan", "1")),
        rounding=_text(raw.get("rounding", "down")),
        release=_text(raw.get("release", "completed")),
        return_window_days=""
        if raw.get("return_window_days", 0) == 0
        else _text(raw.get("return_window_days")),
        lists=lists,
        event=_text(raw.get("event", "birthday")),
        points=_text(raw.get("points")),
        cap_points="" if cap is None else _text(cap.get("points")),
        cap_period="year" if cap is None else _text(cap.get("period")),
        expiry_kind=expiry[0],
        expiry_days=expiry[1],
        expiry_months=expiry[2],
    )


def from_document(document: Any) -> RulesForm | None:
    """The form showing ``document`` (a rule set as the API takes it), or None when the form cannot show it."""
    if not isinstance(document, Mapping) or set(document) - {"rules", "reversal_policy", "expiry"}:
        return None
    expiry = _expiry(document.get("expiry"))
    rules_raw = document.get("rules", [])
    if expiry is None or not isinstance(rules_raw, list) or len(rules_raw) > MAX_RULES:
        return None
    rows = [_rule_row(r) for r in rules_raw]
    if any(r is None for r in rows):
        return None
    return RulesForm(
        _text(document.get("reversal_policy", "debt")),
        expiry[0] or "never",
        expiry[1],
        expiry[2],
        [r for r in rows if r is not None],
    )


_INDEXED = re.compile(r"^rules-(\d{1,2})-([a-z_]+)$")


def from_fields(fields: Mapping[str, str]) -> RulesForm:
    """The form as posted (rows in the order of their indices), every value as typed."""
    rows: dict[int, dict[str, str]] = {}
    for key, value in fields.items():
        found = _INDEXED.match(key)
        if found is not None and int(found[1]) < MAX_RULES:
            rows.setdefault(int(found[1]), {})[found[2]] = value
    form = RulesForm(
        fields.get("reversal_policy", "debt"),
        fields.get("expiry_kind", "never"),
        fields.get("expiry_days", "").strip(),
        fields.get("expiry_months", "").strip(),
    )
    for index in sorted(rows):
        r = rows[index]
        form.rules.append(
            RuleRow(
                type="event" if r.get("type") == "event" else "spend",
                code=r.get("code", "").strip(),
                priority=r.get("priority", "").strip(),
                stacking=r.get("stacking", "stack"),
                tier_multiplier=r.get("tier_multiplier") in ("on", "true", "1"),
                points_per_yuan=r.get("points_per_yuan", "").strip(),
                rounding=r.get("rounding", "down"),
                release=r.get("release", "completed"),
                return_window_days=r.get("return_window_days", "").strip(),
                lists={name: r.get(name, "").strip() for name in LISTS},
                event=r.get("event", "birthday"),
                points=r.get("points", "").strip(),
                cap_points=r.get("cap_points", "").strip(),
                cap_period=r.get("cap_period", "year"),
                expiry_kind=r.get("expiry_kind", ""),
                expiry_days=r.get("expiry_days", "").strip(),
                expiry_months=r.get("expiry_months", "").strip(),
            )
        )
    return form


def apply_edit(form: RulesForm, edit: str) -> RulesForm:
    """``form`` with the row an ``edit`` button names added or removed (an unknown edit changes nothing)."""
    verb, _, where = edit.partition(":")
    free = max((int(r.priority) for r in form.rules if r.priority.isdigit()), default=0) + 10
    if verb in ("add-spend", "add-event") and len(form.rules) < MAX_RULES:
        kind = verb.removeprefix("add-")
        form.rules.append(RuleRow(type=kind, priority=str(free), tier_multiplier=kind == "spend"))
    elif verb == "remove-rule" and where.isdigit() and int(where) < len(form.rules):
        del form.rules[int(where)]
    return form


def _split(text: str) -> list[str]:
    return [part for part in re.split(r"[,，、\s]+", text) if part]


def to_document(form: RulesForm) -> tuple[dict[str, Any], dict[str, TongcrmError]]:
    """The rule-set document the form says (the API's), and the mistakes of its own fields by field name."""
    problems: dict[str, TongcrmError] = {}

    def read(name: str, convert: Any) -> Any:
        try:
            return convert()
        except Unprocessable as exc:
            problems[name] = exc
            return None

    def expiry(prefix: str, kind: str, days: str, months: str) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": kind}
        d = read(prefix + "expiry_days", lambda: count_field(days, "expiry_days", required=False))
        m = read(prefix + "expiry_months", lambda: count_field(months, "expiry_months", required=False))
        if d:
            out["days"] = d
        if m:
            out["months"] = m
        return out

    rules: list[dict[str, Any]] = []
    for i, row in enumerate(form.rules):
        base = f"rules-{i}-"
        rule: dict[str, Any] = {
            "type": row.type,
            "code": row.code,
            "priority": read(base + "priority", lambda row=row: count_field(row.priority, "priority")),
            "stacking": row.stacking,
            "tier_multiplier": row.tier_multiplier,
        }
        if row.type == "spend":
            rule |= {
                "points_per_yuan": row.points_per_yuan or "1",
                "rounding": row.rounding,
                "release": row.release,
            }
            window = read(
                base + "return_window_days",
                lambda row=row: count_field(row.return_window_days, "return_window_days", required=False),
            )
            if window:
                rule["return_window_days"] = window
            for name in LISTS:
                if values := _split(row.lists.get(name, "")):
                    rule[name] = values
        else:
            rule["event"] = row.event
            rule["points"] = read(base + "points", lambda row=row: count_field(row.points, "points"))
        cap = read(
            base + "cap_points", lambda row=row: count_field(row.cap_points, "cap_points", required=False)
        )
        if cap is not None:
            rule["cap"] = {"points": cap, "period": row.cap_period}
        if row.expiry_kind:
            rule["expiry"] = expiry(base, row.expiry_kind, row.expiry_days, row.expiry_months)
        rules.append(rule)
    document: dict[str, Any] = {
        "rules": rules,
        "reversal_policy": form.reversal_policy,
        "expiry": expiry("", form.expiry_kind, form.expiry_days, form.expiry_months),
    }
    return document, problems


def rules_text(document: Any, t: Any) -> list[str]:
    """A rule set as the versions table lists it, one line a rule (``base：每元 1 积分，向下取整，订单完成后到账``);
    a rule the form does not know is left to the document shown under it."""
    form = from_document(document)
    if form is None:
        return []
    lines = []
    for r in form.rules:
        if r.type == "spend":
            line = t(
                "rf.summary.spend",
                code=r.code,
                rate=r.points_per_yuan,
                rounding=t("rf.rounding." + r.rounding),
                release=t("rf.release." + r.release),
            )
        else:
            line = t("rf.summary.event", code=r.code, event=t("rf.event." + r.event), points=r.points)
        if r.cap_points:
            line += t("rf.summary.cap", points=r.cap_points, period=t("rf.period." + r.cap_period))
        if r.stacking == "exclusive":
            line += t("rf.summary.exclusive")
        lines.append(line)
    return lines
