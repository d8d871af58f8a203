"""Identity resolution: which member does a set of identity claims belong to?

Every ingest path (channel sync, push, POS enrolment, the admin API) calls :func:`resolve_many`. For each claim
set it looks the claims up, asks the ``resolve_member`` policy (core's default runs last: attach to the member a
strong claim names, create one when none matches, merge when strong claims name several), then writes the
result. The whole batch costs one lookup query plus a fixed handful of bulk writes, whatever its size.

Resolution runs inside the caller's transaction and never commits. A claim set that can never resolve (an
unknown kind, an invalid mobile) gets an error in its :class:`ResolveOutcome` and leaves the rest of the batch
alone; the caller quarantines that record.

Concurrency: two transactions that both try to create the member for the same new claim meet on the unique
``(kind, value)`` of identities. The loser notices that its identity insert did nothing, deletes the members and
identities it had just inserted (a first attempt takes no savepoint: two round trips on every page for a race
almost never lost; one that merges members does), and resolves the batch again under a savepoint, now seeing
the winner's member.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit.service import SYSTEM, Actor
from tongcrm.crypto import Vault
from tongcrm.db import dialect, direct
from tongcrm.errors import Unprocessable
from tongcrm.identity.models import Identity, Merge
from tongcrm.identity.plugin import core_choice, default_decision
from tongcrm.jobs import outbox
from tongcrm.logging import get_logger
from tongcrm.members.masked import masked_index, mobile_columns
from tongcrm.members.models import Member
from tongcrm.members.phone import MOBILE_CONTEXT, InvalidMobile, mobile_lookup, normalise_mobile
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import (
    BuyerProfile,
    IdentityClaim,
    IdentityKindSpec,
    MemberMatch,
    ResolutionDecision,
)

log = get_logger(__name__)

_MEMBERS = cast(sa.Table, Member.__table__)
_IDENTITIES = cast(sa.Table, Identity.__table__)

MOBILE = "mobile"
#: How often a batch is resolved again after losing a race for a new identity.
MAX_ATTEMPTS = 5
#: A claim seen again moves its identity's ``last_seen_at`` only when what is stored is at least this old: the
#: time says when the buyer was last seen to within this, as a console session's does. Every order of a known
#: buyer rewrote the row before — 13,700 locked updates over a 20,000-order first sync, a fifth of identity
#: resolution's write on the server (issue #22, ingestpg18).
LAST_SEEN_EVERY = timedelta(hours=1)
_CHUNK = 1000


class ClaimError(Unprocessable):
    """A claim set that can never resolve as it is. ``code`` is stable for callers to branch on."""

    code = "invalid_claim"


class UnknownIdentityKind(ClaimError):
    code = "unknown_identity_kind"


class InvalidClaimValue(ClaimError):
    code = "invalid_claim_value"


class PolicyError(ClaimError):
    code = "policy_error"


@dataclass(frozen=True, slots=True)
class ClaimSet:
    claims: tuple[IdentityClaim, ...]
    account_id: int | None = None
    profile: BuyerProfile | None = None
    source_channel: str | None = None
    source_store: str | None = None
    source_campaign: str | None = None


@dataclass(frozen=True, slots=True)
class ResolutionContext:
    host: PluginHost
    vault: Vault
    clock: Callable[[], datetime]
    actor: str = "system"
    #: The programme's time zone, for what merge listeners date in business days (None: the default zone).
    tz: ZoneInfo | None = None


@dataclass(frozen=True, slots=True)
class ResolveOutcome:
    member_id: int | None
    created: bool
    merged_from: tuple[int, ...]
    error: str | None
    #: The :class:`ClaimError` subclass' ``code`` when ``error`` is set.
    error_code: str | None = None
    #: Whether the member has a referrer, as resolution read it (a member it created has none); None when not
    #: known (a merge took place in the batch). Lets a page skip the referral rule's read.
    referred: bool | None = None


class LostRace(Exception):
    """Another transaction created an identity this batch meant to create: resolve the batch again. Escapes
    :func:`resolve_many` only after ``MAX_ATTEMPTS`` lost races in a row; the caller may redo its unit of work."""


#: Not frozen: every claim a sync or an import prepares is one of these, and a frozen dataclass's ``__init__`` sets
#: each of its seven fields through ``object.__setattr__`` (1.4 µs a claim against 0.3, #22); nothing changes one
#: after it is made, and none is hashed.
@dataclass(slots=True)
class _Claim:
    kind: str
    strong: bool
    #: The value to store (for mobile: the blind index under the current key).
    value: str
    #: Every value it may already be stored under (for mobile: one blind index per configured key).
    lookup: tuple[str, ...]
    value_enc: str | None
    evidence: str
    #: the number itself (mobile claims only), for the member's masked-mobile index
    e164: str | None = None


@dataclass(slots=True)
class _Prepared:
    index: int
    claim_set: ClaimSet
    claims: list[_Claim]
    mobile: _Claim | None  # the (first) mobile claim, for a new member's profile


@dataclass(slots=True)
class _Known:
    """What the lookup found for one stored identity."""

    identity_id: int
    kind: str
    value: str
    member_id: int
    member_created_at: datetime
    profile: dict[str, Any]
    #: Whether the member read has a referrer (None: the identity named a tombstone, followed since).
    referred: bool | None = None
    #: The identity's ``last_seen_at`` as read (see :data:`LAST_SEEN_EVERY`).
    last_seen_at: datetime | None = None


class _LazyMeta(Mapping[str, Any]):
    """A member's ``profile_meta`` as the lookup read it (JSON text, or what the driver decoded), parsed on
    first use: a page reads it for every known member and needs it only for the few whose blank fields it
    fills."""

    __slots__ = ("_parsed", "_raw")

    def __init__(self, raw: str | Mapping[str, Any] | None) -> None:
        self._raw = raw
        self._parsed: Mapping[str, Any] | None = None

    def _meta(self) -> Mapping[str, Any]:
        if self._parsed is None:
            raw = self._raw
            self._parsed = (json.loads(raw) if isinstance(raw, str) else raw) or {}
        return self._parsed

    def __getitem__(self, key: str) -> Any:
        return self._meta()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._meta())

    def __len__(self) -> int:
        return len(self._meta())


@dataclass(slots=True)
class _Plan:
    """The in-memory outcome of a batch before it is written. New members are negative placeholders."""

    owner: dict[tuple[str, str], int] = field(default_factory=dict)
    alias: dict[int, int] = field(default_factory=dict)
    created_at: dict[int, datetime] = field(default_factory=dict)
    new_members: dict[int, _Prepared] = field(default_factory=dict)
    new_identities: dict[tuple[str, str], tuple[_Claim, int | None, int]] = field(default_factory=dict)
    touched: set[int] = field(default_factory=set)
    merges: list[tuple[int, int, list[dict[str, Any]]]] = field(default_factory=list)
    outcomes: dict[int, tuple[int, bool, list[int]]] = field(default_factory=dict)
    fills: dict[int, list[_Prepared]] = field(default_factory=dict)
    placeholder_ids: dict[int, int] = field(default_factory=dict)

    def find(self, member: int) -> int:
        while member in self.alias:
            member = self.alias[member]
        return member


# -------------------------------------------------------------------------------------------------------------
# preparing claims


def mobile_identity_value(vault: Vault, raw: str) -> tuple[str, tuple[str, ...], str]:
    """(stored value, lookup values, E.164) for a raw mobile: the blind index under the current key, and under
    every configured key for lookups across a key rotation. Raises :class:`InvalidMobile`."""
    e164 = normalise_mobile(raw)
    # the current key comes first among every key's indexes: the stored value is the first lookup value
    lookup = mobile_lookup(vault, e164)
    return lookup[0], lookup, e164


def prepare_claim(
    ctx: ResolutionContext, kinds: dict[str, IdentityKindSpec], claim: IdentityClaim, *, sealed: bool = True
) -> _Claim:
    """``sealed=False``: without the mobile's ciphertext (``value_enc`` None), for a caller that only compares
    the claim with what is stored (a known buyer's sale) and writes no identity from it."""
    strong, value, lookup, value_enc, e164 = claim_value(ctx, kinds, claim.kind, claim.value, sealed=sealed)
    return _Claim(claim.kind, strong, value, lookup, value_enc, claim.evidence[:2000], e164)


def prepare_claim_value(
    ctx: ResolutionContext, kinds: dict[str, IdentityKindSpec], kind: str, raw: str, evidence: str
) -> _Claim:
    """:func:`prepare_claim` of a claim given as its parts (``evidence`` at most 2,000 characters): the bulk
    import prepares a new member's claims from a row's ``(kind, value)`` pairs without an :class:`IdentityClaim`
    per claim, a frozen plugin type made only for the rows resolution takes (#22). Raises :class:`ClaimError`."""
    strong, value, lookup, value_enc, e164 = claim_value(ctx, kinds, kind, raw)
    return _Claim(kind, strong, value, lookup, value_enc, evidence, e164)


def claim_value(
    ctx: ResolutionContext, kinds: dict[str, IdentityKindSpec], kind: str, raw: str, *, sealed: bool = True
) -> tuple[bool, str, tuple[str, ...], str | None, str | None]:
    """What a claim of ``kind`` with the value ``raw`` is stored and looked up as: (strong, value to store,
    values it may be stored under, value encrypted, E.164 of a mobile). Raises :class:`ClaimError`. Apart from
    :func:`prepare_claim` so that the bulk import prepares an order's claims without an ``IdentityClaim`` and
    its evidence per row (#22)."""
    spec = kinds.get(kind)
    if spec is None:
        known = ", ".join(sorted(kinds)) or "none"
        raise UnknownIdentityKind(
            f"unknown identity kind {kind!r} (known kinds: {known})",
            params={"kind": kind[:40], "known": "、".join(sorted(kinds))},
        )
    if kind == MOBILE:
        try:
            value, lookup, e164 = mobile_identity_value(ctx.vault, raw)
        except InvalidMobile as exc:
            raise InvalidClaimValue(f"mobile claim: {exc.message}", params={"kind": kind}) from None
        sealed_value = ctx.vault.encrypt(e164, context=MOBILE_CONTEXT) if sealed else None
        return spec.strong, value, lookup, sealed_value, e164
    value = raw.strip()
    if len(value) > 200:
        raise InvalidClaimValue(f"{kind} claim is longer than 200 characters", params={"kind": kind})
    return spec.strong, value, (value,), None, None


def _prepare(
    ctx: ResolutionContext, kinds: dict[str, IdentityKindSpec], index: int, cs: ClaimSet
) -> _Prepared:
    if not cs.claims:
        raise ClaimError("a claim set needs at least one identity claim")
    claims: list[_Claim] = []
    seen: set[tuple[str, str]] = set()
    mobile: _Claim | None = None
    for claim in cs.claims:
        prepared = prepare_claim(ctx, kinds, claim)
        if (prepared.kind, prepared.value) in seen:
            continue
        seen.add((prepared.kind, prepared.value))
        if prepared.kind == MOBILE and mobile is None:
            mobile = prepared
        claims.append(prepared)
    return _Prepared(index, cs, claims, mobile)


# -------------------------------------------------------------------------------------------------------------
# the entry point


async def resolve_many(
    session: AsyncSession, ctx: ResolutionContext, claim_sets: Sequence[ClaimSet]
) -> list[ResolveOutcome]:
    """Resolve each claim set to a member, in order (a later set sees what earlier ones created or merged).

    Runs in the caller's transaction; emits ``member_created`` and ``members_merged``. Idempotent: resolving
    the same claim sets again returns the same members and creates nothing.
    """
    kinds = ctx.host.identity_kinds()
    outcomes: list[ResolveOutcome | None] = [None] * len(claim_sets)
    prepared: list[_Prepared] = []
    for i, cs in enumerate(claim_sets):
        try:
            prepared.append(_prepare(ctx, kinds, i, cs))
        except ClaimError as exc:
            outcomes[i] = ResolveOutcome(None, False, (), exc.message, exc.code)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            # The first attempt takes no savepoint (two round trips on every page, for a race almost never
            # lost): it undoes its own few writes when it loses. Later attempts run under a savepoint.
            results = await _resolve_prepared(session, ctx, prepared, optimistic=attempt == 1)
            break
        except LostRace:
            log.info("identity resolution lost a race; resolving the batch again", attempt=attempt)
            if attempt == MAX_ATTEMPTS:
                raise
    for i, outcome in results.items():
        outcomes[i] = outcome
    return [
        o if o is not None else ResolveOutcome(None, False, (), "not resolved", "internal") for o in outcomes
    ]


async def resolve(session: AsyncSession, ctx: ResolutionContext, claim_set: ClaimSet) -> ResolveOutcome:
    """One claim set; raises the :class:`ClaimError` a batch would have reported."""
    outcome = (await resolve_many(session, ctx, [claim_set]))[0]
    if outcome.error is not None:
        cls = {c.code: c for c in (UnknownIdentityKind, InvalidClaimValue, PolicyError)}.get(
            outcome.error_code or "", ClaimError
        )
        raise cls(outcome.error)
    return outcome


@functools.cache
def _lookup_statement(dialect_name: str, kinds: tuple[str, ...]) -> Any:
    """The identities of the given kinds with values in the lists bound as ``values_0``, ``values_1``…, and
    their members: one text per set of kinds whatever the number of values (:func:`tongcrm.db.dialect.one_of`).

    ``kind = 'x' AND value IN (list)`` per kind, not ``(kind, value) IN (…)``: SQLite does not use the
    (kind, value) index for a row-value IN list and scanned every identity (0.8 s a batch at a million members).
    """
    m = _MEMBERS.c
    i = _IDENTITIES.c
    return (
        sa.select(
            i.id, i.kind, i.value, i.member_id, i.last_seen_at, m.status, m.created_at, m.version, m.referrer_id,
            m.name, m.province, m.city, m.mobile_enc, m.mobile_masked_index,
            # as text, parsed only where it is needed (:class:`_LazyMeta`)
            sa.type_coerce(m.profile_meta, sa.Text()).label("profile_meta"),
        )
        .join_from(_IDENTITIES, _MEMBERS, i.member_id == m.id)
        .where(
            sa.or_(
                *(
                    sa.and_(i.kind == kind, dialect.one_of(dialect_name, i.value, f"values_{n}"))
                    for n, kind in enumerate(kinds)
                )
            )
        )
    )  # fmt: skip


@functools.cache
def _touch_statement(dialect_name: str) -> Any:
    """``last_seen_at = :now`` for the identities bound as the list ``ids``; fixed text."""
    return (
        sa.update(_IDENTITIES)
        .where(dialect.one_of(dialect_name, _IDENTITIES.c.id, "ids"))
        .values(last_seen_at=sa.bindparam("now"))
    )


_MEMBER_COLUMNS = (
    "status", "version", "created_at", "updated_at", "name", "province", "city", "mobile_enc",
    "mobile_masked_index", "profile_meta", "source_channel", "source_store", "source_campaign", "lifecycle_stage",
)  # fmt: skip
_IDENTITY_COLUMNS = (
    "kind", "value", "member_id", "value_enc", "masked_index", "account_id", "evidence", "first_seen_at",
    "last_seen_at",
)  # fmt: skip


@functools.cache
def _new_members_statement(dialect_name: str, size: int | None = None) -> Any:
    """New members, one fixed text whatever their number (:func:`tongcrm.db.dialect.insert_rows`; on SQLite
    one per ``size``)."""
    stmt = dialect.insert_rows(dialect_name, _MEMBERS, _MEMBER_COLUMNS, in_order=True, size=size)
    return stmt.returning(_MEMBERS.c.id)


@functools.cache
def _new_identities_statement(dialect_name: str, size: int | None = None) -> Any:
    """New identities; a conflict returns no row (another transaction won the race). Fixed text."""
    stmt = dialect.insert_rows(dialect_name, _IDENTITIES, _IDENTITY_COLUMNS, size=size)
    return stmt.on_conflict_do_nothing(index_elements=["kind", "value"]).returning(_IDENTITIES.c.id)


async def _lookup(session: AsyncSession, prepared: Sequence[_Prepared]) -> dict[tuple[str, str], _Known]:
    pairs = sorted({(c.kind, v) for p in prepared for c in p.claims for v in c.lookup})
    found: dict[tuple[str, str], _Known] = {}
    for start in range(0, len(pairs), _CHUNK):
        chunk = pairs[start : start + _CHUNK]
        by_kind: dict[str, list[str]] = {}
        for kind, value in chunk:
            by_kind.setdefault(kind, []).append(value)
        kinds = tuple(sorted(by_kind))
        rows = await direct.rows(
            session,
            _lookup_statement(dialect.dialect_name(session), kinds),
            {f"values_{n}": by_kind[kind] for n, kind in enumerate(kinds)},
        )
        for row in rows:
            found[(row.kind, row.value)] = _Known(
                row.id,
                row.kind,
                row.value,
                row.member_id,
                row.created_at,
                {
                    "status": row.status,
                    "version": row.version,
                    "name": row.name,
                    "province": row.province,
                    "city": row.city,
                    "mobile_enc": row.mobile_enc,
                    "mobile_masked_index": row.mobile_masked_index,
                    "profile_meta": _LazyMeta(row.profile_meta),
                },
                row.referrer_id is not None,
                row.last_seen_at,
            )
    # Identities always point at live members (a merge moves them); follow a tombstone defensively anyway.
    stale = {k.member_id for k in found.values() if k.profile["status"] != "active"}
    if stale:
        from tongcrm.members.service import resolve_live_ids

        live = await resolve_live_ids(session, sorted(stale))
        for known in found.values():
            if known.member_id in live:
                known.member_id = live[known.member_id]
                known.profile = {}
                known.referred = None
    return found


async def _resolve_prepared(
    session: AsyncSession, ctx: ResolutionContext, prepared: Sequence[_Prepared], *, optimistic: bool = False
) -> dict[int, ResolveOutcome]:
    """Plan the batch from one lookup, then write it. Writes run under a savepoint unless ``optimistic`` and
    the plan merges nobody: then a lost race (raised by the identities' insert, before anything else is
    written) deletes the members and identities this attempt inserted, and the transaction is as it was."""
    if not optimistic:
        async with session.begin_nested():
            return await _resolve_planned(session, ctx, prepared, optimistic=False)
    return await _resolve_planned(session, ctx, prepared, optimistic=True)


async def _resolve_planned(
    session: AsyncSession, ctx: ResolutionContext, prepared: Sequence[_Prepared], *, optimistic: bool
) -> dict[int, ResolveOutcome]:
    now = ctx.clock()
    known = await _lookup(session, prepared)
    plan = _Plan()
    profiles: dict[int, dict[str, Any]] = {}
    for k in known.values():
        plan.owner[(k.kind, k.value)] = k.member_id
        plan.created_at.setdefault(k.member_id, k.member_created_at)
        if k.profile:
            profiles[k.member_id] = k.profile
    errors: dict[int, ResolveOutcome] = {}
    core_policy = ctx.host.resolution_is_core()
    next_placeholder = -1
    blocked_cache: dict[tuple[int, int], bool] = {}

    for p in prepared:
        # Where each claim is (or will be) stored, and which member it names now.
        stored: list[tuple[_Claim, tuple[str, str], int | None]] = []
        for c in p.claims:
            key = next(((c.kind, v) for v in c.lookup if (c.kind, v) in known), (c.kind, c.value))
            owner = plan.owner.get(key)
            stored.append((c, key, plan.find(owner) if owner is not None else None))
        target: int | None
        if core_policy:
            # the core policy on plain values: it names only members the claims name (what _check_decision
            # holds a plugin's decision to), and the claims' values were checked when they were prepared
            choice, merge_from, _ = core_choice(
                [(c.kind, key[1]) for c, key, _ in stored],
                [(o, c.kind, key[1], c.strong, plan.created_at[o]) for c, key, o in stored if o is not None],
            )
            target = None if choice is None else plan.find(choice)
        else:
            try:
                target, merge_from = _ask_policy(ctx.host, stored, plan)
            except (ClaimError, ValueError) as exc:
                message = exc.message if isinstance(exc, ClaimError) else str(exc)
                errors[p.index] = ResolveOutcome(None, False, (), message, PolicyError.code)
                continue
        created = False
        if target is None:
            target = next_placeholder
            next_placeholder -= 1
            plan.created_at[target] = now
            plan.new_members[target] = p
            created = True
        merged: list[int] = []
        for other in merge_from:
            other, target = plan.find(other), plan.find(target)
            if other == target:
                continue
            if other < 0 or target < 0:
                # A member created earlier in this batch: it never existed outside it, so no merge record.
                keep, drop = (target, other) if target > 0 or other < 0 else (other, target)
                plan.alias[drop] = keep
                target = keep
                continue
            pair = (min(target, other), max(target, other))
            if pair not in blocked_cache:
                blocked_cache[pair] = await _merge_was_undone(session, *pair)
            if blocked_cache[pair]:
                log.info("not merging members whose merge was undone", members=list(pair))
                continue
            evidence = [
                {"kind": c.kind, "value": key[1], "member_id": o}
                for c, key, o in stored
                if o is not None and o in (target, other)
            ]
            plan.merges.append((target, other, evidence))
            plan.alias[other] = target
            merged.append(other)
        for c, key, _ in stored:
            current = plan.owner.get(key)
            if current is None:
                plan.owner[key] = target
                plan.new_identities[key] = (c, p.claim_set.account_id, target)
            elif plan.find(current) == plan.find(target) and key in known:
                seen = known[key].last_seen_at
                if seen is None or now - seen >= LAST_SEEN_EVERY:
                    plan.touched.add(known[key].identity_id)
        if target > 0 and not created:
            plan.fills.setdefault(target, []).append(p)
        plan.outcomes[p.index] = (target, created, merged)

    if optimistic and plan.merges:  # a merge writes too much to undo by hand
        async with session.begin_nested():
            await _write(session, ctx, plan, profiles, now)
    else:
        await _write(session, ctx, plan, profiles, now, undo_on_lost_race=optimistic)

    # sync never writes a referrer: a member created here has none, one read has what the lookup saw, unless a
    # merge (which keeps the referrer of the member created first) mixed members
    referred: dict[int, bool | None] = {}
    if not plan.merges:
        for k in known.values():
            # two readings that disagree (a tombstone followed to a member also read): not known
            referred[k.member_id] = (
                k.referred if referred.get(k.member_id, k.referred) == k.referred else None
            )
    results: dict[int, ResolveOutcome] = dict(errors)
    ids = plan.placeholder_ids
    for index, (target, created, merged) in plan.outcomes.items():
        final = plan.find(target)
        member_id = ids[final] if final < 0 else final
        results[index] = ResolveOutcome(
            member_id,
            created and final == target,
            tuple(merged),
            None,
            referred=False if final < 0 else referred.get(final),
        )
    return results


@functools.cache
def _undo_statements(dialect_name: str) -> tuple[Any, Any]:
    return (
        sa.delete(_IDENTITIES).where(dialect.one_of(dialect_name, _IDENTITIES.c.id, "ids")),
        sa.delete(_MEMBERS).where(dialect.one_of(dialect_name, _MEMBERS.c.id, "ids")),
    )


async def _undo_inserts(session: AsyncSession, identity_ids: list[int], member_ids: list[int]) -> None:
    """Take back what an attempt without a savepoint wrote before it lost a race: its new identities and the
    new members they pointed at (nothing else refers to them yet)."""
    identities, members = _undo_statements(dialect.dialect_name(session))
    if identity_ids:
        await session.execute(identities, {"ids": identity_ids})
    if member_ids:
        await session.execute(members, {"ids": member_ids})


def _ask_policy(
    host: PluginHost, stored: Sequence[tuple[_Claim, tuple[str, str], int | None]], plan: _Plan
) -> tuple[int | None, tuple[int, ...]]:
    """Ask the ``resolve_member`` hook (a plugin implements it) about one claim set: each claim as it is
    stored, with the members they name now."""
    matches = [
        MemberMatch(
            member_id=o, kind=c.kind, value=key[1], strong=c.strong, member_created_at=plan.created_at[o]
        )
        for c, key, o in stored
        if o is not None
    ]
    hook_claims = [IdentityClaim(c.kind, key[1], c.evidence) for c, key, _ in stored]
    decision = host.resolve_member(hook_claims, matches) or default_decision(hook_claims, matches)
    return _check_decision(decision, matches, plan)


def _check_decision(
    decision: ResolutionDecision, matches: Sequence[MemberMatch], plan: _Plan
) -> tuple[int | None, tuple[int, ...]]:
    if decision.create:
        return None, ()
    named = {m.member_id for m in matches}
    assert decision.member_id is not None  # guaranteed by ResolutionDecision
    for member in (decision.member_id, *decision.merge_from):
        if plan.find(member) not in named:
            raise PolicyError(
                f"the resolution policy named member {member}, which none of the claims points at",
                params={"member_id": member},
            )
    return plan.find(decision.member_id), tuple(decision.merge_from)


async def _merge_was_undone(session: AsyncSession, a: int, b: int) -> bool:
    """An undone merge is an operator's statement that two members are different people: never redo it."""
    row = await session.execute(
        sa.select(Merge.id)
        .where(
            Merge.status == "undone",
            sa.or_(
                sa.and_(Merge.survivor_id == a, Merge.absorbed_id == b),
                sa.and_(Merge.survivor_id == b, Merge.absorbed_id == a),
            ),
        )
        .limit(1)
    )
    return row.first() is not None


def _profile_values(p: _Prepared) -> dict[str, str]:
    prof = p.claim_set.profile
    values: dict[str, str] = {}
    if prof is not None:
        for name in ("name", "province", "city"):
            raw = getattr(prof, name)
            if raw and raw.strip():
                values[name] = raw.strip()[: 100 if name == "name" else 64]
    return values


def _profile_mobile(ctx: ResolutionContext, p: _Prepared) -> tuple[dict[str, str | None] | None, bool]:
    """(``mobile_enc`` and ``mobile_masked_index``, verified): a mobile claim is verified by the channel; a
    profile mobile is not."""
    if p.mobile is not None and p.mobile.e164 is not None:
        return {
            "mobile_enc": p.mobile.value_enc,
            "mobile_masked_index": masked_index(ctx.vault, p.mobile.e164),
        }, True
    prof = p.claim_set.profile
    if prof is not None and prof.mobile:
        try:
            return mobile_columns(ctx.vault, normalise_mobile(prof.mobile)), False
        except InvalidMobile:
            return None, False
    return None, False


def _new_member_rows(
    ctx: ResolutionContext, plan: _Plan, roots: Sequence[int], now: datetime
) -> list[dict[str, Any]]:
    """The ``members`` rows (columns :data:`_MEMBER_COLUMNS`) of the batch's new members ``roots``, in order."""
    rows = []
    at = now.isoformat()  # one text for the batch: formatting it per field was most of a row's own work
    for ph in roots:
        p = plan.new_members[ph]
        values = _profile_values(p)
        mobile, verified = _profile_mobile(ctx, p)
        meta = {name: {"at": at, "verified": False} for name in values}
        if mobile is not None:
            meta["mobile_enc"] = {"at": at, "verified": verified}
        cs = p.claim_set
        rows.append(
            {
                "status": "active",
                "version": 1,
                "created_at": now,
                "updated_at": now,
                "name": values.get("name"),
                "province": values.get("province"),
                "city": values.get("city"),
                **(mobile or {"mobile_enc": None, "mobile_masked_index": None}),
                "profile_meta": meta,
                "source_channel": cs.source_channel,
                "source_store": cs.source_store,
                "source_campaign": cs.source_campaign,
                "lifecycle_stage": "prospect",
            }
        )
    return rows


def _new_identity_rows(
    ctx: ResolutionContext, plan: _Plan, member_of: Callable[[int], int | None], now: datetime
) -> list[dict[str, Any]]:
    """The ``identities`` rows (columns :data:`_IDENTITY_COLUMNS`) of the batch's new identities, in key order:
    two transactions inserting overlapping identities (backfill windows of one account applying pages at once)
    then wait on each other in the same order instead of deadlocking. ``member_of`` maps a plan's member."""
    rows = [
        {
            "kind": c.kind,
            "value": key[1],
            "member_id": member_of(owner),
            "value_enc": c.value_enc,
            "masked_index": None if c.e164 is None else masked_index(ctx.vault, c.e164),
            "account_id": account_id,
            "evidence": c.evidence,
            "first_seen_at": now,
            "last_seen_at": now,
        }
        for key, (c, account_id, owner) in plan.new_identities.items()
    ]
    rows.sort(key=lambda row: (row["kind"], row["value"]))
    return rows


def _fill_updates(
    ctx: ResolutionContext,
    plan: _Plan,
    profiles: dict[int, dict[str, Any]],
    merged: set[int],
    now: datetime,
) -> list[dict[str, Any]]:
    """Blank profile fields of existing members filled from what the channel knows (never overwritten): one
    row per member that changes, its id and version as ``b_id``/``b_version``."""
    updates = []
    for member_id, preps in plan.fills.items():
        if member_id in merged or plan.find(member_id) != member_id or member_id not in profiles:
            continue
        current = profiles[member_id]
        meta = dict(current["profile_meta"])
        change: dict[str, Any] = {}
        for p in preps:
            for name, value in _profile_values(p).items():
                if not current.get(name) and name not in change:
                    change[name] = value
                    meta[name] = {"at": now.isoformat(), "verified": False}
            if not current.get("mobile_enc") and "mobile_enc" not in change:
                mobile, verified = _profile_mobile(ctx, p)
                if mobile is not None:
                    change.update(mobile)
                    meta["mobile_enc"] = {"at": now.isoformat(), "verified": verified}
        if change:
            row = {name: current.get(name) for name in _FILLED}
            row.update(change)
            updates.append({"b_id": member_id, "b_version": current["version"], "profile_meta": meta, **row})
    return updates


#: The profile columns a fill may set (besides ``profile_meta``).
_FILLED = ("name", "province", "city", "mobile_enc", "mobile_masked_index")

#: The fills of :func:`_fill_updates`, an executemany; built once. Every column a fill may set is named (bound as
#: ``f_<column>``, see :func:`_fill_params`) rather than taken from the rows' keys, so the statement's text is
#: fixed and it runs straight on the driver (:func:`tongcrm.db.direct.batch`), with the page's other writes.
_FILL = (
    sa.update(_MEMBERS)
    .where(_MEMBERS.c.id == sa.bindparam("b_id"), _MEMBERS.c.version == sa.bindparam("b_version"))
    .values(
        version=_MEMBERS.c.version + 1,
        updated_at=sa.bindparam("b_now", type_=_MEMBERS.c.updated_at.type),
        **{c: sa.bindparam(f"f_{c}", type_=_MEMBERS.c[c].type) for c in (*_FILLED, "profile_meta")},
    )
)


def _fill_params(update: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The parameters of :data:`_FILL` for one row of :func:`_fill_updates`."""
    return {
        "b_id": update["b_id"],
        "b_version": update["b_version"],
        "b_now": now,
        **{f"f_{c}": update[c] for c in (*_FILLED, "profile_meta")},
    }


def _created_event(member_id: int, p: _Prepared) -> dict[str, Any]:
    return {"member_id": member_id, "source": p.claim_set.source_channel or "unknown"}


async def _write(
    session: AsyncSession,
    ctx: ResolutionContext,
    plan: _Plan,
    profiles: dict[int, dict[str, Any]],
    now: datetime,
    *,
    undo_on_lost_race: bool = False,
) -> None:
    from tongcrm.members.merge import merge_members

    members = _MEMBERS
    name = dialect.dialect_name(session)
    roots = [ph for ph in sorted(plan.new_members, reverse=True) if plan.find(ph) == ph]
    if name == "postgresql" and not plan.merges and len(plan.new_identities) <= _CHUNK:
        await _write_in_one(session, ctx, plan, profiles, now, roots, undo_on_lost_race=undo_on_lost_race)
        return
    # 1. new members, one statement
    placeholder_ids: dict[int, int] = {}
    if roots:
        rows = _new_member_rows(ctx, plan, roots, now)
        # Ascending ids match the rows: SQLite's one multi-row INSERT assigns rowids in VALUES order (writers
        # are serialised); PostgreSQL's INSERT … SELECT … ORDER BY position draws the sequence in that order.
        size = dialect.values_size(name, _MEMBER_COLUMNS, len(rows))
        params = dialect.rows_params(name, members, _MEMBER_COLUMNS, rows, size=size)
        result = await direct.rows(session, _new_members_statement(name, size), params)
        new_ids = sorted(row[0] for row in result)
        placeholder_ids = dict(zip(roots, new_ids, strict=True))
    for ph in plan.new_members:
        if ph not in placeholder_ids:
            placeholder_ids[ph] = placeholder_ids.get(plan.find(ph), plan.find(ph))
    plan.placeholder_ids = placeholder_ids

    def real(member: int) -> int:
        final = plan.find(member)
        return placeholder_ids[final] if final < 0 else final

    # 2. merges of members that existed before this batch (rare: one small unit each)
    actor = Actor(ctx.actor, "system") if ctx.actor != "system" else SYSTEM
    merged: set[int] = set()
    for survivor, absorbed, evidence in plan.merges:
        await merge_members(
            session,
            survivor,
            absorbed,
            actor=actor,
            reason="identity resolution: strong claims named both members",
            evidence=evidence,
            at=now,
            tz=ctx.tz,
            audit_it=False,
        )
        merged.update((survivor, absorbed))

    # 3. new identities, one statement; a missing row means another transaction won the race
    if plan.new_identities:
        table = _IDENTITIES
        rows = _new_identity_rows(ctx, plan, real, now)
        written: list[int] = []
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            size = dialect.values_size(name, _IDENTITY_COLUMNS, len(chunk))
            params = dialect.rows_params(name, table, _IDENTITY_COLUMNS, chunk, size=size)
            inserted = await direct.rows(session, _new_identities_statement(name, size), params)
            written.extend(row[0] for row in inserted)
            if len(inserted) != len(chunk):
                if undo_on_lost_race:
                    await _undo_inserts(session, written, sorted(placeholder_ids.values()))
                raise LostRace()

    # 4-6 have no Python between them: one hand-off to SQLite's thread (tongcrm.db.direct.batch)
    steps: list[direct.Step] = []
    # 4. last seen of identities that were claimed again, one statement
    if plan.touched:
        ids = sorted(plan.touched)
        steps.extend(
            (_touch_statement(name), {"ids": ids[start : start + _CHUNK], "now": now})
            for start in range(0, len(ids), _CHUNK)
        )

    # 5. fill blank profile fields of existing members from what the channel knows (never overwrite)
    updates = _fill_updates(ctx, plan, profiles, merged, now)
    if updates:
        steps.append((_FILL, [_fill_params(update, now) for update in updates]))

    # 6. events
    created = outbox.emit_step(
        name,
        [("member_created", _created_event(placeholder_ids[ph], plan.new_members[ph])) for ph in roots],
        now=now,
    )
    if created is not None:
        steps.append(created)
    await direct.batch(session, steps)


async def _write_in_one(
    session: AsyncSession,
    ctx: ResolutionContext,
    plan: _Plan,
    profiles: dict[int, dict[str, Any]],
    now: datetime,
    roots: Sequence[int],
    *,
    undo_on_lost_race: bool,
) -> None:
    """PostgreSQL, a batch that merges nobody: what :func:`_write` does in steps 1 and 3–6 — new members,
    their identities, last seen of identities claimed again, profile fills and ``member_created`` events — in
    ONE statement (:func:`_write_statement`), where they were five round trips a page.

    A new identity names its new member by the member's position among ``roots`` (``member_pos``): the
    members are inserted in that order, so their ids ascend with it. The touches, fills and events are written
    only when every identity was (a lost race writes none of them); the statement returns the new members' and identities' ids, so a
    lost race undoes its inserts as :func:`_write` does."""
    position = {ph: n for n, ph in enumerate(roots, start=1)}
    member_rows = _new_member_rows(ctx, plan, roots, now)
    identity_rows = _new_identity_rows(ctx, plan, plan.find, now)
    updates = _fill_updates(ctx, plan, profiles, set(), now)
    if not (member_rows or identity_rows or plan.touched or updates):
        return
    for row in identity_rows:  # a new member by position, an existing one by id
        row["member_pos"] = position.get(row["member_id"])
        row["member_id"] = max(row["member_id"], 0) or None
    params: dict[str, Any] = {
        "members": dialect.json_records_text(member_rows),
        "identities": dialect.json_records_text(identity_rows),
        "touch_ids": sorted(plan.touched),
        "fills": dialect.json_records_text(updates),
        "fill_ids": [update["b_id"] for update in updates],
        "identity_count": len(identity_rows),
        "now": now,
    }
    rows = await direct.rows(session, _write_statement(), params)
    new_ids = sorted(r.id for r in rows if r.made == "member")
    written = [r.id for r in rows if r.made == "identity"]
    plan.placeholder_ids = dict(zip(roots, new_ids, strict=True))
    for ph in plan.new_members:
        if ph not in plan.placeholder_ids:
            plan.placeholder_ids[ph] = plan.placeholder_ids.get(plan.find(ph), plan.find(ph))
    if len(written) != len(identity_rows):
        if undo_on_lost_race:
            await _undo_inserts(session, written, new_ids)
        raise LostRace()


@functools.cache
def _write_statement() -> Any:
    """The statement of :func:`_write_in_one`: one fixed text (each record set one JSON text), prepared once per
    connection. Each data-modifying CTE sees only what those before it returned: the identities find their new
    members' ids in the members' ``RETURNING``; the touches, fills and events run only if the identities'
    ``RETURNING`` has every row (``:identity_count``), so a lost race leaves only the inserts it undoes.

    The touches and the fills lock their rows in id order first (``ORDER BY … FOR UPDATE``): an ``UPDATE … WHERE
    id IN (…)`` locks them in whatever order its plan reads them, so two pages that share buyers (two shops of
    one brand, windows of one backfill) could each hold a row the other waits for — a deadlock, and a page
    redone. The new identities are inserted in key order for the same reason (:func:`_new_identity_rows`).

    The rows the touches and the fills change are also bound as arrays of ids (``touch_ids``, ``fill_ids``) and
    each side of those updates is limited to them (``id = ANY(…)``): the planner counts an array (ten rows for a
    generic plan) but takes a JSON record set for a hundred, so it joined every row of ``identities`` and
    ``members`` by a sequential scan, twice each, on every page — a cost that grew with the tables (issue #22,
    ingestpg18: identity resolution's write 4.1 → 2.5 ms of server CPU a page at 20,000 JD orders)."""
    # each record set is one JSON text (dialect.json_records), not an array per column: asyncpg checked every
    # element of those arrays with a Python call
    m_rows = dialect.json_records("members", [(n, _MEMBERS.c[n].type) for n in _MEMBER_COLUMNS], alias="m")
    i_rows = dialect.json_records(
        "identities",
        [*((n, _IDENTITIES.c[n].type) for n in _IDENTITY_COLUMNS), ("member_pos", sa.Integer())],
        alias="r",
    )
    f_columns = ("b_id", "b_version", *_FILLED, "profile_meta")
    f_rows = dialect.json_records(
        "fills", [(n, _MEMBERS.c[n.removeprefix("b_")].type) for n in f_columns], alias="f"
    )

    identity_values = ", ".join(
        "coalesce(r.member_id, nm.id)" if n == "member_id" else f"r.{n}" for n in _IDENTITY_COLUMNS
    )
    # what is not undone by hand when the race is lost (the first attempt has no savepoint) is written only when
    # every identity was: the touches, the fills and the events
    complete = "(SELECT count(*) FROM inserted) = :identity_count"
    sql = f"""
WITH m AS (
    SELECT * FROM {m_rows}
),
made AS (
    INSERT INTO members ({", ".join(_MEMBER_COLUMNS)})
    SELECT {", ".join(f"m.{n}" for n in _MEMBER_COLUMNS)} FROM m ORDER BY m.ordinality
    RETURNING id
),
nm AS (
    SELECT id, row_number() OVER (ORDER BY id) AS position FROM made
),
inserted AS (
    INSERT INTO identities ({", ".join(_IDENTITY_COLUMNS)})
    SELECT {identity_values} FROM {i_rows} LEFT JOIN nm ON nm.position = r.member_pos
    ORDER BY r.ordinality
    ON CONFLICT (kind, value) DO NOTHING
    RETURNING id
),
touched AS (
    UPDATE identities SET last_seen_at = :now
    FROM (
        SELECT l.id FROM identities l
        WHERE l.id = ANY(CAST(:touch_ids AS BIGINT[])) AND {complete}
        ORDER BY l.id FOR UPDATE OF l
    ) AS k
    WHERE identities.id = k.id AND identities.id = ANY(CAST(:touch_ids AS BIGINT[]))
),
filled AS (
    UPDATE members SET version = members.version + 1, updated_at = :now,
        {", ".join(f"{n} = f.{n}" for n in (*_FILLED, "profile_meta"))}
    FROM (
        SELECT f.* FROM {f_rows} JOIN members l ON l.id = f.b_id
        WHERE l.id = ANY(CAST(:fill_ids AS BIGINT[])) AND {complete}
        ORDER BY f.b_id FOR UPDATE OF l
    ) AS f
    WHERE members.id = f.b_id AND members.version = f.b_version
        AND members.id = ANY(CAST(:fill_ids AS BIGINT[]))
),
events AS (
    INSERT INTO outbox_events (name, payload, occurred_at)
    SELECT 'member_created',
        jsonb_build_object('member_id', nm.id, 'source', coalesce(nullif(m.source_channel, ''), 'unknown')), :now
    FROM nm JOIN m ON m.ordinality = nm.position
    WHERE {complete}
    ORDER BY nm.position
)
SELECT 'member' AS made, id FROM made
UNION ALL
SELECT 'identity', id FROM inserted
"""  # noqa: S608 - built from this module's constant column names, no input
    ids: Any = postgresql.ARRAY(sa.BigInteger())
    binds: list[sa.BindParameter[Any]] = [
        *(sa.bindparam(name, type_=sa.Text()) for name in ("members", "identities", "fills")),
        *(sa.bindparam(name, type_=ids) for name in ("touch_ids", "fill_ids")),
        sa.bindparam("now", type_=_IDENTITIES.c.last_seen_at.type),
        sa.bindparam("identity_count", type_=sa.Integer()),
    ]
    return sa.text(sql).bindparams(*binds).columns(made=sa.Text(), id=_MEMBERS.c.id.type)
