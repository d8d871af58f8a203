"""The segment language, version 1: a JSON condition tree of ``all``/``any``/``not`` nodes over typed fields.

A document is ``{"version": 1, "condition": NODE}``. A node is one of

- ``{"all": [NODE, ...]}`` — every child holds (an empty list is refused: it would match everyone by accident);
- ``{"any": [NODE, ...]}`` — at least one child holds;
- ``{"not": NODE}``;
- a condition ``{"field": NAME, "op": OP, "value": VALUE, ...parameters}``.

This module only reads and checks the document's shape, with no database: every mistake is reported with the
JSON pointer (RFC 6901) of the node or key that is wrong, all mistakes at once, so an operator fixes a draft in
one round. Whether names exist in *this* programme (a channel, a tier code, a saved segment) is checked by the
service against the database before anything is compiled; a segment is never silently empty because of a typo.
The field catalogue here is the single source of truth: the compiler, the documentation endpoint and
``docs/segments.md`` all describe these fields.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tongcrm.errors import Unprocessable

VERSION = 1
#: Nesting deeper than this is refused (a referenced segment's tree counts at the depth it is used).
MAX_DEPTH = 12
#: Nodes in one tree, referenced segments expanded included.
MAX_NODES = 300
#: Items in one list value (``in``, ``has_any``…).
MAX_LIST = 500
#: Days a window or horizon may span.
MAX_DAYS = 3650


class Type(enum.StrEnum):
    """A field's value type; it decides which operators apply and what a value must look like."""

    STRING = "string"
    INT = "int"
    DATETIME = "datetime"
    BOOL = "bool"
    TAGS = "tags"


#: Operators per type. ``ne``/``not_in`` are the negation of ``eq``/``in``, so they also match members that
#: have no value; every other comparison is false for a member without a value (``is_set`` asks for that).
OPERATORS: Mapping[Type, tuple[str, ...]] = {
    Type.STRING: ("eq", "ne", "in", "not_in", "is_set"),
    Type.INT: ("eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in", "is_set"),
    Type.DATETIME: ("before", "after", "between", "within_days", "not_within_days", "is_set"),
    Type.BOOL: ("is",),
    Type.TAGS: ("has", "has_any", "has_all", "has_none"),
}


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter a field takes beside its value (a window, a channel scope…)."""

    name: str
    kind: str  # "days" | "name" | "store" | "purpose"
    required: bool = False
    description: str = ""


WINDOW = Param(
    "window_days", "days", description="only the last N days (N x 24 hours up to now); all time if absent"
)
CHANNEL = Param("channel", "name", description="only orders of this channel (e.g. taobao, jd, offline_pos)")
STORE = Param("store", "store", description="only orders of this store code; '*' for any store")
ORDER_SCOPE = (WINDOW, CHANNEL, STORE)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    type: Type
    description: str
    params: tuple[Param, ...] = ()
    #: Whether a member can lack a value (then ``is_set`` applies and comparisons are false).
    nullable: bool = False
    #: Allowed values (strings) or bounds (ints) checked when parsing; tier codes are checked by the service.
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    #: Why the field cannot be used yet (declared so documents can name it; refused with this reason).
    unavailable: str | None = None
    #: The unit of an amount, where a reader must convert it: ``"fen"`` for money (the console shows and takes
    #: such a field in yuan, :mod:`tongcrm.console.money`). Not in the API's catalogue, which says "in fen" in words.
    unit: str | None = None

    @property
    def operators(self) -> tuple[str, ...]:
        ops = OPERATORS[self.type]
        return ops if self.nullable else tuple(op for op in ops if op != "is_set")


#: The eight classic RFM cells by code (names in :data:`tongcrm.rfm.service.CELLS`), R/F/M high or low.
RFM_CELLS = (
    "important_value", "important_retain", "important_develop", "important_winback",
    "general_value", "general_retain", "general_develop", "general_winback",
)  # fmt: skip

FIELDS: Mapping[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        # profile
        FieldSpec("profile.gender", Type.STRING, "gender", nullable=True, choices=("male", "female", "unknown")),
        FieldSpec("profile.birthday_month", Type.INT, "month of the birthday, 1-12", nullable=True, minimum=1,
                  maximum=12),
        FieldSpec("profile.city", Type.STRING, "city", nullable=True),
        FieldSpec("profile.province", Type.STRING, "province", nullable=True),
        FieldSpec("profile.joined_at", Type.DATETIME, "when the member was created"),
        FieldSpec("profile.source_channel", Type.STRING, "channel the member was acquired on", nullable=True),
        FieldSpec("profile.source_store", Type.STRING, "store the member was acquired in", nullable=True),
        FieldSpec("profile.source_campaign", Type.STRING, "campaign the member was acquired by", nullable=True),
        FieldSpec("profile.referrer", Type.INT, "id of the member who referred this one", nullable=True, minimum=1),
        FieldSpec("profile.referral_count", Type.INT, "members this member referred", minimum=0),
        # identity
        FieldSpec("identity.has", Type.BOOL, "has an identity of a kind the channel declares",
                  params=(Param("channel", "name", required=True, description="a channel name"),)),
        FieldSpec("identity.membership_bound", Type.BOOL, "bound to a platform's brand membership",
                  params=(Param("channel", "name", required=True),)),
        # tier
        FieldSpec("tier.code", Type.STRING, "the tier held now (an override in force counts)"),
        FieldSpec("tier.reached", Type.STRING, "moved into one of these tiers (tier history)", params=(WINDOW,)),
        # tags
        FieldSpec("tags", Type.TAGS, "the member's tags"),
        # consent
        FieldSpec("consent.opted_in", Type.BOOL, "may be contacted for a purpose (and sender signature)",
                  params=(Param("purpose", "purpose", required=True, description="service or marketing"),
                          Param("signature", "name", description="a sender signature; every signature if absent"))),
        # points
        FieldSpec("points.balance", Type.INT, "available points"),
        FieldSpec("points.expiring", Type.INT, "available points that expire within N days",
                  params=(Param("within_days", "days", required=True),)),
        FieldSpec("points.earned", Type.INT, "points earned", params=(WINDOW,)),
        FieldSpec("points.redeemed", Type.INT, "points redeemed", params=(WINDOW,)),
        # behaviour
        FieldSpec("orders.count", Type.INT, "orders bought (paid and not refunded in full)", params=ORDER_SCOPE),
        FieldSpec("orders.spend", Type.INT, "spend in fen, net of refunds", params=ORDER_SCOPE, unit="fen"),
        FieldSpec("orders.last_at", Type.DATETIME, "when the latest order was placed", params=ORDER_SCOPE,
                  nullable=True),
        FieldSpec("orders.first_at", Type.DATETIME, "when the first order was placed", params=ORDER_SCOPE,
                  nullable=True),
        FieldSpec("orders.aov", Type.INT, "average order value in fen (spend / orders, rounded down)",
                  params=ORDER_SCOPE, nullable=True, unit="fen"),
        FieldSpec("orders.refund_rate", Type.INT, "percent of the paid amount refunded (rounded down)",
                  params=ORDER_SCOPE, nullable=True),
        FieldSpec("orders.bought_sku", Type.STRING, "bought a line with one of these SKUs (not refunded in full)",
                  params=ORDER_SCOPE),
        FieldSpec("orders.bought_category", Type.STRING, "bought a line of one of these category codes",
                  params=ORDER_SCOPE),
        # derived scores (the last RFM run; members without a counted order in the RFM window have none)
        FieldSpec("rfm.recency", Type.INT, "recency score 1-5 (5: bought most recently)", nullable=True,
                  minimum=1, maximum=5),
        FieldSpec("rfm.frequency", Type.INT, "frequency score 1-5", nullable=True, minimum=1, maximum=5),
        FieldSpec("rfm.monetary", Type.INT, "monetary score 1-5", nullable=True, minimum=1, maximum=5),
        FieldSpec("rfm.cell", Type.STRING, "one of the eight RFM cells, e.g. important_value (重要价值客户)",
                  nullable=True, choices=RFM_CELLS),
        FieldSpec("lifecycle.stage", Type.STRING, "the derived lifecycle stage",
                  choices=("prospect", "new", "repeat", "dormant", "churned")),
        # other segments
        FieldSpec("segment", Type.STRING, "member of another saved segment (its latest version)"),
    )
}  # fmt: skip

#: Fields whose string value must be one of the listed members' values only (``eq``/``ne``: a segment name).
_SEGMENT_OPS = ("eq", "ne")
_MEMBERSHIP_OPS = ("eq", "in")  # tier.reached, orders.bought_*: "one of these"


# -------------------------------------------------------------------------------------------------------------
# the parsed tree


@dataclass(frozen=True, slots=True)
class Leaf:
    field: FieldSpec
    op: str
    value: Any
    params: Mapping[str, Any]
    pointer: str

    def param(self, name: str) -> Any:
        return self.params.get(name)


@dataclass(frozen=True, slots=True)
class All:
    children: tuple[Node, ...]
    pointer: str


@dataclass(frozen=True, slots=True)
class AnyOf:
    children: tuple[Node, ...]
    pointer: str


@dataclass(frozen=True, slots=True)
class Not:
    child: Node
    pointer: str


Node = Leaf | All | AnyOf | Not


@dataclass(frozen=True, slots=True)
class Problem:
    pointer: str
    detail: str
    #: The mistake's name and values for a reader in another language (the console's Chinese editor); not in
    #: :meth:`as_dict`, which is what the API answers.
    code: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, str]:
        return {"pointer": self.pointer, "detail": self.detail}


class InvalidSegment(Unprocessable):
    """A segment document that cannot be used; ``extra["errors"]`` lists each mistake with its JSON pointer."""

    title = "Invalid segment"

    def __init__(self, problems: Sequence[Problem]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(
            f"{first.pointer or '/'}: {first.detail}{more}",
            extra={"pointer": first.pointer, "errors": [p.as_dict() for p in problems]},
        )
        self.problems = list(problems)


def child_pointer(pointer: str, key: str | int) -> str:
    """RFC 6901: ``~`` and ``/`` in a key are escaped."""
    return f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"


# -------------------------------------------------------------------------------------------------------------
# parsing


class _Parser:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.nodes = 0

    def fail(self, pointer: str, detail: str, code: str | None = None, **params: Any) -> None:
        self.problems.append(Problem(pointer, detail, code, params))

    def node(self, raw: Any, pointer: str, depth: int) -> Node | None:
        self.nodes += 1
        if self.nodes == MAX_NODES + 1:
            self.fail(pointer, f"the tree has more than {MAX_NODES} nodes")
        if self.nodes > MAX_NODES:
            return None
        if depth > MAX_DEPTH:
            self.fail(pointer, f"the tree is nested deeper than {MAX_DEPTH} levels")
            return None
        if not isinstance(raw, dict):
            self.fail(
                pointer, "a node is an object: {all: [...]}, {any: [...]}, {not: {...}} or {field, op, value}"
            )
            return None
        groups = [k for k in ("all", "any", "not") if k in raw]
        if groups:
            if len(raw) != 1:
                extra = sorted(set(raw) - {groups[0]})
                self.fail(pointer, f"a {groups[0]!r} node has no other keys (found: {', '.join(extra)})")
                return None
            key = groups[0]
            if key == "not":
                child = self.node(raw["not"], child_pointer(pointer, "not"), depth + 1)
                return Not(child, pointer) if child is not None else None
            items = raw[key]
            at = child_pointer(pointer, key)
            if not isinstance(items, list) or not items:
                self.fail(at, f"{key!r} takes a non-empty list of nodes")
                return None
            children = [self.node(item, child_pointer(at, i), depth + 1) for i, item in enumerate(items)]
            if any(c is None for c in children):
                return None
            kids = tuple(c for c in children if c is not None)
            return All(kids, pointer) if key == "all" else AnyOf(kids, pointer)
        if "field" not in raw:
            self.fail(pointer, "a node needs 'all', 'any', 'not' or 'field'")
            return None
        return self.leaf(raw, pointer)

    def leaf(self, raw: dict[str, Any], pointer: str) -> Leaf | None:
        name = raw["field"]
        spec = FIELDS.get(name) if isinstance(name, str) else None
        if spec is None:
            self.fail(
                child_pointer(pointer, "field"),
                f"unknown field {name!r}{_suggest(name, FIELDS)}",
                "segment.unknown_field_suggest" if _suggest(name, FIELDS) else "segment.unknown_field",
                name=name,
                suggestion=_closest(name, FIELDS),
            )
            return None
        if spec.unavailable:
            self.fail(
                child_pointer(pointer, "field"), f"field {name!r} is not available yet: {spec.unavailable}"
            )
            return None
        ok = True
        allowed = {"field", "op", "value", *(p.name for p in spec.params)}
        for key in raw:
            if key not in allowed:
                takes = ", ".join(p.name for p in spec.params) or "no parameters"
                self.fail(child_pointer(pointer, key), f"field {name!r} takes no {key!r} (it takes {takes})")
                ok = False
        params: dict[str, Any] = {}
        for p in spec.params:
            if p.name not in raw:
                if p.required:
                    self.fail(
                        pointer,
                        f"field {name!r} needs {p.name!r}",
                        "segment.needs_param",
                        name=name,
                        param=p.name,
                    )
                    ok = False
                continue
            value = self.param(p, raw[p.name], child_pointer(pointer, p.name))
            if value is None:
                ok = False
            else:
                params[p.name] = value
        op = raw.get("op")
        ops = spec.operators
        if name == "segment":
            ops = _SEGMENT_OPS
        elif name in ("tier.reached", "orders.bought_sku", "orders.bought_category"):
            ops = _MEMBERSHIP_OPS
        if op not in ops:
            self.fail(
                child_pointer(pointer, "op"),
                f"field {name!r} takes op one of {', '.join(ops)}; got {op!r}",
                "segment.bad_op",
                name=name,
                ops=", ".join(ops),
                op=op,
            )
            return None
        if "value" not in raw:
            self.fail(
                pointer, f"field {name!r} with op {op!r} needs a 'value'", "segment.needs_value", name=name
            )
            return None
        value = self.value(spec, op, raw["value"], child_pointer(pointer, "value"))
        if value is None or not ok:
            return None
        return Leaf(spec, op, value, params, pointer)

    def param(self, p: Param, raw: Any, pointer: str) -> Any:
        if p.kind == "days":
            if not _is_int(raw) or not 1 <= raw <= MAX_DAYS:
                self.fail(
                    pointer,
                    f"{p.name!r} is a whole number of days from 1 to {MAX_DAYS}",
                    "segment.days",
                    name=p.name,
                    max=MAX_DAYS,
                )
                return None
            return raw
        if p.kind == "purpose":
            if raw not in ("service", "marketing"):
                self.fail(pointer, f"'purpose' is 'service' or 'marketing'; got {raw!r}")
                return None
            return raw
        if not isinstance(raw, str) or not raw.strip() or len(raw) > 64:
            self.fail(pointer, f"{p.name!r} is a name of 1 to 64 characters")
            return None
        return raw.strip()

    def value(self, spec: FieldSpec, op: str, raw: Any, pointer: str) -> Any:
        if op == "is_set" or spec.type is Type.BOOL:
            if not isinstance(raw, bool):
                self.fail(pointer, f"op {op!r} takes true or false; got {raw!r}", "segment.bool", op=op)
                return None
            return raw
        if op in ("in", "not_in", "has_any", "has_all", "has_none") or (
            op == "eq" and spec.name in ("tier.reached", "orders.bought_sku", "orders.bought_category")
        ):
            if op == "eq":
                raw = [raw]
            if not isinstance(raw, list) or not raw or len(raw) > MAX_LIST:
                self.fail(
                    pointer,
                    f"op {op!r} takes a list of 1 to {MAX_LIST} values",
                    "segment.list",
                    op=op,
                    max=MAX_LIST,
                )
                return None
            items = [self.scalar(spec, item, child_pointer(pointer, i)) for i, item in enumerate(raw)]
            if any(item is None for item in items):
                return None
            return tuple(dict.fromkeys(items))
        if op == "between":
            if not isinstance(raw, list) or len(raw) != 2:
                self.fail(pointer, "op 'between' takes [low, high] (both included)", "segment.between")
                return None
            low = self.scalar(spec, raw[0], child_pointer(pointer, 0))
            high = self.scalar(spec, raw[1], child_pointer(pointer, 1))
            if low is None or high is None:
                return None
            if low > high:
                self.fail(
                    pointer,
                    f"'between' needs low <= high; got {raw[0]!r} > {raw[1]!r}",
                    "segment.between_order",
                    low=raw[0],
                    high=raw[1],
                )
                return None
            return (low, high)
        if op in ("within_days", "not_within_days"):
            if not _is_int(raw) or not 0 <= raw <= MAX_DAYS:
                self.fail(
                    pointer,
                    f"op {op!r} takes a whole number of days from 0 to {MAX_DAYS}",
                    "segment.op_days",
                    op=op,
                    max=MAX_DAYS,
                )
                return None
            return raw
        return self.scalar(spec, raw, pointer)

    def scalar(self, spec: FieldSpec, raw: Any, pointer: str) -> Any:
        if spec.type in (Type.STRING, Type.TAGS):
            if not isinstance(raw, str) or not raw or len(raw) > 100:
                self.fail(
                    pointer,
                    f"field {spec.name!r} takes strings of 1 to 100 characters; got {raw!r}",
                    "segment.string",
                    name=spec.name,
                )
                return None
            if spec.choices and raw not in spec.choices:
                self.fail(
                    pointer,
                    f"{raw!r} is not one of {', '.join(spec.choices)}",
                    "segment.choice",
                    value=raw,
                    choices=", ".join(spec.choices),
                )
                return None
            return raw
        if spec.type is Type.INT:
            if not _is_int(raw):
                self.fail(
                    pointer,
                    f"field {spec.name!r} takes whole numbers; got {raw!r}",
                    "segment.whole_numbers",
                    name=spec.name,
                    value=raw,
                )
                return None
            if (spec.minimum is not None and raw < spec.minimum) or (
                spec.maximum is not None and raw > spec.maximum
            ):
                self.fail(
                    pointer,
                    f"field {spec.name!r} takes values from {spec.minimum} to {spec.maximum}",
                    "segment.range",
                    name=spec.name,
                    low=spec.minimum,
                    high=spec.maximum,
                )
                return None
            if abs(raw) >= 2**62:
                self.fail(pointer, "the number is too large")
                return None
            return raw
        # datetime
        moment = None
        if isinstance(raw, str):
            try:
                moment = datetime.fromisoformat(raw)
            except ValueError:
                moment = None
        if moment is None or moment.tzinfo is None or moment.utcoffset() is None:
            self.fail(pointer, f"field {spec.name!r} takes ISO 8601 times with an offset, e.g. "
                      f"'2026-11-11T00:00:00+08:00'; got {raw!r}", "segment.datetime", name=spec.name)  # fmt: skip
            return None
        return moment


def _is_int(raw: Any) -> bool:
    return isinstance(raw, int) and not isinstance(raw, bool)


def _closest(name: Any, known: Mapping[str, Any]) -> str | None:
    """The known name ``name`` most likely misspells, or None."""
    import difflib

    if not isinstance(name, str):
        return None
    close = difflib.get_close_matches(name, list(known), n=1)
    return close[0] if close else None


def _suggest(name: Any, known: Mapping[str, Any]) -> str:
    close = _closest(name, known)
    return f" (did you mean {close!r}?)" if close else ""


def parse(document: Any) -> Node:
    """Check a segment document and return its tree; raises :class:`InvalidSegment` naming every bad node."""
    if not isinstance(document, dict):
        raise InvalidSegment([Problem("", 'a segment is an object: {"version": 1, "condition": {...}}')])
    problems: list[Problem] = []
    if document.get("version") != VERSION:
        problems.append(
            Problem("/version", f"the language version is {VERSION}; got {document.get('version')!r}")
        )
    for key in document:
        if key not in ("version", "condition"):
            problems.append(Problem(child_pointer("", key), "a segment has only 'version' and 'condition'"))
    if "condition" not in document:
        problems.append(Problem("", "a segment needs a 'condition'"))
        raise InvalidSegment(problems)
    parser = _Parser()
    tree = parser.node(document["condition"], "/condition", 1)
    problems.extend(parser.problems)
    if problems or tree is None:
        raise InvalidSegment(problems or [Problem("/condition", "the condition could not be read")])
    return tree


def leaves(node: Node) -> list[Leaf]:
    """Every condition of the tree, in document order."""
    if isinstance(node, Leaf):
        return [node]
    if isinstance(node, Not):
        return leaves(node.child)
    return [leaf for child in node.children for leaf in leaves(child)]


def depth(node: Node) -> int:
    if isinstance(node, Leaf):
        return 1
    if isinstance(node, Not):
        return 1 + depth(node.child)
    return 1 + max(depth(c) for c in node.children)


def size(node: Node) -> int:
    if isinstance(node, Leaf):
        return 1
    if isinstance(node, Not):
        return 1 + size(node.child)
    return 1 + sum(size(c) for c in node.children)


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The language as data, for ``GET /api/segments/fields`` and the CLI."""

    version: int = VERSION
    fields: list[dict[str, Any]] = field(default_factory=list)


def catalogue() -> Catalogue:
    return Catalogue(
        fields=[
            {
                "field": spec.name,
                "type": spec.type.value,
                "description": spec.description,
                "operators": list(
                    _SEGMENT_OPS
                    if spec.name == "segment"
                    else _MEMBERSHIP_OPS
                    if spec.name in ("tier.reached", "orders.bought_sku", "orders.bought_category")
                    else spec.operators
                ),
                "parameters": [
                    {"name": p.name, "required": p.required, "description": p.description}
                    for p in spec.params
                ],
                "choices": list(spec.choices),
                "available": spec.unavailable is None,
                "unavailable_reason": spec.unavailable,
            }
            for spec in FIELDS.values()
        ]
    )
