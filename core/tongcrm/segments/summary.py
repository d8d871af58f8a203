"""Conditions answered from the member activity summary (:mod:`tongcrm.segments.activity`) while it is current.

The conditions of an ``all`` that the summary covers exactly — the tier held now, marketing/service consent for
every signature, and lifetime order conditions (count, spend, first/last order, average order value, any order
in a store) — become one membership test of the set of summary rows meeting all of them, so a four-condition
segment reads one narrow table once instead of building a set per condition over orders, tier rows and consent
statements. A behaviour condition the summary does not cover (a window, a channel, a particular store) joins
that test when its sibling conditions are covered and it needs at least one order: the summary then narrows the
members (lifetime orders or spend at least the bound, latest order inside the window) and the condition is
checked exactly against each remaining member's own orders, through ``ix_orders_member_activity``.

A member without a summary row has none of the inputs (base tier, no statement, no order), so every condition
also says whether such a member meets it; a group that such a member meets is compiled as *not being among* the
rows that fail it. Every test here is two-valued (never SQL's unknown), so ``not`` keeps its meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from tongcrm.segments import compiler as sql
from tongcrm.segments.models import MemberActivity, MemberChannelActivity
from tongcrm.segments.schema import Leaf, Node, Not

if TYPE_CHECKING:
    from tongcrm.segments.compiler import Compiler, Condition

_T = TypeVar("_T")
activity = sa.inspect(MemberActivity).local_table
per_channel = sa.inspect(MemberChannelActivity).local_table


@dataclass(frozen=True, slots=True)
class Covered:
    """A condition on the member's summary row, and whether a member without a row meets it.

    ``arms``: the same test as two exclusive parts, rows without an override and rows with one (the tier held
    now), so that the rows without one — nearly all — are a range of ``ix_member_activity_reach``."""

    test: Condition
    empty: bool
    arms: tuple[Condition, Condition] | None = None


def _tier(c: Compiler, leaf: Leaf) -> Covered | None:
    if leaf.field.name != "tier.code" or c.ctx.tiers is None:
        return None
    codes = leaf.value if isinstance(leaf.value, tuple) else (leaf.value,)
    base = c.ctx.tiers[0]
    a = activity.c
    in_force = sa.and_(
        a.override_code.is_not(None), a.override_until.is_not(None), a.override_until > c.ctx.now
    )
    held = sa.or_(
        sa.and_(in_force, a.override_code.in_(codes)),
        sa.and_(sa.not_(in_force), sa.func.coalesce(a.tier_code, base).in_(codes)),
    )
    held_empty = base in codes
    if leaf.op in ("ne", "not_in"):
        return Covered(sa.not_(held), not held_empty)
    rules = a.tier_code.in_(codes) if not held_empty else sa.func.coalesce(a.tier_code, base).in_(codes)
    return Covered(
        held,
        held_empty,
        (sa.and_(a.override_code.is_(None), rules), sa.and_(a.override_code.is_not(None), held)),
    )


def _consent(c: Compiler, leaf: Leaf) -> Covered | None:
    if leaf.param("signature") not in (None, "*"):
        return None  # the summary keeps the statements for every signature only
    purpose = leaf.param("purpose")
    # "IS NOT NULL AND =" rather than COALESCE: as true or false, and a range of an index
    if purpose == "marketing":
        opted_in, empty = sql.column_test(activity.c.marketing, "eq", "opt_in", c.ctx.now), False
    elif purpose == "service":
        opted_in, empty = sql.column_test(activity.c.service, "ne", "opt_out", c.ctx.now), True
    else:
        return None
    return Covered(opted_in, empty) if leaf.value else Covered(sa.not_(opted_in), not empty)


def _lifetime(leaf: Leaf) -> tuple[sa.ColumnElement[Any], int | None] | None:
    """The summary column holding a lifetime order aggregate of ``leaf`` and its value with no order (counts
    and spend are never NULL in a row; the times are NULL without a counted order)."""
    if leaf.param("window_days") is not None or leaf.param("channel") is not None:
        return None
    a, name, store = activity.c, leaf.field.name, leaf.param("store")
    if store == "*":
        return (a.store_orders, 0) if name == "orders.count" else None
    if store is not None:
        return None
    found: dict[str, tuple[sa.ColumnElement[Any], int | None]] = {
        "orders.count": (a.orders, 0),
        "orders.spend": (a.spend, 0),
        "orders.first_at": (a.first_at, None),
        "orders.last_at": (a.last_at, None),
        "orders.aov": (sa.case((a.orders > 0, a.spend // a.orders), else_=None), None),
    }
    return found.get(name)


def _orders(c: Compiler, leaf: Leaf) -> Covered | None:
    held = _lifetime(leaf)
    if held is None:
        return None
    column, empty = held
    matches_empty = sql.empty_matches(leaf.op, leaf.value, empty)
    if leaf.field.name == "orders.aov":
        return Covered(sql.scalar_test(column, leaf.op, leaf.value, c.ctx.now), matches_empty)
    present = sa.true() if empty is not None else None  # counts and spend are NOT NULL: nothing to guard
    return Covered(sql.column_test(column, leaf.op, leaf.value, c.ctx.now, present=present), matches_empty)


_COVERS: dict[str, Callable[[Compiler, Leaf], Covered | None]] = {
    "tier": _tier,
    "consent": _consent,
    "orders": _orders,
}


def _no_order(c: Compiler, node: Node) -> Covered | None:
    """``not`` of a lifetime "at least one order" (in a store, or at all) as the count being 0: equal for a
    count, and an equality keeps the later columns of ``ix_member_activity_reach`` usable (``< 1`` is a range
    that ends the seek there)."""
    if not isinstance(node, Leaf) or node.field.name != "orders.count" or (node.op, node.value) != ("gte", 1):
        return None
    held = _lifetime(node)
    return None if held is None else Covered(held[0] == 0, True)


def _once(c: Compiler, what: str, node: Node, make: Callable[[Compiler, Node], _T]) -> _T:
    """``make(c, node)``, computed once per node of a compile. Keyed by id, with the node kept beside the value
    so that an id reused by a later node (a used segment's tree is freed after it is inlined) is not a hit."""
    hit = c.memo.get((what, id(node)))
    if hit is not None and hit[0] is node:
        found: _T = hit[1]
        return found
    made = make(c, node)
    c.memo[(what, id(node))] = (node, made)
    return made


def covered(c: Compiler, node: Node) -> Covered | None:
    """The node as a test of the summary row, or None when the summary does not hold what it needs (once per
    node of a compile: the compiler asks again at each level)."""
    return _once(c, "covered", node, _covered)


def _covered(c: Compiler, node: Node) -> Covered | None:
    if isinstance(node, Not) and (none := _no_order(c, node.child)) is not None:
        return none
    if isinstance(node, Not):
        inner = covered(c, node.child)
        return None if inner is None else Covered(sa.not_(inner.test), not inner.empty)
    if isinstance(node, Leaf) and (cover := _COVERS.get(node.field.name.split(".")[0])) is not None:
        return cover(c, node)
    return None


def answers(c: Compiler, node: Node) -> bool:
    """Whether a child of an ``all`` that has a covered child is answered from the summary by
    :func:`conjunction` (covered or narrowed), so that its condition on the source tables is never used."""
    return covered(c, node) is not None or narrowed(c, node) is not None


def _lower_bound(op: str, value: Any) -> int:
    """The least value a test of ``op``/``value`` that a zero fails can pass with (at least 1)."""
    if op == "gte" or op == "eq":
        return max(1, int(value))
    if op == "gt":
        return max(1, int(value) + 1)
    if op == "between":
        return max(1, int(value[0]))
    if op == "in":
        return max(1, min(int(v) for v in value))
    return 1


def narrowed(c: Compiler, node: Node) -> Condition | None:
    return _once(c, "narrowed", node, _narrowed)


def _narrowed(c: Compiler, node: Node) -> Condition | None:
    """A windowed or per-channel/per-store ``orders.count`` or ``orders.spend`` that needs at least one order,
    as a test on the summary row: necessary conditions the summary answers (lifetime orders or spend at least
    the bound, in a store when the scope is one, latest order — or second-latest, for two or more orders — inside
    the window), then the exact aggregate over that member's orders in scope."""
    if not isinstance(node, Leaf) or node.field.name not in ("orders.count", "orders.spend"):
        return None
    if sql.empty_matches(node.op, node.value, 0) or node.op == "is_set":
        return None
    a, bound = activity.c, _lower_bound(node.op, node.value)
    necessary: list[Condition] = []
    if node.field.name == "orders.count":
        necessary.append(a.orders >= bound)
        aggregate: sa.ColumnElement[Any] = sa.func.count()
    else:
        necessary.extend((a.orders >= 1, a.spend >= bound))
        aggregate = sql.net_spend()
    if node.param("store") is not None:
        necessary.append(a.store_orders >= (bound if node.field.name == "orders.count" else 1))
    if (days := node.param("window_days")) is not None:
        # one order in the window: the latest is in it; two or more: the second-latest too
        latest = a.last2_at if node.field.name == "orders.count" and bound >= 2 else a.last_at
        necessary.append(sql.column_test(latest, "within_days", days, c.ctx.now))
    if (by_channel := _channel_row(c, node, bound)) is not None:
        return sa.and_(*necessary, by_channel)
    exact = (
        sa.select(aggregate)
        .where(*c.order_scope(node, member=a.member_id), sql.counted_order())
        .correlate(activity)
        .scalar_subquery()
    )
    return sa.and_(*necessary, sql.scalar_test(exact, node.op, node.value, c.ctx.now))


def _channel_row(c: Compiler, node: Leaf, bound: int) -> Condition | None:
    """A channel's ``orders.count``/``orders.spend`` answered exactly by the member's row of that channel in
    ``member_channel_activity`` (no order read): over all time, any test a member without orders there fails; in
    a window, "at least 1 (2) orders", which holds when the latest (second-latest) counted order on the channel
    was placed inside it."""
    channel = node.param("channel")
    if channel is None or node.param("store") is not None or channel not in c.ctx.channels:
        return None
    mc = per_channel.c
    test: Condition
    if (days := node.param("window_days")) is None:
        column = mc.orders if node.field.name == "orders.count" else mc.spend
        test = sql.column_test(column, node.op, node.value, c.ctx.now, present=sa.true())
    elif node.field.name == "orders.count" and (node.op, node.value) in (
        ("gte", 1),
        ("gte", 2),
        ("gt", 0),
        ("gt", 1),
    ):
        test = sql.column_test(mc.last2_at if bound == 2 else mc.last_at, "within_days", days, c.ctx.now)
    else:
        return None
    return (
        sa.exists()
        .where(mc.member_id == activity.c.member_id, mc.channel == channel, test)
        .correlate(activity)
    )


def conjunction(c: Compiler, children: Sequence[Node], compiled: Sequence[Condition]) -> Condition:
    """``all`` of ``children`` (``compiled``: each one's condition on the source tables), with the conditions
    the summary covers — and, beside them, the behaviour conditions it narrows — as one test of the summary."""
    found = [covered(c, child) for child in children]
    if not any(found):
        return sa.and_(*compiled)
    tests: list[Condition] = []
    rest: list[Condition] = []
    empty = True
    arms: tuple[Condition, Condition] | None = None
    for child, cover, source in zip(children, found, compiled, strict=True):
        if cover is not None and cover.arms is not None and arms is None:
            arms = cover.arms
            empty = empty and cover.empty
        elif cover is not None:
            tests.append(cover.test)
            empty = empty and cover.empty
        elif (narrow := narrowed(c, child)) is not None:
            tests.append(narrow)
            empty = False
        else:
            rest.append(source)
    rows = sa.select(activity.c.member_id)
    if empty:
        held = sa.and_(*tests, *([sa.or_(*arms)] if arms is not None else []))
        return sa.and_(sa.not_(sql.among(rows.where(sa.not_(held)))), *rest)
    ids: sa.Select[Any] | sa.CompoundSelect[Any] = (
        sa.union_all(rows.where(arms[0], *tests), rows.where(arms[1], *tests)) if arms else rows.where(*tests)
    )
    # IN rather than EXISTS: the set is small, and SQLite then builds it once and looks each member up by id
    # (an EXISTS over a UNION ALL it re-evaluates per member, pushing the member id into both arms);
    # PostgreSQL plans either as the same semi join
    return sa.and_(sql.members.c.id.in_(ids), *rest)
