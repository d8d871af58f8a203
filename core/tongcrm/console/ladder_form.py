"""The tier ladder as the console's form edits it: tiers with their names, thresholds and entitlements as rows of
text fields, money in yuan, and the API's ladder document (money in fen) built from them.

The tiers page (:mod:`tongcrm.console.programme_pages`) shows the ladder as this form by default; the JSON stays
as the "advanced" view. The form is plain HTML (no script): its fields are named by position
(``tiers-1-rule-0-min``), and rows are added and removed by submit buttons named ``edit``
(``add-tier``, ``remove-tier:2``, ``add-rule:1``, ``remove-rule:1:0``, ``add-ent:1``, ``remove-ent:1:0``) that the
server applies to the posted values (:func:`apply_edit`) before showing the form again.

Units follow the document: a threshold on ``spend_fen`` is typed in yuan (exact, :func:`tongcrm.console.money
.yuan_to_fen`: ``"12.345"`` is refused), ``points_earned`` in points and ``order_count`` in orders; an
entitlement's value in the unit of its kind (yuan for a coupon in fen, percent for a multiplier, points). A
ladder the form cannot show (a rule nested deeper than one ``all``/``any`` of conditions, a field the form has no
control for) is edited as JSON only (:func:`from_document` answers None). What the form cannot write it does not
drop: an entitlement's ``provider`` and ``params`` ride along in a hidden field.

Mistakes in the form's own fields (a threshold that is no amount, a count that is no whole number) are collected
per field, each a :class:`~tongcrm.errors.Unprocessable` with a code, so the page can show every one next to its
control; the document built from a form without such mistakes goes to the same service as the API's and its
refusals (codes ``ladder.*``) are shown above the form.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tongcrm.console.money import fen_to_yuan, yuan_to_fen
from tongcrm.entitlements.catalogue import CATALOGUE, Direction
from tongcrm.errors import TongcrmError, Unprocessable
from tongcrm.tiers.ladder import METRICS

#: The most rows of each kind one form holds (a ladder of more is edited as JSON).
MAX_TIERS = 20
MAX_RULES = 8
MAX_ENTS = 12


@dataclass(slots=True)
class ConditionRow:
    metric: str = "spend_fen"
    min: str = ""
    #: Empty: the ladder's window.
    months: str = ""


@dataclass(slots=True)
class EntitlementRow:
    kind: str = ""
    value: str = ""
    validity_days: str = ""
    #: ``provider`` and ``params`` as JSON (no control of the form edits them; they are kept).
    extra: str = ""


@dataclass(slots=True)
class TierRow:
    code: str = ""
    name: str = ""
    #: How the conditions combine: ``any`` (one is enough) or ``all``.
    join: str = "any"
    rules: list[ConditionRow] = field(default_factory=list)
    entitlements: list[EntitlementRow] = field(default_factory=list)


@dataclass(slots=True)
class LadderForm:
    window_months: str = "12"
    review_mode: str = "anniversary"
    review_month: str = "1"
    review_day: str = "1"
    one_step: bool = False
    tiers: list[TierRow] = field(default_factory=list)


def is_money_kind(kind_code: str) -> bool:
    spec = CATALOGUE.get(kind_code)
    return spec is not None and spec.unit == "fen"


def is_presence_kind(kind_code: str) -> bool:
    spec = CATALOGUE.get(kind_code)
    return spec is not None and spec.direction is Direction.PRESENCE


# -------------------------------------------------------------------------------------------------------------
# document -> form


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _condition_row(raw: Any) -> ConditionRow | None:
    if not isinstance(raw, Mapping) or set(raw) - {"metric", "min", "months"}:
        return None
    metric, minimum, months = raw.get("metric"), raw.get("min"), raw.get("months")
    if metric not in METRICS or not isinstance(minimum, int) or isinstance(minimum, bool):
        return None
    if months is not None and not _whole(months):
        return None
    shown = fen_to_yuan(minimum) if metric == "spend_fen" else str(minimum)
    return ConditionRow(str(metric), shown, "" if months is None else str(months))


def _rule_rows(raw: Any) -> tuple[str, list[ConditionRow]] | None:
    if raw is None:
        return "any", []
    if isinstance(raw, Mapping) and len(raw) == 1 and ("any" in raw or "all" in raw):
        join = "any" if "any" in raw else "all"
        parts = raw[join]
        if not isinstance(parts, list):
            return None
        rows = [_condition_row(p) for p in parts]
        if any(r is None for r in rows) or len(rows) > MAX_RULES:
            return None
        return join, [r for r in rows if r is not None]
    row = _condition_row(raw)
    return None if row is None else ("any", [row])


def _entitlement_row(raw: Any) -> EntitlementRow | None:
    if not isinstance(raw, Mapping) or set(raw) - {"kind", "value", "provider", "validity_days", "params"}:
        return None
    kind_code, value, validity = raw.get("kind"), raw.get("value"), raw.get("validity_days")
    if not isinstance(kind_code, str) or (value is not None and not _whole(value)):
        return None
    if validity is not None and not _whole(validity):
        return None
    extra = {k: raw[k] for k in ("provider", "params") if raw.get(k) not in (None, {})}
    if value is None or (is_presence_kind(kind_code) and value == 0):
        shown = ""
    else:
        shown = fen_to_yuan(value) if is_money_kind(kind_code) else str(value)
    return EntitlementRow(
        kind_code,
        shown,
        "" if validity is None else str(validity),
        json.dumps(extra, ensure_ascii=False) if extra else "",
    )


def from_document(document: Any) -> LadderForm | None:
    """The form showing ``document`` (a ladder in the API's units), or None when the form cannot show it whole."""
    if not isinstance(document, Mapping) or set(document) - {"window_months", "review", "tiers"}:
        return None
    review = document.get("review") or {}
    tiers_raw = document.get("tiers")
    if not isinstance(review, Mapping) or set(review) - {"mode", "month", "day", "one_step"}:
        return None
    if not isinstance(tiers_raw, list) or len(tiers_raw) > MAX_TIERS:
        return None
    window = document.get("window_months", 12)
    month, day, one_step = review.get("month", 1), review.get("day", 1), review.get("one_step", False)
    if not (_whole(window) and _whole(month) and _whole(day) and isinstance(one_step, bool)):
        return None
    form = LadderForm(str(window), str(review.get("mode", "anniversary")), str(month), str(day), one_step)
    for raw in tiers_raw:
        if not isinstance(raw, Mapping) or set(raw) - {"code", "name", "rule", "entitlements"}:
            return None
        rules = _rule_rows(raw.get("rule"))
        ents_raw = raw.get("entitlements") or []
        if rules is None or not isinstance(ents_raw, list) or len(ents_raw) > MAX_ENTS:
            return None
        ents = [_entitlement_row(e) for e in ents_raw]
        if any(e is None for e in ents):
            return None
        code, name = raw.get("code", ""), raw.get("name", "")
        if not isinstance(code, str) or not isinstance(name, str):
            return None
        form.tiers.append(TierRow(code, name, rules[0], rules[1], [e for e in ents if e is not None]))
    return form


# -------------------------------------------------------------------------------------------------------------
# posted fields -> form


_INDEXED = re.compile(r"^tiers-(\d{1,2})-(?:(rule|ent)-(\d{1,2})-)?([a-z_]+)$")


def from_fields(fields: Mapping[str, str]) -> LadderForm:
    """The form as posted, every value as typed (rows in the order of their indices; gaps closed)."""
    form = LadderForm(
        fields.get("window_months", "").strip(),
        fields.get("review_mode", "anniversary"),
        fields.get("review_month", "").strip(),
        fields.get("review_day", "").strip(),
        fields.get("one_step") in ("on", "true", "1"),
    )
    tiers: dict[int, dict[str, str]] = {}
    rules: dict[int, dict[int, dict[str, str]]] = {}
    ents: dict[int, dict[int, dict[str, str]]] = {}
    for key, value in fields.items():
        found = _INDEXED.match(key)
        if found is None:
            continue
        tier, group, row, name = int(found[1]), found[2], found[3], found[4]
        if tier >= MAX_TIERS:
            continue
        tiers.setdefault(tier, {})
        if group is None:
            tiers[tier][name] = value
        elif int(row) < (MAX_RULES if group == "rule" else MAX_ENTS):
            target = rules if group == "rule" else ents
            target.setdefault(tier, {}).setdefault(int(row), {})[name] = value
    for index in sorted(tiers):
        own = tiers[index]
        form.tiers.append(
            TierRow(
                own.get("code", "").strip(),
                own.get("name", "").strip(),
                "all" if own.get("join") == "all" else "any",
                [
                    ConditionRow(r.get("metric", ""), r.get("min", "").strip(), r.get("months", "").strip())
                    for _, r in sorted(rules.get(index, {}).items())
                ],
                [
                    EntitlementRow(
                        e.get("kind", ""),
                        e.get("value", "").strip(),
                        e.get("validity_days", "").strip(),
                        e.get("extra", ""),
                    )
                    for _, e in sorted(ents.get(index, {}).items())
                ],
            )
        )
    return form


def apply_edit(form: LadderForm, edit: str) -> LadderForm:
    """``form`` with the row that an ``edit`` button names added or removed (an unknown edit changes nothing)."""
    verb, _, where = edit.partition(":")
    at = [int(p) for p in where.split(":") if p.isdigit()] if where else []
    tiers = form.tiers
    if verb == "add-tier" and len(tiers) < MAX_TIERS:
        tiers.append(TierRow(rules=[ConditionRow()] if tiers else []))
    elif verb == "remove-tier" and len(at) == 1 and at[0] < len(tiers):
        del tiers[at[0]]
    elif verb == "add-rule" and len(at) == 1 and 0 < at[0] < len(tiers):
        if len(tiers[at[0]].rules) < MAX_RULES:
            tiers[at[0]].rules.append(ConditionRow())
    elif verb == "add-ent" and len(at) == 1 and at[0] < len(tiers):
        if len(tiers[at[0]].entitlements) < MAX_ENTS:
            tiers[at[0]].entitlements.append(EntitlementRow())
    elif verb == "remove-rule" and len(at) == 2 and at[0] < len(tiers) and at[1] < len(tiers[at[0]].rules):
        del tiers[at[0]].rules[at[1]]
    elif (
        verb == "remove-ent"
        and len(at) == 2
        and at[0] < len(tiers)
        and at[1] < len(tiers[at[0]].entitlements)
    ):
        del tiers[at[0]].entitlements[at[1]]
    return form


# -------------------------------------------------------------------------------------------------------------
# form -> document


def count_field(text: str, field_name: str, *, required: bool = True) -> int | None:
    """A whole number as typed (``1,000`` and full-width digits fine), or None for an empty optional field."""
    cleaned = unicodedata.normalize("NFKC", text).strip().replace(",", "").replace(" ", "")
    params = {"field": field_name, "value": text}
    if not cleaned:
        if required:
            raise Unprocessable(f"{field_name}: required", code="form.required", params=params)
        return None
    if not re.fullmatch(r"-?\d{1,12}", cleaned):
        raise Unprocessable(
            f"{field_name}: {text!r} is not a whole number", code="form.not_whole", params=params
        )
    return int(cleaned)


def to_document(form: LadderForm) -> tuple[dict[str, Any], dict[str, TongcrmError]]:
    """The ladder document (the API's, money in fen) the form says, and the mistakes of its own fields by the
    name of the field (empty when the document may go to the service)."""
    problems: dict[str, TongcrmError] = {}

    def read(name: str, convert: Any) -> Any:
        try:
            return convert()
        except Unprocessable as exc:
            problems[name] = exc
            return None

    window = read("window_months", lambda: count_field(form.window_months, "window_months"))
    review: dict[str, Any] = {"mode": form.review_mode, "one_step": form.one_step}
    if form.review_mode == "annual":
        review["month"] = read("review_month", lambda: count_field(form.review_month, "review_month"))
        review["day"] = read("review_day", lambda: count_field(form.review_day, "review_day"))
    tiers: list[dict[str, Any]] = []
    for i, tier in enumerate(form.tiers):
        out: dict[str, Any] = {"code": tier.code, "name": tier.name or tier.code}
        conditions: list[dict[str, Any]] = []
        for j, row in enumerate(tier.rules):
            base = f"tiers-{i}-rule-{j}-"
            condition: dict[str, Any] = {"metric": row.metric}
            if row.metric == "spend_fen":
                condition["min"] = read(base + "min", lambda row=row: _threshold_fen(row.min))
            else:
                condition["min"] = read(base + "min", lambda row=row: count_field(row.min, "threshold"))
            months = read(base + "months", lambda row=row: count_field(row.months, "months", required=False))
            if months is not None:
                condition["months"] = months
            conditions.append(condition)
        if len(conditions) == 1:
            out["rule"] = conditions[0]
        elif conditions:
            out["rule"] = {tier.join if tier.join in ("any", "all") else "any": conditions}
        entitlements: list[dict[str, Any]] = []
        for k, ent in enumerate(tier.entitlements):
            base = f"tiers-{i}-ent-{k}-"
            item: dict[str, Any] = {"kind": ent.kind}
            value = read(base + "value", lambda ent=ent: _entitlement_value(ent))
            if value is not None:
                item["value"] = value
            validity = read(
                base + "validity_days",
                lambda ent=ent: count_field(ent.validity_days, "validity_days", required=False),
            )
            if validity is not None:
                item["validity_days"] = validity
            extra = read(base + "extra", lambda ent=ent: _extra(ent.extra))
            item.update(extra or {})
            entitlements.append(item)
        out["entitlements"] = entitlements
        tiers.append(out)
    document = {"window_months": window, "review": review, "tiers": tiers}
    return document, problems


def _threshold_fen(text: str) -> int:
    fen = yuan_to_fen(text, "threshold")
    if fen is None:
        raise Unprocessable("threshold: required", code="form.required", params={"field": "threshold"})
    return fen


def _entitlement_value(ent: EntitlementRow) -> int | None:
    if is_presence_kind(ent.kind):
        return None  # its value does not matter: the service takes 0
    if is_money_kind(ent.kind):
        fen = yuan_to_fen(ent.value, "entitlement_value")
        if fen is None:
            raise Unprocessable(
                "entitlement_value: required", code="form.required", params={"field": "entitlement_value"}
            )
        return fen
    return count_field(ent.value, "entitlement_value")


def _extra(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Unprocessable("entitlement: the kept provider and params are not JSON") from exc
    if not isinstance(value, dict):
        raise Unprocessable("entitlement: the kept provider and params are not an object")
    return {k: v for k, v in value.items() if k in ("provider", "params")}


# -------------------------------------------------------------------------------------------------------------
# the ladder in force, as the page reads it


def rule_text(rule: Any, t: Any) -> str:
    """A tier's rule as a sentence (``消费金额（元） ≥ 1000.00 或 订单数 ≥ 12（近 6 个月）``), thresholds in their
    unit (spend in yuan); a part the form does not know is shown as JSON."""
    if isinstance(rule, Mapping) and len(rule) == 1 and ("any" in rule or "all" in rule):
        join = "any" if "any" in rule else "all"
        parts = rule[join] if isinstance(rule[join], list) else []
        word = str(t("tiers.or") if join == "any" else t("tiers.and"))
        return word.join(f"（{rule_text(p, t)}）" if _nested(p) else rule_text(p, t) for p in parts)
    row = _condition_row(rule)
    if row is None:
        return json.dumps(rule, ensure_ascii=False)
    months = t("tiers.in_months", months=row.months) if row.months else ""
    return f"{t('tiers.metric.' + row.metric)} {t('tiers.ge')} {row.min}{months}"


def _nested(rule: Any) -> bool:
    return isinstance(rule, Mapping) and ("any" in rule or "all" in rule)


def entitlement_text(raw: Any, t: Any) -> str:
    """An entitlement as the page lists it: its kind in words and its value in the kind's unit."""
    row = _entitlement_row(raw)
    if row is None or row.kind not in CATALOGUE:
        return json.dumps(raw, ensure_ascii=False)
    name = t("tiers.kind." + row.kind)
    return f"{name} {row.value}".strip() if row.value else name
