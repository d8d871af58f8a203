"""Segment trees compiled to one SQL condition over ``members``, the same on SQLite and PostgreSQL.

Every condition becomes a predicate on the member row or a correlated subquery keyed by the member's id
(``EXISTS`` for "has any", a scalar aggregate for counts and sums), with its window bounds in the ``WHERE`` so
the ``(member_id, placed_at)``-style indexes do the work. Nothing is evaluated row by row in Python.

Conditions are two-valued: a comparison on a member without a value (no birthday, no order yet) is false, never
SQL's unknown, so ``not`` turns it into true exactly as a reader of the tree expects; ``ne``/``not_in`` are the
negation of ``eq``/``in``.

Names the tree uses are checked here against the programme (:class:`Context`): channels, tier codes and saved
segments. A saved segment used by another is inlined (its latest version), so a cycle of segments referring to
each other is found while compiling and refused with the pointer of the reference that closes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from tongcrm.consent.models import ConsentEvent
from tongcrm.errors import Unprocessable
from tongcrm.identity.models import Identity
from tongcrm.members.models import Member, MemberTag
from tongcrm.members.service import normalise_tag
from tongcrm.orders.models import Order, OrderLine
from tongcrm.points.models import EntryKind, PointsBalance, PointsEntry, PointsLot
from tongcrm.rfm.models import RfmScore
from tongcrm.segments import summary
from tongcrm.segments.schema import (
    FIELDS,
    MAX_DEPTH,
    MAX_NODES,
    All,
    AnyOf,
    InvalidSegment,
    Leaf,
    Node,
    Not,
    Problem,
    parse,
    size,
)
from tongcrm.tiers.models import MemberTier, TierHistory

members = sa.inspect(Member).local_table
_referrals = members.alias("referral")
Condition = sa.ColumnElement[bool]


@dataclass(frozen=True, slots=True)
class Context:
    """What a tree is checked and compiled against: the moment it is evaluated at and the programme's names."""

    now: datetime
    #: Channel names orders can carry (installed channels and those of connected accounts).
    channels: frozenset[str] = frozenset()
    #: Identity kinds each channel declares (``identity.has`` takes a channel, never a hard-coded kind).
    identity_kinds: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Tier codes of the ladder in force, base first; None when no ladder is configured.
    tiers: tuple[str, ...] | None = None
    #: Saved segments by name: the definition document of each one's latest version.
    segments: Mapping[str, Any] = field(default_factory=dict)
    #: The member activity summary is current (:func:`tongcrm.segments.activity.is_current`): conditions it
    #: covers are read from it (:mod:`tongcrm.segments.summary`) instead of the order, tier and consent tables.
    activity: bool = False


def known(predicate: Condition) -> Condition:
    """A predicate over a value that may be NULL (an aggregate of no rows), made false rather than unknown."""
    return sa.func.coalesce(predicate, sa.false(), type_=sa.Boolean)


def _compare(expr: sa.ColumnElement[Any], op: str, value: Any, now: datetime) -> Condition:
    """The positive form of ``op``: true only where ``expr`` has a value that matches."""
    result: Condition
    if op == "eq":
        result = expr == value
    elif op == "in":
        result = expr.in_(value)
    elif op == "gt":
        result = expr > value
    elif op in ("gte", "after"):
        result = expr >= value
    elif op in ("lt", "before"):
        result = expr < value
    elif op == "lte":
        result = expr <= value
    elif op == "between":
        result = sa.and_(expr >= value[0], expr <= value[1])
    elif op == "within_days":
        result = expr >= now - timedelta(days=value)
    elif op == "not_within_days":
        result = expr < now - timedelta(days=value)
    else:
        raise AssertionError(f"unhandled operator {op}")
    return result


_NEGATED = {"ne": "eq", "not_in": "in"}


def column_test(
    column: sa.ColumnElement[Any], op: str, value: Any, now: datetime, *, present: Condition | None = None
) -> Condition:
    """A test on a member column (or an expression of one) that may be NULL: index-friendly (no COALESCE)."""
    present = present if present is not None else column.is_not(None)
    if op == "is_set":
        return present if value else sa.not_(present)
    if op in _NEGATED:
        return sa.not_(sa.and_(present, _compare(column, _NEGATED[op], value, now)))
    return sa.and_(present, _compare(column, op, value, now))


def scalar_test(expr: sa.ColumnElement[Any], op: str, value: Any, now: datetime) -> Condition:
    """A test on a correlated scalar subquery (NULL when the member has nothing to aggregate)."""
    if op == "is_set":
        return expr.is_not(None) if value else expr.is_(None)
    if op in _NEGATED:
        return sa.not_(known(_compare(expr, _NEGATED[op], value, now)))
    return known(_compare(expr, op, value, now))


def _exists(*where: Condition) -> Condition:
    return sa.exists().where(*where).correlate(members)


def among(ids: sa.Select[Any] | sa.CompoundSelect[Any]) -> Condition:
    """The member is one of ``ids`` (an uncorrelated select of member ids, never NULL).

    Written as ``EXISTS`` over the set rather than ``IN``: PostgreSQL plans both as a hashed semi join, but only
    ``NOT EXISTS`` becomes an anti join (``NOT IN`` must allow for NULLs and rescans the set per member once it
    outgrows ``work_mem``); SQLite builds the set once and probes it by member id. Computing the set once,
    instead of a correlated probe per member, is what keeps a count over a large base near a scan of
    ``members``."""
    found = ids.subquery()
    return sa.exists().select_from(found).where(found.c[0] == members.c.id).correlate(members)


class _Unordered(sa.sql.functions.FunctionElement[int]):
    """A member id column that SQLite must not read in index order (``+member_id``; the plain column elsewhere).

    Grouping the orders of a window by member, SQLite prefers walking the whole member-ordered covering index
    (five million entries on the benchmark base) to avoid a sort, over the range of the time-ordered one for
    the window (600,000): the unary ``+`` leaves it no ordered index, so it takes the range and sorts the
    survivors (2.3x less CPU for "2 orders on taobao in 90 days" there). PostgreSQL hashes either way."""

    inherit_cache = True
    name = "unordered"
    type = sa.BigInteger()


@compiles(_Unordered)
def _unordered_default(element: _Unordered, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(_Unordered, "sqlite")
def _unordered_sqlite(element: _Unordered, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + compiler.process(element.clauses, **kw)


def _py_compare(have: int, op: str, value: Any) -> bool:
    """:func:`_compare` on a Python number (the value a member without rows has)."""
    if op == "eq":
        return bool(have == value)
    if op == "in":
        return bool(have in value)
    if op == "gt":
        return bool(have > value)
    if op == "gte":
        return bool(have >= value)
    if op == "lt":
        return bool(have < value)
    if op == "lte":
        return bool(have <= value)
    if op == "between":
        return bool(value[0] <= have <= value[1])
    raise AssertionError(f"unhandled operator {op} on a number")


def empty_matches(op: str, value: Any, empty: int | None) -> bool:
    """Whether :func:`_scalar_test` holds for a member with nothing to aggregate (``empty``: the aggregate's
    value then, e.g. 0 for a count, None for a latest time)."""
    if op == "is_set":
        return (empty is not None) == bool(value)
    if empty is None:
        return op in _NEGATED
    if op in _NEGATED:
        return not _py_compare(empty, _NEGATED[op], value)
    return _py_compare(empty, op, value)


# -------------------------------------------------------------------------------------------------------------
# order scopes: which orders a behaviour condition looks at


def purchased_order() -> Condition:
    """An order that was bought: paid at some point. Agrees with the tier metrics (:mod:`tongcrm.tiers.metrics`):
    an unpaid order, or one closed before payment, is no purchase."""
    return sa.and_(
        Order.status != "created", sa.not_(sa.and_(Order.status == "closed", Order.paid_at.is_(None)))
    )


def counted_order() -> Condition:
    """A purchase that still counts as an order: not refunded in full."""
    return sa.and_(
        purchased_order(), sa.not_(sa.and_(Order.refunded_fen > 0, Order.refunded_fen >= Order.paid_fen))
    )


def net_spend() -> sa.ColumnElement[int]:
    """The spend of a member's orders in a group: what was paid minus what was refunded, never below zero per
    order (0 with no order)."""
    net = Order.paid_fen - Order.refunded_fen
    return sa.cast(sa.func.coalesce(sa.func.sum(sa.case((net > 0, net), else_=0)), 0), sa.BigInteger)


class Compiler:
    """Checks names and compiles one tree; collects every problem before raising."""

    def __init__(self, context: Context) -> None:
        self.ctx = context
        self.problems: list[Problem] = []
        self.nodes = 0
        self._stack: list[str] = []
        #: What :mod:`tongcrm.segments.summary` made of each node (by id: the parsed tree outlives the compile).
        self.memo: dict[tuple[str, int], Any] = {}

    def compile(self, tree: Node, *, name: str | None = None) -> Condition:
        """The condition for ``tree``; ``name``: the saved segment this tree is (so a reference to it is a cycle)."""
        if name is not None:
            self._stack.append(name)
        condition = self.node(tree, 0)
        if self.problems:
            raise InvalidSegment(self.problems)
        return condition

    def fail(self, pointer: str, detail: str) -> Condition:
        self.problems.append(Problem(pointer, detail))
        return sa.false()

    def node(self, node: Node, depth: int, *, in_all: bool = False) -> Condition:
        """``in_all``: a child of an ``all`` whose summary pass (:func:`summary.conjunction`) reads this node
        again. A child that pass answers from the summary is then only checked here (its condition on the source
        tables would be thrown away: building it was three quarters of preparing a four-condition count), and a
        node's own summary pass is skipped."""
        self.nodes += 1
        if self.nodes == MAX_NODES + 1:
            self.fail(node.pointer, f"the tree, with the segments it uses, has more than {MAX_NODES} nodes")
        if depth + 1 > MAX_DEPTH:
            return self.fail(
                node.pointer, f"with the segments it uses the tree is deeper than {MAX_DEPTH} levels"
            )
        if in_all and isinstance(node, Leaf | Not) and summary.answers(self, node):
            if isinstance(node, Not):
                self.node(node.child, depth + 1, in_all=True)
            else:
                self.check(node)
            return sa.true()  # a placeholder: the summary pass puts the node's test in its place
        if isinstance(node, All):
            # the summary pass replaces children only when one of them is covered (see summary.conjunction)
            in_all = self.ctx.activity and any(summary.covered(self, c) is not None for c in node.children)
            children = [self.node(c, depth + 1, in_all=in_all) for c in node.children]
            if self.ctx.activity and not self.problems:
                return summary.conjunction(self, node.children, children)
            return sa.and_(*children)
        if isinstance(node, AnyOf):
            return sa.or_(*(self.node(c, depth + 1) for c in node.children))
        alone = sa.not_(self.node(node.child, depth + 1)) if isinstance(node, Not) else self.leaf(node, depth)
        if self.ctx.activity and not in_all and not self.problems:
            return summary.conjunction(self, (node,), [alone])
        return alone

    # ---------------------------------------------------------------------------------------------------------

    def check(self, leaf: Leaf) -> None:
        """The name checks a leaf's builder makes, without building it (the leaves the summary answers)."""
        if leaf.field.name.startswith("tier."):
            self.tier_codes(leaf, leaf.value if isinstance(leaf.value, tuple) else (leaf.value,))
        elif leaf.field.name.startswith("orders."):
            self.order_scope(leaf)

    def leaf(self, leaf: Leaf, depth: int) -> Condition:
        return _BUILDERS[leaf.field.name.split(".")[0]](self, leaf, depth)

    def order_scope(
        self, leaf: Leaf, *, correlated: bool = True, member: sa.ColumnElement[int] | None = None
    ) -> list[Condition]:
        """The orders a behaviour leaf looks at: the member's own (``correlated``: those of ``members.id``, or
        of the ``member`` column given) or everyone's with a member."""
        owner = members.c.id if member is None else member
        where: list[Condition] = [Order.member_id == owner if correlated else Order.member_id.is_not(None)]
        if (days := leaf.param("window_days")) is not None:
            where.append(Order.placed_at >= self.ctx.now - timedelta(days=days))
        if (channel := leaf.param("channel")) is not None:
            if channel not in self.ctx.channels:
                known = ", ".join(sorted(self.ctx.channels)) or "none"
                self.fail(f"{leaf.pointer}/channel", f"no channel named {channel!r} (known: {known})")
            where.append(Order.channel == channel)
        if (store := leaf.param("store")) is not None:
            where.append(Order.store_code.is_not(None) if store == "*" else Order.store_code == store)
        return where

    def tier_codes(self, leaf: Leaf, codes: Sequence[str]) -> None:
        if self.ctx.tiers is None:
            self.fail(
                f"{leaf.pointer}/field", "no tier ladder is configured yet, so tier conditions cannot match"
            )
            return
        for i, code in enumerate(codes):
            if code not in self.ctx.tiers:
                at = f"{leaf.pointer}/value" + ("" if leaf.op in ("eq", "ne") else f"/{i}")
                self.fail(at, f"no tier {code!r} in the ladder (tiers: {', '.join(self.ctx.tiers)})")


def _profile(c: Compiler, leaf: Leaf, depth: int) -> Condition:
    name, op, value, now = leaf.field.name, leaf.op, leaf.value, c.ctx.now
    if name == "profile.referral_count":
        count = (
            sa.select(sa.func.count())
            .select_from(_referrals)
            .where(_referrals.c.referrer_id == members.c.id, _referrals.c.status == "active")
            .correlate(members)
            .scalar_subquery()
        )
        return scalar_test(count, op, value, now)
    if name == "profile.birthday_month":
        month = sa.cast(sa.extract("month", members.c.birthday), sa.Integer)
        return column_test(month, op, value, now, present=members.c.birthday.is_not(None))
    column = {
        "profile.gender": members.c.gender,
        "profile.city": members.c.city,
        "profile.province": members.c.province,
        "profile.joined_at": members.c.created_at,
        "profile.source_channel": members.c.source_channel,
        "profile.source_store": members.c.source_store,
        "profile.source_campaign": members.c.source_campaign,
        "profile.referrer": members.c.referrer_id,
    }[name]
    return column_test(column, op, value, now)


def _identity(c: Compiler, leaf: Leaf, depth: int) -> Condition:
    channel = leaf.param("channel")
    kinds = c.ctx.identity_kinds.get(channel, ())
    if not kinds:
        known = ", ".join(sorted(k for k, v in c.ctx.identity_kinds.items() if v)) or "none"
        return c.fail(
            f"{leaf.pointer}/channel",
            f"channel {channel!r} declares no identity kinds (channels with identities: {known})",
        )
    where = [Identity.member_id == members.c.id, Identity.kind.in_(kinds)]
    if leaf.field.name == "identity.membership_bound":
        where.append(Identity.bound_at.is_not(None))
    has = _exists(*where)
    return has if leaf.value else sa.not_(has)


def _holds_tier(c: Compiler, codes: Sequence[str]) -> Condition:
    """Holds one of ``codes`` now: the override while in force, else the tier under the rules; a member without
    a tier row holds the base tier. Compiled as membership of the set of tier rows that match (or, when the base
    tier is wanted, as not being among the rows that do not match)."""
    assert c.ctx.tiers is not None
    mt = sa.inspect(MemberTier).local_table
    if c.ctx.tiers[0] in codes:
        return sa.not_(
            among(sa.select(mt.c.member_id).where(_effective_tier(mt, c.ctx.now, codes, held=False)))
        )
    return among(sa.select(mt.c.member_id).where(_effective_tier(mt, c.ctx.now, codes, held=True)))


def _effective_tier(mt: sa.FromClause, now: datetime, codes: Sequence[str], *, held: bool) -> Condition:
    """The tier row's effective tier (the override while in force, else ``tier_code``) is (``held``) or is not
    one of ``codes``.

    Spelt as two branches rather than a ``CASE`` over both columns so that the rules branch is a range of
    ``ix_member_tiers_tier_code`` and the override branch one of the ``override_until`` index (overrides in
    force are few): a ``CASE`` can only be evaluated on every tier row. The branches are exclusive and, as
    ``CASE`` does, an override without an end (or with a NULL end) is not in force."""
    in_force = sa.and_(mt.c.override_code.is_not(None), mt.c.override_until > now)
    not_in_force = sa.or_(
        mt.c.override_code.is_(None), mt.c.override_until.is_(None), mt.c.override_until <= now
    )
    if held:
        return sa.or_(
            sa.and_(in_force, mt.c.override_code.in_(codes)), sa.and_(not_in_force, mt.c.tier_code.in_(codes))
        )
    return sa.or_(
        sa.and_(in_force, mt.c.override_code.not_in(codes)),
        sa.and_(not_in_force, mt.c.tier_code.not_in(codes)),
    )


def _tier(c: Compiler, leaf: Leaf, depth: int) -> Condition:
    codes = leaf.value if isinstance(leaf.value, tuple) else (leaf.value,)
    c.tier_codes(leaf, codes)
    if c.ctx.tiers is None:
        return sa.false()
    if leaf.field.name == "tier.code":
        held = _holds_tier(c, codes)
        return sa.not_(held) if leaf.op in _NEGATED else held
    th = sa.inspect(TierHistory).local_table
    where = [th.c.member_id == members.c.id, th.c.to_code.in_(codes)]
    if (days := leaf.param("window_days")) is not None:
        where.append(th.c.at >= c.ctx.now - timedelta(days=days))
    return _exists(*where)


def _tags(c: Compiler, leaf: Leaf, depth: int) -> Condition:
    values = leaf.value if isinstance(leaf.value, tuple) else (leaf.value,)
    tags: list[str] = []
    for i, raw in enumerate(values):
        try:
            tags.append(normalise_tag(raw))
        except Unprocessable as exc:
            at = f"{leaf.pointer}/value" + ("" if leaf.op == "has" else f"/{i}")
            c.fail(at, exc.message)

    def has(*wanted: str) -> Condition:
        return _exists(MemberTag.member_id == members.c.id, MemberTag.tag.in_(wanted))

    if leaf.op == "has_all":
        return sa.and_(*(has(t) for t in tags))
    if leaf.op == "has_none":
        return sa.not_(has(*tags))
    return has(*tags)


def _consent(c: Compiler, leaf: Leaf, depth: int) -> Condition:
    purpose = leaf.param("purpose")
    signatures = sorted({leaf.param("signature") or "*", "*"})
    ce = sa.inspect(ConsentEvent).local_table
    later = ce.alias("later")

    def latest_is(status: str) -> Condition:
        """The member's latest statement for the purpose and signature (or every signature) says ``status``."""
        superseded = sa.exists().where(
            later.c.member_id == ce.c.member_id,
            later.c.purpose == purpose,
            later.c.signature.in_(signatures),
            later.c.id > ce.c.id,
        )
        return among(
            sa.select(ce.c.member_id).where(
                ce.c.purpose == purpose, ce.c.signature.in_(signatures), ce.c.status == status,
                sa.not_(superseded),
            )
        )  # fmt: skip

    # with no statement at all, service messages are allowed and marketing needs an opt-in (consent service)
    opted_in = sa.not_(latest_is("opt_out")) if purpose == "service" else latest_is("opt_in")
    return opted_in if leaf.value else sa.not_(opted_in)


def _points(c: Compiler, leaf: Leaf, depth: int) -> Condition:
    name, now = leaf.field.name, c.ctx.now
    amount: sa.ColumnElement[Any]
    if name == "points.balance":
        amount = (
            sa.select(PointsBalance.available)
            .where(PointsBalance.member_id == members.c.id)
            .correlate(members)
            .scalar_subquery()
        )
    elif name == "points.expiring":
        amount = (
            sa.select(sa.func.sum(PointsLot.remaining))
            .where(
                PointsLot.member_id == members.c.id,
                PointsLot.status == "available",
                PointsLot.expires_at > now,
                PointsLot.expires_at <= now + timedelta(days=leaf.param("within_days")),
            )
            .correlate(members)
            .scalar_subquery()
        )
    else:
        kind = EntryKind.EARN if name == "points.earned" else EntryKind.REDEEM
        where = [PointsEntry.member_id == members.c.id, PointsEntry.kind == kind]
        if (days := leaf.param("window_days")) is not None:
            where.append(PointsEntry.occurred_at >= now - timedelta(days=days))
        total = sa.func.sum(PointsEntry.amount if kind == EntryKind.EARN else -PointsEntry.amount)
        amount = sa.select(total).where(*where).correlate(members).scalar_subquery()
    return scalar_test(sa.func.coalesce(amount, 0), leaf.op, leaf.value, now)


def _orders(c: Compiler, leaf: Leaf, depth: int) -> Condition:
    name, op, value, now = leaf.field.name, leaf.op, leaf.value, c.ctx.now
    if name == "orders.count":
        # "has any" and "has none" are the common forms: EXISTS stops at the first order found
        if (op, value) in (("gte", 1), ("gt", 0)) or (op == "ne" and value == 0):
            return _exists(*c.order_scope(leaf), counted_order())
        if (op, value) in (("eq", 0), ("lt", 1), ("lte", 0)):
            return sa.not_(_exists(*c.order_scope(leaf), counted_order()))
    if name in ("orders.bought_sku", "orders.bought_category"):
        column = OrderLine.sku if name == "orders.bought_sku" else OrderLine.category
        return _exists(
            *c.order_scope(leaf),
            counted_order(),
            OrderLine.order_id == Order.id,
            column.in_(value),
            sa.not_(sa.and_(OrderLine.refunded_fen > 0, OrderLine.refunded_fen >= OrderLine.amount_fen)),
        )
    # an aggregate over each member's orders in scope, compiled as the set of members whose group passes the
    # test (one pass over the orders in scope) rather than one correlated aggregate per member; a member with
    # no order in scope has the aggregate's empty value (0 for a count or spend, none otherwise)
    spend = net_spend()
    which = purchased_order() if name == "orders.refund_rate" else counted_order()
    aggregate: sa.ColumnElement[Any]
    empty: int | None = None
    if name == "orders.refund_rate":
        paid = sa.cast(sa.func.sum(Order.paid_fen), sa.BigInteger)
        refunded = sa.cast(sa.func.sum(Order.refunded_fen), sa.BigInteger)
        aggregate = sa.case((paid > 0, (refunded * 100) // paid), else_=None)
    elif name in ("orders.count", "orders.spend"):
        aggregate, empty = (sa.func.count() if name == "orders.count" else spend), 0
    elif name == "orders.last_at":
        aggregate = sa.func.max(Order.placed_at)
    elif name == "orders.first_at":
        aggregate = sa.func.min(Order.placed_at)
    else:
        aggregate = sa.case((sa.func.count() > 0, spend // sa.func.count()), else_=None)
    test = scalar_test(aggregate, op, value, now)
    where = [*c.order_scope(leaf, correlated=False), which]

    buyer = _Unordered(Order.member_id)

    def passing(having: Condition) -> Condition:
        return among(sa.select(Order.member_id).where(*where).group_by(buyer).having(having))

    return sa.not_(passing(sa.not_(test))) if empty_matches(op, value, empty) else passing(test)


def _segment(c: Compiler, leaf: Leaf, depth: int) -> Condition:
    name = leaf.value
    at = f"{leaf.pointer}/value"
    if name in c._stack:
        chain = " -> ".join([*c._stack[c._stack.index(name) :], name])
        return c.fail(at, f"segments refer to each other in a cycle: {chain}")
    document = c.ctx.segments.get(name)
    if document is None:
        return c.fail(at, f"no saved segment named {name!r}")
    try:
        tree = parse(document)
    except InvalidSegment as exc:
        return c.fail(at, f"segment {name!r} is not valid any more: {exc.message}")
    if c.nodes + size(tree) > MAX_NODES:
        return c.fail(at, f"with segment {name!r} the tree has more than {MAX_NODES} nodes")
    c._stack.append(name)
    before = len(c.problems)
    try:
        inner = c.node(tree, depth)
    finally:
        c._stack.pop()
    if len(c.problems) > before:
        # a problem inside the used segment is reported where it is used: that is the node the caller can fix
        found = c.problems[before:]
        del c.problems[before:]
        c.fail(at, f"segment {name!r}: " + "; ".join(f"{p.pointer}: {p.detail}" for p in found))
    return sa.not_(inner) if leaf.op == "ne" else inner


def _rfm(c: Compiler, leaf: Leaf, depth: int) -> Condition:
    column = {
        "rfm.recency": RfmScore.r,
        "rfm.frequency": RfmScore.f,
        "rfm.monetary": RfmScore.m,
        "rfm.cell": RfmScore.cell,
    }[leaf.field.name]
    held = sa.select(column).where(RfmScore.member_id == members.c.id).correlate(members).scalar_subquery()
    return scalar_test(held, leaf.op, leaf.value, c.ctx.now)


def _lifecycle(c: Compiler, leaf: Leaf, depth: int) -> Condition:
    return column_test(members.c.lifecycle_stage, leaf.op, leaf.value, c.ctx.now, present=sa.true())


_BUILDERS: dict[str, Callable[[Compiler, Leaf, int], Condition]] = {
    "lifecycle": _lifecycle,
    "rfm": _rfm,
    "profile": _profile,
    "identity": _identity,
    "tier": _tier,
    "tags": _tags,
    "consent": _consent,
    "points": _points,
    "orders": _orders,
    "segment": _segment,
}

# every field the language offers has a builder (or is declared unavailable)
assert all(spec.name.split(".")[0] in _BUILDERS or spec.unavailable for spec in FIELDS.values())


def compile_tree(tree: Node, context: Context, *, name: str | None = None) -> Condition:
    """The SQL condition for ``tree`` (a member row qualifies where it is true); raises
    :class:`InvalidSegment` when names in the tree are unknown or segments refer to each other in a cycle."""
    return Compiler(context).compile(tree, name=name)


def member_filter(condition: Condition) -> Condition:
    """The condition restricted to live members (merged tombstones are in no segment)."""
    return sa.and_(members.c.status == "active", condition)
