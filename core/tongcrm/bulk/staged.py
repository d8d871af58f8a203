"""Set-based writers of an import page (PostgreSQL): ``COPY`` and fixed-text statements instead of row-by-row
binds, for the rows whose outcome identity resolution would decide without anything to weigh.

**Members.** Most rows of a first import from another CRM name someone tongcrm has never seen: none of the
row's claims is stored, no other row of the page shares one, and the policy (``resolve_member``, asked with no
matches, exactly as resolution would ask it) says "create". Such a row becomes one new member with its
identities and a ``member_created`` event, all three written by ``COPY`` (the member ids drawn from the
members' own sequence first). A channel sync running at the same time may store one of the same identities
first: the identities' unique ``(kind, value)`` then stops the ``COPY``, the writes roll back to their savepoint
and the caller resolves every row of the page the ordinary way.

**Orders** (both databases). A historical order whose every claim is stored and names one live member that the
policy attaches to (or that has no claims at all) is inserted as it is, without the forward-only upsert and the
read of what is held that ingest needs for orders seen before: on PostgreSQL by ``COPY`` under an id drawn from
the orders' sequence, its lines by ``COPY``; on SQLite (whose transaction holds the write lock from its start)
under ids after the largest, orders and lines each one prepared ``INSERT`` run for every row (``executemany``,
the values converted as SQLAlchemy converts them). The claimed identities' ``last_seen_at`` moves in one
statement. The page's keys were new, so its orders should be; one stored meanwhile stops the insert on
``(account_id, external_id)``, the writes roll back to their savepoint and the page goes through ingest.

Every other row (a claim not stored yet, claims naming several members, a claim shared within the page, a
profile to fill, a claim that cannot be prepared) is left to :func:`tongcrm.identity.service.resolve_many` or
:func:`tongcrm.ingest.apply.apply_orders_page`, which merge rather than duplicate.
"""

from __future__ import annotations

import functools
import operator
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from tongcrm.bulk.imported import ImportedClaim, ImportedOrder
from tongcrm.db import direct
from tongcrm.db.dialect import dialect_name, one_of, sqlite_tuples
from tongcrm.db.jsontext import json_text
from tongcrm.identity.models import Identity
from tongcrm.identity.plugin import default_decision
from tongcrm.identity.service import (
    MOBILE,
    ClaimError,
    ResolutionContext,
    ResolveOutcome,
    claim_value,
    prepare_claim_value,
)
from tongcrm.jobs import outbox
from tongcrm.logging import get_logger
from tongcrm.members.masked import masked_index
from tongcrm.members.models import Member
from tongcrm.orders.models import Order, OrderLine
from tongcrm.plugin.types import IdentityClaim, MemberMatch

log = get_logger(__name__)

#: Claims of a page that are already stored: one fixed text, the page's claims as array parameters.
_LOOKUP = (
    "SELECT DISTINCT t.n FROM unnest($1::varchar[], $2::varchar[], $3::int[]) AS t(k, v, n) "
    "JOIN identities AS i ON i.kind = t.k AND i.value = t.v"
)
_NEW_IDS = "SELECT nextval(pg_get_serial_sequence('members', 'id')) FROM generate_series(1, $1)"
_MEMBER_COLUMNS = (
    "id", "status", "version", "created_at", "updated_at", "name", "province", "city", "mobile_enc",
    "mobile_masked_index", "profile_meta", "source_channel", "source_store", "source_campaign", "lifecycle_stage",
)  # fmt: skip
_IDENTITY_COLUMNS = (
    "kind", "value", "member_id", "value_enc", "masked_index", "account_id", "evidence", "first_seen_at",
    "last_seen_at",
)  # fmt: skip


_UNIQUE_VIOLATION = "23505"


class StoredMeanwhile(Exception):
    """Another transaction stored one of the page's new identities first."""


#: A new member's profile as a row gives it: (name, province, city), each None when blank.
Profile = tuple[str | None, str | None, str | None]
_NO_PROFILE: Profile = (None, None, None)


@dataclass(slots=True)
class PreparedMember:
    """What a new member of a row needs that no database does: its claims ready to store (normalised,
    encrypted, blind-indexed), their lookup keys, its (first) mobile claim with that number's masked index,
    whether the policy creates a member for these claims when none is stored, and the row's profile. Made by
    :func:`prepare_member`, in the import's reading thread, one a row; not frozen (a frozen dataclass sets each
    field through ``object.__setattr__``), nothing changes one after it is made."""

    claims: list[Any]  # tongcrm.identity.service._Claim
    keys: frozenset[tuple[str, str]]
    masked: str | None
    creates: bool
    mobile: Any = None  # the claim ``masked`` indexes the number of
    profile: Profile = _NO_PROFILE


@dataclass(slots=True)
class _New:
    index: int
    prepared: PreparedMember


def prepare_member(
    ctx: ResolutionContext,
    kinds: dict[str, Any],
    pairs: Sequence[tuple[str, str]],
    evidence: str,
    profile: Profile = _NO_PROFILE,
) -> PreparedMember | None:
    """A row's claims (``(kind, value)`` pairs, not blank, each said with ``evidence``) made ready for
    :func:`write_new_members`; None when there are none or one cannot be prepared (resolution, which the caller
    then gives the row's :class:`ClaimSet`, reports that error itself). The plugin types of the claim set
    (``IdentityClaim`` per claim, ``ClaimSet``, ``BuyerProfile``: frozen, ~7 µs a row) are not made here: the
    caller makes them only for the rows resolution takes (#22). A function of the row alone (the
    ``resolve_member`` policy is asked with no matches, as resolution asks it of claims none of which is stored;
    a policy decides, it keeps no state): safe in another thread."""
    said = evidence[:2000]
    claims: list[Any] = []
    seen: set[tuple[str, str]] = set()
    # one pass over the claims for their keys and the first mobile (a loop, not generators: per row, #22)
    keys: list[tuple[str, str]] = []
    mobile: Any = None
    try:
        for kind, raw in pairs:
            c = prepare_claim_value(ctx, kinds, kind, raw, said)
            if (kind, c.value) in seen:
                continue
            seen.add((kind, c.value))
            claims.append(c)
            keys.append((kind, c.value))
            for v in c.lookup:
                keys.append((kind, v))
            if mobile is None and kind == MOBILE and c.e164 is not None:
                mobile = c
    except ClaimError:
        return None
    if not claims:
        return None
    return PreparedMember(
        claims,
        frozenset(keys),
        None if mobile is None else masked_index(ctx.vault, mobile.e164),
        # the core policy creates a member for claims none of which is stored: not asked through pluggy per row
        ctx.host.resolution_is_core() or _creates(ctx, claims),
        mobile,
        profile,
    )


def prepare_order(ctx: ResolutionContext, kinds: dict[str, Any], order: ImportedOrder) -> list[Any] | None:
    """The order's claims ready for :func:`write_orders` (:class:`ImportedClaim`, without repeats); None when the
    order is not for it (a buyer profile to fill, a claim that cannot be prepared: resolution reports that error
    itself). Pure: safe in another thread."""
    if order.name:
        return None  # a profile to fill into the member: resolution does that
    out: list[Any] = []
    seen: set[tuple[str, str]] = set()
    for kind, raw in order.claims:
        try:
            strong, value, lookup, value_enc, e164 = claim_value(ctx, kinds, kind, raw)
        except ClaimError:
            return None
        if (kind, value) not in seen:
            seen.add((kind, value))
            out.append(ImportedClaim(order, kind, strong, value, lookup, value_enc, e164))
    return out


def _creates(ctx: ResolutionContext, claims: Sequence[Any]) -> bool:
    """Whether the policy creates a member for claims none of which is stored (what resolution would ask)."""
    try:
        decision = ctx.host.resolve_member([IdentityClaim(c.kind, c.value, c.evidence) for c in claims], [])
    except Exception:
        return False
    return decision is None or decision.create


async def write_new_members(
    session: AsyncSession,
    ctx: ResolutionContext,
    prepared: Sequence[PreparedMember | None],
    *,
    source_channel: str | None,
    source_campaign: str | None,
) -> dict[int, ResolveOutcome]:
    """Create the members of the rows that certainly make new members; {index: outcome} of those.

    ``prepared`` gives :func:`prepare_member` of each row (the bulk import makes them in its reading thread; None:
    a row for resolution); the new members have ``source_channel`` and ``source_campaign``. The caller resolves
    the others (in their order) with :func:`tongcrm.identity.service.resolve_many`. Runs in the caller's
    transaction (PostgreSQL only)."""
    candidates = [_New(i, p) for i, p in enumerate(prepared) if p is not None]
    if not candidates:
        return {}
    # a claim two rows of the page share: resolution decides how they meet
    uses = Counter(key for new in candidates for key in new.prepared.keys)
    unique = [new for new in candidates if all(uses[key] == 1 for key in new.prepared.keys)]
    if not unique:
        return {}
    driver = await driver_of(session)
    kinds_arg, values_arg, rows_arg = [], [], []
    for n, new in enumerate(unique):
        for kind, value in new.prepared.keys:
            kinds_arg.append(kind)
            values_arg.append(value)
            rows_arg.append(n)
    known = {r[0] for r in await driver.fetch(_LOOKUP, kinds_arg, values_arg, rows_arg)}
    fresh = [new for n, new in enumerate(unique) if n not in known and new.prepared.creates]
    if not fresh:
        return {}
    now = ctx.clock()
    # a savepoint of its own, on the connection the writes use (the ORM's nested transaction would not cover them)
    await driver.execute("SAVEPOINT bulk_staged_members")
    try:
        ids = await _write(driver, ctx, fresh, now, (None, source_channel, None, source_campaign))
    except StoredMeanwhile:
        await driver.execute("ROLLBACK TO SAVEPOINT bulk_staged_members")
        log.info("a new identity of the import page was stored meanwhile; resolving the page row by row")
        return {}
    await driver.execute("RELEASE SAVEPOINT bulk_staged_members")
    return {
        new.index: ResolveOutcome(member_id, True, (), None)
        for new, member_id in zip(fresh, ids, strict=True)
    }


#: Where a new member came from: (account id, source channel, source store, source campaign).
Origin = tuple[int | None, str | None, str | None, str | None]


async def _write(
    driver: Any, ctx: ResolutionContext, fresh: Sequence[_New], now: datetime, origin: Origin
) -> list[int]:
    ids = sorted(r[0] for r in await driver.fetch(_NEW_IDS, len(fresh)))
    rows = _NewRows(now)
    for member_id, new in zip(ids, fresh, strict=True):
        p = new.prepared
        rows.add(ctx, member_id, origin, p.claims, p.masked, p.mobile, p.profile)
    await _copy_new_members(driver, rows)
    return ids


_PROFILE_FIELDS = (("name", 100), ("province", 64), ("city", 64))
_IDENTITY_KEY = operator.itemgetter(0, 1)


@dataclass(slots=True)
class _NewRows:
    """The rows of new members as resolution writes them (``_new_member_rows``, ``_new_identity_rows`` and the
    ``member_created`` event of :mod:`tongcrm.identity.service`), all made at ``now``: members as tuples in the
    order of :data:`_MEMBER_COLUMNS` (``profile_meta`` a dict), identities in that of :data:`_IDENTITY_COLUMNS`,
    and the events' payloads. Tuples, not dicts by column name: the ``COPY`` takes them as they are, where a
    dict per row and then its values taken out again was a third of the writer's CPU per new member (#22).

    Every new member of a page is made at ``now``, so its ``profile_meta`` depends only on which of its profile
    fields are set: the members with the same fields share one dict (made once, never changed after), and the
    ``COPY`` encodes it once (:func:`_copy_new_members`)."""

    now: datetime
    members: list[tuple[Any, ...]] = field(default_factory=list)
    identities: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stamp: str = ""
    #: ``profile_meta`` by the names it covers (the profile fields set, then ``mobile_enc`` when a mobile is)
    metas: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stamp = self.now.isoformat()

    def add(
        self,
        ctx: ResolutionContext,
        member_id: int,
        origin: Origin,
        claims: Sequence[Any],
        masked: str | None,
        mobile: Any = None,
        given: Profile = _NO_PROFILE,
    ) -> None:
        """One new member from ``origin``: ``claims`` its claims prepared, ``masked`` the masked index of its
        (first) mobile, ``mobile`` that claim when the caller has it already, ``given`` its profile (name,
        province, city) as the row has it."""
        now = self.now
        profile: dict[str, str] = {}
        if given is not _NO_PROFILE:
            for (name, width), raw in zip(_PROFILE_FIELDS, given, strict=True):
                if raw and (raw := raw.strip()):
                    profile[name] = raw[:width]
        mobile_enc = e164 = None
        if masked is not None:
            if mobile is None:
                mobile = next(c for c in claims if c.kind == MOBILE and c.e164 is not None)
            mobile_enc, e164 = mobile.value_enc, mobile.e164
        covered = (*profile, "mobile_enc") if masked is not None else tuple(profile)
        meta = self.metas.get(covered)
        if meta is None:
            meta = self.metas[covered] = {
                name: {"at": self.stamp, "verified": name == "mobile_enc"} for name in covered
            }
        self.members.append(
            (
                member_id, "active", 1, now, now, profile.get("name"), profile.get("province"), profile.get("city"),
                mobile_enc, masked, meta, origin[1], origin[2], origin[3], "prospect",
            )
        )  # fmt: skip
        self.identities.extend(
            (
                c.kind, c.value, member_id, c.value_enc,
                None if c.e164 is None else masked if c.e164 == e164 else masked_index(ctx.vault, c.e164),
                origin[0], c.evidence, now, now,
            )
            for c in claims
        )  # fmt: skip
        self.events.append(("member_created", {"member_id": member_id, "source": origin[1] or "unknown"}))

    def sorted_identities(self) -> list[tuple[Any, ...]]:
        """In ``(kind, value)`` order, as resolution inserts them: concurrent writers wait on each other in that
        order instead of deadlocking."""
        return sorted(self.identities, key=_IDENTITY_KEY)


_META_AT = _MEMBER_COLUMNS.index("profile_meta")


async def _copy_new_members(driver: Any, rows: _NewRows) -> None:
    """PostgreSQL: the new members, their identities and their events by ``COPY``; a unique violation of an
    identity (another transaction stored it first) is a :class:`StoredMeanwhile`."""
    # the members of a page share a few ``profile_meta`` dicts (see :class:`_NewRows`): each encoded once
    texts = {id(meta): json_text(meta) for meta in rows.metas.values()}
    members = [(*row[:_META_AT], texts[id(row[_META_AT])], *row[_META_AT + 1 :]) for row in rows.members]
    await driver.copy_records_to_table("members", records=members, columns=_MEMBER_COLUMNS)
    await copy_rows(driver, "identities", rows.sorted_identities(), _IDENTITY_COLUMNS)
    await driver.copy_records_to_table(
        "outbox_events",
        records=[(name, json_text(payload), rows.now) for name, payload in rows.events],
        columns=("name", "payload", "occurred_at"),
    )


# -------------------------------------------------------------------------------------------------------------
# historical orders

#: Each claim of a page's orders that is stored, with its live member: one fixed text, arrays as parameters.
_ORDER_LOOKUP = (
    "SELECT t.n, t.k, t.v, i.id, m.id, m.status, m.created_at "
    "FROM unnest($1::varchar[], $2::varchar[], $3::int[]) AS t(k, v, n) "
    "JOIN identities AS i ON i.kind = t.k AND i.value = t.v JOIN members AS m ON m.id = i.member_id"
)
#: Ids for a page's orders, drawn from their sequence, and the ``last_seen_at`` of the identities their claims
#: name moved (a data-modifying CTE runs whether or not the query reads it).
_NEW_ORDER_IDS = (
    "WITH touched AS (UPDATE identities SET last_seen_at = $3 WHERE id = ANY($2::bigint[])) "
    "SELECT nextval(pg_get_serial_sequence('orders', 'id')) FROM generate_series(1, $1)"
)
_ORDER_COLUMNS = (
    "id", "account_id", "external_id", "member_id", "origin_member_id", "channel", "status", "platform_status",
    "store_code", "total_fen", "paid_fen", "refunded_fen", "post_fee_fen", "discount_fen", "placed_at", "paid_at",
    "shipped_at", "completed_at", "shipments", "modified_at", "ingested_at", "updated_at",
)  # fmt: skip
_LINE_COLUMNS = (
    "order_id", "external_id", "sku", "category", "title", "quantity", "unit_price_fen", "amount_fen",
    "refunded_fen", "refund_status",
)  # fmt: skip


@dataclass(slots=True)
class OrdersWritten:
    """What :func:`write_orders` stored: the orders by external id, their members (for tiers), and how many
    members it created for buyers not known yet."""

    external_ids: set[str]
    member_ids: set[int]
    members_created: int = 0


def _buyer(
    ctx: ResolutionContext,
    order: ImportedOrder,
    claims: Sequence[Any],
    found: dict[tuple[str, str], _Found],
    core_policy: bool,
) -> int | bool | None:
    """The member the order's claims already name, as resolution would decide it; False when resolution must
    decide (a claim not stored yet, several members, a profile to fill, a policy that says otherwise).

    ``core_policy``: the core policy alone decides (:meth:`tongcrm.plugin.host.PluginHost.resolution_is_core`).
    For claims that are all stored and name one live member it attaches to that member — strong claims name it,
    or every claim is known and it is the newest (the only) member named — so it is not asked once per order."""
    hits: list[tuple[Any, _Found]] = []
    member: int | None = None
    for c in claims:
        hit = None
        for v in (c.value, *c.lookup):
            hit = found.get((c.kind, v))
            if hit is not None:
                break
        if hit is None or hit.status != "active" or (member is not None and hit.member_id != member):
            return False
        member = hit.member_id
        hits.append((c, hit))
    if member is None:
        return False
    if core_policy:
        return member
    matches = [MemberMatch(h.member_id, c.kind, h.value, c.strong, h.member_created_at) for c, h in hits]
    hook_claims = [IdentityClaim(c.kind, h.value, c.evidence) for c, h in hits]
    try:
        decision = ctx.host.resolve_member(hook_claims, matches) or default_decision(hook_claims, matches)
    except Exception:
        return False
    if decision.create or decision.merge_from or decision.member_id != member:
        return False
    return member


@dataclass(frozen=True, slots=True)
class _Newcomer:
    """A buyer none of whose claims is stored, who resolution would create: the claims (prepared) of its first
    order of the page, and where its orders stand in :attr:`_Chosen.orders`."""

    order: ImportedOrder
    claims: list[Any]
    positions: list[int]


@dataclass(frozen=True, slots=True)
class _Chosen:
    """The orders of a page :func:`write_orders` stores set-based (with their members: an order of a newcomer
    holds ``-1 - k``, the ``k``-th of ``newcomers``, until its member is written), the identities their claims
    touched, and the new buyers to create first."""

    account_id: int
    channel: str
    orders: list[tuple[ImportedOrder, int | None]]
    touched: list[int]
    now: datetime
    newcomers: list[_Newcomer]

    def new_rows(self, ctx: ResolutionContext, ids: Sequence[int]) -> _NewRows:
        """The newcomers' rows under the member ids ``ids``, and their orders given those members."""
        rows = _NewRows(self.now)
        for member_id, new in zip(ids, self.newcomers, strict=True):
            origin = (self.account_id, self.channel, new.order.store_code, None)
            mobile = next((c for c in new.claims if c.kind == MOBILE and c.e164 is not None), None)
            masked = None if mobile is None else masked_index(ctx.vault, mobile.e164)
            rows.add(ctx, member_id, origin, new.claims, masked, mobile)
            for position in new.positions:
                self.orders[position] = (self.orders[position][0], member_id)
        return rows


@dataclass(frozen=True, slots=True)
class _Found:
    identity_id: int
    value: str
    member_id: int
    status: str
    member_created_at: datetime


async def write_orders(
    session: AsyncSession,
    ctx: ResolutionContext,
    account_id: int,
    channel: str,
    orders: Sequence[ImportedOrder],
    claims_of: Sequence[list[Any] | None] | None = None,
) -> OrdersWritten:
    """Store the new orders whose buyer is already known (or who have none), set-based; the caller applies the
    rest with :func:`tongcrm.ingest.apply.apply_orders_page`. Imported history only: the orders earn no points
    and emit no events (both databases, in the caller's transaction). ``claims_of`` gives :func:`prepare_order` of
    each order when the caller made them beforehand (the bulk import does, in its reading thread)."""
    if claims_of is None:
        kinds = ctx.host.identity_kinds()
        claims_of = [prepare_order(ctx, kinds, order) for order in orders]
    prepared = [
        (order, claims) for order, claims in zip(orders, claims_of, strict=True) if claims is not None
    ]
    out = OrdersWritten(set(), set())
    if not prepared:
        return out
    sqlite = dialect_name(session) == "sqlite"
    found = await (_found_sqlite if sqlite else _found_postgresql)(session, prepared)
    now = ctx.clock()
    chosen: list[tuple[ImportedOrder, int | None]] = []
    touched: set[int] = set()
    core_policy = ctx.host.resolution_is_core()
    unknown: list[tuple[ImportedOrder, list[Any]]] = []  # buyers resolution must decide
    for order, claims in prepared:
        member: int | None = None
        if claims:
            buyer = _buyer(ctx, order, claims, found, core_policy)
            if buyer is False:
                unknown.append((order, claims))
                continue
            member = cast(int, buyer)
            touched.update(
                found[(c.kind, v)].identity_id
                for c in claims
                for v in (c.value, *c.lookup)
                if (c.kind, v) in found
            )
        chosen.append((order, member))
    newcomers: list[_Newcomer] = []
    # an order whose claims could not be prepared (a profile to fill, a bad claim) may share one with a
    # newcomer: resolution then decides them together, so the page creates none itself
    if unknown and all(
        claims is not None or not order.claims for order, claims in zip(orders, claims_of, strict=True)
    ):
        newcomers = _newcomers(ctx, unknown, found, core_policy, chosen)
    if not chosen:
        return out
    page = _Chosen(account_id, channel, chosen, sorted(touched), now, newcomers)
    if not await (_write_orders_sqlite if sqlite else _write_orders_postgresql)(session, ctx, page):
        log.info(
            "an order or identity of the import page was stored meanwhile; applying the page through ingest"
        )
        return out
    for order, member in chosen:
        out.external_ids.add(order.external_id)
        if member is not None:
            out.member_ids.add(member)
    out.members_created = len(newcomers)
    return out


def _newcomers(
    ctx: ResolutionContext,
    unknown: Sequence[tuple[ImportedOrder, list[Any]]],
    found: dict[tuple[str, str], _Found],
    core_policy: bool,
    chosen: list[tuple[ImportedOrder, int | None]],
) -> list[_Newcomer]:
    """The buyers of ``unknown`` (orders resolution must decide) that resolution would create, each with its
    orders appended to ``chosen``. A buyer qualifies when none of its order's claims is stored, every other
    order of the page that shares one of them has exactly the same claims (so they meet nobody else), and the
    policy, asked with no matches as resolution asks it, creates a member. Its first order creates it; the
    others of the page then hold only claims that are stored and name it alone, which the core policy attaches
    to that member (a plugin's policy is asked by ingest for them: they are left out). Every other order goes
    through ingest, which merges rather than duplicates."""
    groups: dict[frozenset[tuple[str, str]], list[tuple[ImportedOrder, list[Any]]]] = {}
    uses: Counter[tuple[str, str]] = Counter()
    for order, claims in unknown:
        keys = frozenset((c.kind, v) for c in claims for v in (c.value, *c.lookup))
        group = groups.get(keys)
        if group is None:
            groups[keys] = group = []
            uses.update(keys)
            if any(key in found for key in keys):
                uses.update(keys)  # partly known: resolution weighs it, and so every order sharing a claim
        group.append((order, claims))
    out: list[_Newcomer] = []
    for keys, group in groups.items():
        if any(uses[key] > 1 for key in keys):
            continue
        first, claims = group[0]
        if not core_policy and not _creates(ctx, claims):  # the core policy creates for claims none stored
            continue
        members = group if core_policy else group[:1]
        position = len(chosen)
        chosen.extend((order, -1 - len(out)) for order, _ in members)
        out.append(_Newcomer(first, claims, list(range(position, position + len(members)))))
    return out


async def _found_postgresql(
    session: AsyncSession, prepared: Sequence[tuple[ImportedOrder, list[Any]]]
) -> dict[tuple[str, str], _Found]:
    """Each claim value of the page's orders that is stored, with its identity and live member: one fixed text,
    the claims as array parameters."""
    driver = await driver_of(session)
    kinds_arg, values_arg, rows_arg = [], [], []
    for n, (_, claims) in enumerate(prepared):
        for c in claims:
            for v in {c.value, *c.lookup}:
                kinds_arg.append(c.kind)
                values_arg.append(v)
                rows_arg.append(n)
    found: dict[tuple[str, str], _Found] = {}
    if kinds_arg:
        for _n, kind, value, identity_id, member_id, status, created in await driver.fetch(
            _ORDER_LOOKUP, kinds_arg, values_arg, rows_arg
        ):
            found[(kind, value)] = _Found(identity_id, value, member_id, status, created)
    return found


async def _found_sqlite(
    session: AsyncSession, prepared: Sequence[tuple[ImportedOrder, list[Any]]]
) -> dict[tuple[str, str], _Found]:
    """:func:`_found_postgresql` on SQLite: one statement per identity kind of the page (a page holds one or a
    few), each probing the ``(kind, value)`` index with a JSON array of the values."""
    values: dict[str, set[str]] = {}
    for _, claims in prepared:
        for c in claims:
            values.setdefault(c.kind, set()).update((c.value, *c.lookup))
    found: dict[tuple[str, str], _Found] = {}
    for kind, of_kind in values.items():
        for row in await direct.rows(session, _sqlite_lookup(), {"kind": kind, "values": sorted(of_kind)}):
            found[(kind, row.value)] = _Found(row.id, row.value, row.member_id, row.status, row.created_at)
    return found


@functools.cache
def _sqlite_lookup() -> sa.Select[Any]:
    """The stored identities of one kind among a JSON array of values, with their member (SQLite)."""
    i, m = cast(sa.Table, Identity.__table__), cast(sa.Table, Member.__table__)
    return (
        sa.select(i.c.value, i.c.id, m.c.id.label("member_id"), m.c.status, m.c.created_at)
        .join_from(i, m, m.c.id == i.c.member_id)
        .where(i.c.kind == sa.bindparam("kind", type_=i.c.kind.type), one_of("sqlite", i.c.value, "values"))
    )


async def driver_of(session: AsyncSession) -> Any:
    """The asyncpg connection under the session's transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


async def _write_orders_postgresql(session: AsyncSession, ctx: ResolutionContext, page: _Chosen) -> bool:
    """:func:`_write_orders` under a savepoint of its own, on the connection the writes use, after the page's new
    buyers (:func:`_copy_new_members`, under ids drawn from the members' sequence); False (and nothing written)
    when an order or a new identity was stored meanwhile."""
    driver = await driver_of(session)
    await driver.execute("SAVEPOINT bulk_staged_orders")
    try:
        if page.newcomers:
            ids = sorted(r[0] for r in await driver.fetch(_NEW_IDS, len(page.newcomers)))
            await _copy_new_members(driver, page.new_rows(ctx, ids))
        await _write_orders(driver, page)
    except StoredMeanwhile:
        await driver.execute("ROLLBACK TO SAVEPOINT bulk_staged_orders")
        return False
    # not released: the savepoint ends with the page's transaction (a RELEASE was one round trip more a page)
    return True


_ORDER_TABLE = cast(sa.Table, Order.__table__)
_LINE_TABLE = cast(sa.Table, OrderLine.__table__)


def _sqlite_insert(table: str, columns: Sequence[str]) -> str:
    """A plain positional ``INSERT`` of ``columns`` into ``table`` (module constants), for ``executemany``."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608


_SQLITE_INSERT_ORDER = _sqlite_insert("orders", _ORDER_COLUMNS)
_SQLITE_INSERT_LINE = _sqlite_insert("order_lines", _LINE_COLUMNS)
_MEMBER_TABLE = cast(sa.Table, Member.__table__)
_IDENTITY_TABLE = cast(sa.Table, Identity.__table__)
_SQLITE_INSERT_MEMBER = _sqlite_insert("members", _MEMBER_COLUMNS)
_SQLITE_INSERT_IDENTITY = _sqlite_insert("identities", _IDENTITY_COLUMNS)
_SQLITE_UNIQUE = "SQLITE_CONSTRAINT_UNIQUE"


@functools.cache
def _sqlite_touch() -> sa.Update:
    i = cast(sa.Table, Identity.__table__)
    return (
        sa.update(i)
        .where(one_of("sqlite", i.c.id, "ids"))
        .values(last_seen_at=sa.bindparam("now", type_=i.c.last_seen_at.type))
    )


async def _write_orders_sqlite(session: AsyncSession, ctx: ResolutionContext, page: _Chosen) -> bool:
    """SQLite: the page's new buyers (members, identities, ``member_created`` events), then the orders and their
    lines inserted as ingest would store new ones (its row builders, the values converted by the columns' SQLite
    bind processors), members and orders under ids after the largest — the transaction took the write lock at its
    start (``BEGIN IMMEDIATE``), so no other writer draws one meanwhile — and under a savepoint; False (and
    nothing written) when an order or a new identity was stored meanwhile (their unique keys)."""
    try:
        async with session.begin_nested():
            conn = await session.connection()
            if page.newcomers:
                top = (await conn.exec_driver_sql("SELECT max(id) FROM members")).scalar() or 0
                new = page.new_rows(ctx, range(top + 1, top + 1 + len(page.newcomers)))
                await conn.exec_driver_sql(
                    _SQLITE_INSERT_MEMBER, sqlite_tuples(_MEMBER_TABLE, _MEMBER_COLUMNS, new.members)
                )
                await conn.exec_driver_sql(
                    _SQLITE_INSERT_IDENTITY,
                    sqlite_tuples(_IDENTITY_TABLE, _IDENTITY_COLUMNS, new.sorted_identities()),
                )
                step = outbox.emit_step("sqlite", new.events, now=page.now)
                assert step is not None
                await direct.rows(session, *step)
            top = (await conn.exec_driver_sql("SELECT max(id) FROM orders")).scalar() or 0
            orders, lines = _order_rows(page, range(top + 1, top + 1 + len(page.orders)), _NO_SHIPMENTS)
            await conn.exec_driver_sql(
                _SQLITE_INSERT_ORDER, sqlite_tuples(_ORDER_TABLE, _ORDER_COLUMNS, orders)
            )
            if lines:
                await conn.exec_driver_sql(
                    _SQLITE_INSERT_LINE, sqlite_tuples(_LINE_TABLE, _LINE_COLUMNS, lines)
                )
    except sa.exc.IntegrityError as exc:
        if getattr(exc.orig, "sqlite_errorname", None) != _SQLITE_UNIQUE:
            raise
        return False
    if page.touched:
        await direct.rows(session, _sqlite_touch(), {"ids": page.touched, "now": page.now})
    return True


async def _write_orders(driver: Any, page: _Chosen) -> None:
    """The orders by ``COPY`` under ids drawn from their sequence — in the statement that moves the claimed
    identities' ``last_seen_at``, one round trip for both —, then their lines. The page's keys were new, so the
    orders should be too; one stored meanwhile (an overlapping import of the same account) stops the ``COPY`` on
    the ``(account_id, external_id)`` unique constraint."""
    ids = sorted(r[0] for r in await driver.fetch(_NEW_ORDER_IDS, len(page.orders), page.touched, page.now))
    rows, lines = _order_rows(page, ids, "[]")
    await copy_rows(driver, "orders", rows, _ORDER_COLUMNS)
    if lines:
        await copy_rows(driver, "order_lines", lines, _LINE_COLUMNS)


#: SQLite: an imported order's ``shipments`` (none), converted by the column's bind processor like any value.
_NO_SHIPMENTS: list[Any] = []


def _order_rows(
    page: _Chosen, ids: Sequence[int], shipments: Any
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The page's orders under ``ids`` (in the order of :data:`_ORDER_COLUMNS`) and their lines (in that of
    :data:`_LINE_COLUMNS`), stored as ingest stores a new order (``tongcrm.ingest.apply.order_row``: no status
    held before, so the order's own); ``shipments`` the column's value (none shipped)."""
    account_id, channel, now = page.account_id, page.channel, page.now
    rows: list[tuple[Any, ...]] = []
    lines: list[tuple[Any, ...]] = []
    for order_id, (order, member) in zip(ids, page.orders, strict=True):
        rows.append(
            (
                order_id, account_id, order.external_id, member, member, channel, order.status.value,
                order.platform_status, order.store_code, order.total_fen, order.paid_fen,
                sum(line.refunded_fen for line in order.lines), order.post_fee_fen, order.discount_fen,
                order.created_at, order.paid_at, order.shipped_at, order.completed_at, shipments, order.modified_at,
                now, now,
            )
        )  # fmt: skip
        lines.extend(
            (
                order_id, line.external_id, line.sku, line.category, line.title[:300], line.quantity,
                line.unit_price_fen, line.amount_fen, line.refunded_fen, line.refund_status.value,
            )
            for line in order.lines
        )  # fmt: skip
    return rows, lines


async def copy_rows(
    driver: Any, table: str, records: Sequence[tuple[Any, ...]], columns: Sequence[str]
) -> None:
    """``COPY`` into ``table``; a unique violation (another transaction stored a row first) is a :class:`StoredMeanwhile`."""
    try:
        await driver.copy_records_to_table(table, records=records, columns=columns)
    except Exception as exc:
        if getattr(exc, "sqlstate", None) == _UNIQUE_VIOLATION:
            raise StoredMeanwhile() from None
        raise
