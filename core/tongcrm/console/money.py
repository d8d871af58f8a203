"""Money as the console's operators read and type it: yuan with two decimals, integer fen underneath.

The API, the services and the segment language count money in integer fen (``orders.spend >= 29900``); a person
thinks "满 299 元". Every console form that takes money reads yuan here (:func:`yuan_to_fen`: exact, through
:class:`decimal.Decimal`, never a float; ``12.345`` is refused because it is not a whole number of fen), and every
page shows fen as yuan (:func:`fen_to_yuan` for a form's value, the templates' ``yuan`` filter for a figure).

The segment editor is the one place where money sits inside a document: the console shows and takes the
segment's JSON with money fields (the catalogue's fields whose unit is fen, :data:`MONEY_FIELDS`) in yuan,
written as strings (``"299.00"``) so that JSON's numbers never carry a fraction of a fen, and converts the draft to
the API's document in fen (:func:`definition_to_fen`) before the service sees it; a saved segment is shown back in
yuan (:func:`definition_to_yuan`). The API and the stored versions stay in fen.
"""

from __future__ import annotations

import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any

from tongcrm.errors import Unprocessable
from tongcrm.segments.schema import FIELDS, child_pointer

#: Segment fields whose values are amounts of money in fen (read from the catalogue: a new money field is one
#: declared with ``unit="fen"``).
MONEY_FIELDS: frozenset[str] = frozenset(name for name, spec in FIELDS.items() if spec.unit == "fen")
_LIST_OPS = frozenset({"in", "not_in", "has_any", "has_all", "has_none"})


#: The most an amount typed into a console form may be: 10 亿元 (¥1,000,000,000.00). Far past any order, spend
#: threshold, budget or message cost a programme sets, so it refuses only a slip (zeros typed twice) — with a
#: bound an operator reads at a glance, where the 64-bit column's own (92233720368547747.84 元) said nothing.
MAX_AMOUNT_FEN = 100_000_000_000


def yuan_to_fen(text: str, field_name: str) -> int | None:
    """``"50"`` or ``"49.90"`` yuan as integer fen (exact, no float); empty is None. An amount as people write
    it is read too (``¥1,299``, ``99元``, full-width digits); each refusal says what is wrong with the amount and
    carries a code for the Chinese page (:mod:`tongcrm.console.problems`)."""
    text = unicodedata.normalize("NFKC", text).strip()
    if not text:
        return None
    digits = text.removeprefix("¥").removeprefix("￥").removesuffix("元").replace(",", "").replace(" ", "")
    params = {"field": field_name, "value": text}
    try:
        amount = Decimal(digits)
    except InvalidOperation as exc:
        raise Unprocessable(
            f"{field_name}: {text!r} is not an amount in yuan", code="money.not_amount", params=params
        ) from exc
    fen = amount * 100
    if not fen.is_finite():
        raise Unprocessable(
            f"{field_name}: {text!r} is not an amount in yuan", code="money.not_amount", params=params
        )
    if fen < 0:
        raise Unprocessable(
            f"{field_name}: {text!r} is negative; an amount in yuan is 0 or more",
            code="money.negative",
            params=params,
        )
    if fen != fen.to_integral_value():
        raise Unprocessable(
            f"{field_name}: {text!r} has more than 2 decimals (yuan to the fen)",
            code="money.too_precise",
            params=params,
        )
    if fen > MAX_AMOUNT_FEN:
        most = f"{MAX_AMOUNT_FEN // 100:,}.00"
        raise Unprocessable(
            f"{field_name}: {text!r} is more than the most an amount may be ({most} yuan)",
            code="money.too_large",
            params={**params, "value": text[:40], "max": most},
        )
    return int(fen)


def fen_to_yuan(fen: int) -> str:
    """Integer fen as a form shows it to be typed again: ``"299.00"``, ``"-0.05"`` (no symbol, no separators)."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(int(fen)), 100)
    return f"{sign}{whole}.{cents:02d}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def definition_to_yuan(definition: Any) -> Any:
    """A segment document in fen (the API's) as the console edits it: money values as yuan strings. Anything
    that is not a whole number of fen (a document the service would refuse) is left as it is."""

    def convert(value: Any) -> Any:
        if _is_int(value):
            return fen_to_yuan(value)
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return _walk(definition, convert)


def definition_to_fen(definition: Any) -> Any:
    """A segment document as the console edits it (money in yuan: ``"299"``, ``"299.50"``, ``299``, ``¥1,299``)
    as the API's document in fen. An amount that is not one (``"12.345"``, ``"abc"``) raises
    :class:`~tongcrm.segments.schema.InvalidSegment` with its JSON pointer, like every other mistake in a draft;
    the rest of the document is left for the service to check."""
    from tongcrm.segments.schema import InvalidSegment, Problem

    problems: list[Problem] = []

    def one(value: Any, pointer: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
            return value  # not an amount at all: the service names the mistake
        text = str(value)
        try:
            return yuan_to_fen(text, "value")
        except Unprocessable as exc:
            problems.append(Problem(pointer, exc.message, exc.code, exc.params))
            return value

    def convert(value: Any, pointer: str) -> Any:
        if isinstance(value, list):
            return [one(v, child_pointer(pointer, i)) for i, v in enumerate(value)]
        return one(value, pointer)

    converted = _walk(definition, convert, with_pointer=True)
    if problems:
        raise InvalidSegment(problems)
    return converted


def _walk(definition: Any, convert: Any, *, with_pointer: bool = False) -> Any:
    """``definition`` with ``convert`` applied to the value of every condition on a money field (the operators
    that take days, and ``is_set``, keep their values: they are no amounts)."""

    def node(raw: Any, pointer: str) -> Any:
        if not isinstance(raw, dict):
            return raw
        out = dict(raw)
        for key in ("all", "any"):
            if isinstance(raw.get(key), list):
                at = child_pointer(pointer, key)
                out[key] = [node(child, child_pointer(at, i)) for i, child in enumerate(raw[key])]
        if isinstance(raw.get("not"), dict):
            out["not"] = node(raw["not"], child_pointer(pointer, "not"))
        money = raw.get("field") in MONEY_FIELDS and raw.get("op") not in (
            "is_set",
            "within_days",
            "not_within_days",
        )
        if money and "value" in raw and (raw.get("op") not in _LIST_OPS or isinstance(raw["value"], list)):
            at = child_pointer(pointer, "value")
            out["value"] = convert(raw["value"], at) if with_pointer else convert(raw["value"])
        return out

    if not isinstance(definition, dict) or not isinstance(definition.get("condition"), dict):
        return definition
    return {**definition, "condition": node(definition["condition"], "/condition")}
