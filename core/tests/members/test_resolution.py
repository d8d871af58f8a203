"""Identity resolution: normalisation, idempotency, merges on strong claims only, per-item errors, batching,
the policy hook, and the race between two transactions creating the same member."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from tongcrm.audit.service import SYSTEM
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.identity.models import Identity, Merge
from tongcrm.identity.service import (
    LAST_SEEN_EVERY,
    ClaimSet,
    InvalidClaimValue,
    ResolutionContext,
    UnknownIdentityKind,
    _LazyMeta,
    resolve,
    resolve_many,
)
from tongcrm.jobs.models import OutboxEvent
from tongcrm.members.merge import undo_merge
from tongcrm.members.models import Member
from tongcrm.plugin import hookimpl
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import BuyerProfile, IdentityClaim, MemberMatch, ResolutionDecision
from tongcrm.testing.database import TestDatabase

from .conftest import Clock, make_host


def mobile(value: str) -> IdentityClaim:
    return IdentityClaim("mobile", value)


def uid(value: str) -> IdentityClaim:
    return IdentityClaim("shop.uid", value)


def oaid(value: str) -> IdentityClaim:
    return IdentityClaim("shop.oaid", value)


async def run(db: TestDatabase, ctx: ResolutionContext, *sets: ClaimSet) -> list[Any]:
    async with db.sessions() as session, session.begin():
        return await resolve_many(session, ctx, list(sets))


async def count(db: TestDatabase, stmt: Any) -> int:
    async with db.sessions() as session:
        return int((await session.execute(stmt)).scalar_one())


async def test_three_spellings_of_one_mobile_are_one_member(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    out = await run(
        tongcrm_db,
        ctx,
        ClaimSet((mobile("13800138000"),)),
        ClaimSet((mobile("+86 138-0013-8000"),)),
        ClaimSet((mobile("008613800138000"),)),
    )
    assert [o.member_id for o in out] == [out[0].member_id] * 3
    assert [o.created for o in out] == [True, False, False]
    assert await count(tongcrm_db, sa.select(sa.func.count()).select_from(Member)) == 1


async def test_mobile_is_never_stored_in_plain_text(tongcrm_db: TestDatabase, ctx: ResolutionContext) -> None:
    await run(
        tongcrm_db, ctx, ClaimSet((mobile("13800138000"),), profile=BuyerProfile(name="张三", city="杭州"))
    )
    async with tongcrm_db.sessions() as session:
        dump = []
        for table in ("identities", "members", "outbox_events"):
            rows = (await session.execute(sa.text(f"SELECT * FROM {table}"))).all()  # noqa: S608
            dump.extend(str(tuple(r)) for r in rows)
    text = "\n".join(dump)
    assert "13800138000" not in text and "8000" not in text.replace("08000", "")
    async with tongcrm_db.sessions() as session:
        ident = (await session.execute(sa.select(Identity))).scalar_one()
        member = (await session.execute(sa.select(Member))).scalar_one()
    assert ident.value == ctx.vault.blind_index("+8613800138000", purpose="identity.mobile")
    assert ctx.vault.decrypt(ident.value_enc or "", context="member.mobile") == "+8613800138000"
    assert member.name == "张三" and member.city == "杭州"


async def test_resolving_again_is_idempotent(tongcrm_db: TestDatabase, ctx: ResolutionContext) -> None:
    sets = [ClaimSet((mobile(f"1380013{i:04d}"), uid(f"u{i}"))) for i in range(20)]
    first = await run(tongcrm_db, ctx, *sets)
    events = await count(tongcrm_db, sa.select(sa.func.count()).select_from(OutboxEvent))
    second = await run(tongcrm_db, ctx, *sets)
    assert [o.member_id for o in first] == [o.member_id for o in second]
    assert not any(o.created for o in second)
    assert await count(tongcrm_db, sa.select(sa.func.count()).select_from(Member)) == 20
    assert await count(tongcrm_db, sa.select(sa.func.count()).select_from(OutboxEvent)) == events == 20


async def test_bad_claim_sets_get_their_own_error_and_spare_the_batch(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    out = await run(
        tongcrm_db,
        ctx,
        ClaimSet((uid("a"),)),
        ClaimSet((IdentityClaim("weibo.id", "x"),)),
        ClaimSet((mobile("12345"),)),
        ClaimSet(()),
        ClaimSet((uid("b"),)),
    )
    assert out[0].member_id and out[4].member_id and out[0].member_id != out[4].member_id
    assert out[1].member_id is None and out[1].error_code == "unknown_identity_kind"
    assert "weibo.id" in (out[1].error or "") and "shop.uid" in (out[1].error or "")
    assert out[2].error_code == "invalid_claim_value" and "not a valid phone number" in (out[2].error or "")
    assert out[3].error and out[3].member_id is None
    async with tongcrm_db.sessions() as session, session.begin():
        with pytest.raises(UnknownIdentityKind):
            await resolve(session, ctx, ClaimSet((IdentityClaim("weibo.id", "x"),)))
        with pytest.raises(InvalidClaimValue):
            await resolve(session, ctx, ClaimSet((mobile("abc"),)))


async def test_strong_claims_naming_two_members_merge_them_oldest_survives(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    a, b = await run(tongcrm_db, ctx, ClaimSet((mobile("13800138000"),)), ClaimSet((uid("u1"),)))
    (merged,) = await run(tongcrm_db, ctx, ClaimSet((uid("u1"), mobile("13800138000"))))
    assert merged.member_id == a.member_id and merged.merged_from == (b.member_id,)
    async with tongcrm_db.sessions() as session:
        tomb = await session.get(Member, b.member_id)
        record = (await session.execute(sa.select(Merge))).scalar_one()
        names = [
            e.name for e in (await session.execute(sa.select(OutboxEvent).order_by(OutboxEvent.id))).scalars()
        ]
    assert tomb is not None and tomb.status == "merged" and tomb.merged_into_id == a.member_id
    assert record.survivor_id == a.member_id and record.absorbed_id == b.member_id
    assert {e["kind"] for e in record.evidence} == {"mobile", "shop.uid"}
    assert "13800138000" not in str(record.evidence)
    assert names == ["member_created", "member_created", "members_merged"]
    (again,) = await run(tongcrm_db, ctx, ClaimSet((uid("u1"),)))
    assert again.member_id == a.member_id


async def test_weak_claims_are_recorded_but_never_merge(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    a, b = await run(tongcrm_db, ctx, ClaimSet((uid("u1"), oaid("o1"))), ClaimSet((uid("u2"), oaid("o2"))))
    (c,) = await run(tongcrm_db, ctx, ClaimSet((uid("u2"), oaid("o1"))))
    assert c.member_id == b.member_id and not c.merged_from
    (d,) = await run(tongcrm_db, ctx, ClaimSet((oaid("o1"), oaid("o2"))))
    assert d.member_id in (a.member_id, b.member_id) and not d.merged_from and not d.created
    assert await count(tongcrm_db, sa.select(sa.func.count()).select_from(Merge)) == 0


async def test_new_members_unified_within_one_batch_without_a_merge_record(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    out = await run(
        tongcrm_db,
        ctx,
        ClaimSet((mobile("13800138000"),)),
        ClaimSet((uid("u1"),)),
        ClaimSet((uid("u1"), mobile("13800138000"))),
    )
    assert len({o.member_id for o in out}) == 1
    assert await count(tongcrm_db, sa.select(sa.func.count()).select_from(Member)) == 1
    assert await count(tongcrm_db, sa.select(sa.func.count()).select_from(Merge)) == 0


async def test_an_undone_merge_is_not_redone_by_the_next_ingest(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    a, b = await run(tongcrm_db, ctx, ClaimSet((mobile("13800138000"),)), ClaimSet((uid("u1"),)))
    await run(tongcrm_db, ctx, ClaimSet((uid("u1"), mobile("13800138000"))))
    async with tongcrm_db.sessions() as session, session.begin():
        merge_id = (await session.execute(sa.select(Merge.id))).scalar_one()
        await undo_merge(session, merge_id, actor=SYSTEM, at=ctx.clock())
    (again,) = await run(tongcrm_db, ctx, ClaimSet((uid("u1"), mobile("13800138000"))))
    assert again.member_id == a.member_id and not again.merged_from
    (only_b,) = await run(tongcrm_db, ctx, ClaimSet((uid("u1"),)))
    assert only_b.member_id == b.member_id


class CreateAlways:
    @hookimpl
    def resolve_member(self, claims: Any, matches: list[MemberMatch]) -> ResolutionDecision | None:
        if any(c.kind == "shop.uid" and c.value.startswith("vip") for c in claims):
            return ResolutionDecision(create=True, reason="test policy")
        return None


async def test_a_plugin_policy_overrides_the_default(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    host = make_host()
    host.register(CreateAlways(), "policy")
    custom = ResolutionContext(host=host, vault=ctx.vault, clock=ctx.clock)
    a, b = await run(tongcrm_db, custom, ClaimSet((uid("vip1"),)), ClaimSet((uid("vip1"),)))
    assert a.created and b.created and a.member_id != b.member_id  # the second member cannot take the claim
    c, d = await run(tongcrm_db, custom, ClaimSet((uid("x"),)), ClaimSet((uid("x"),)))
    assert c.member_id == d.member_id and not d.created  # default policy


class Defer:
    """Implements the hook and always defers to the core policy: resolution then asks the hook per claim set."""

    @hookimpl
    def resolve_member(self, claims: Any, matches: list[MemberMatch]) -> ResolutionDecision | None:
        return None


async def test_the_core_policy_decides_alike_with_and_without_the_hook(
    tongcrm_db: TestDatabase, ctx: ResolutionContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a plugin's ``resolve_member`` the core policy runs on plain values (no hook call, no claim
    dataclasses); a plugin that defers to it gets the same members, creations and merges through the hook."""
    asked: list[int] = []
    ask = PluginHost.resolve_member

    def counting(self: PluginHost, claims: Any, matches: Any) -> ResolutionDecision | None:
        asked.append(len(claims))
        return ask(self, claims, matches)

    monkeypatch.setattr(PluginHost, "resolve_member", counting)
    deferring = make_host()
    deferring.register(Defer(), "defer")
    assert ctx.host.resolution_is_core() and not deferring.resolution_is_core()
    hooked = ResolutionContext(host=deferring, vault=ctx.vault, clock=ctx.clock)
    batches = [
        [ClaimSet((mobile("13800138000"),)), ClaimSet((uid("u1"), oaid("o1"))), ClaimSet((uid("u2"),))],
        [ClaimSet((uid("u1"), mobile("13800138000"))), ClaimSet((oaid("o1"),)), ClaimSet((oaid("o9"),))],
        [ClaimSet((uid("u2"), oaid("o1"))), ClaimSet((oaid("o1"), oaid("o9"))), ClaimSet((uid("u3"),))],
    ]

    async def outcomes(context: ResolutionContext) -> list[tuple[int | None, bool, int, str | None]]:
        seen: list[tuple[int | None, bool, int, str | None]] = []
        ids: dict[int, int] = {}  # member ids in order of first appearance: the two runs number members apart
        for batch in batches:
            for o in await run(tongcrm_db, context, *batch):
                number = ids.setdefault(o.member_id, len(ids)) if o.member_id is not None else None
                seen.append((number, o.created, len(o.merged_from), o.error))
        return seen

    core = await outcomes(ctx)
    assert asked == []
    await tongcrm_db.truncate()
    through_hook = await outcomes(hooked)
    assert len(asked) == sum(len(b) for b in batches)
    assert core == through_hook
    assert any(merged for _, _, merged, _ in core)  # the batches exercise a merge


async def test_a_batch_costs_a_fixed_number_of_statements(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    statements: list[str] = []

    def count_statement(*args: Any) -> None:
        statements.append(str(args[2])[:40])

    sets = [ClaimSet((mobile(f"1390013{i:04d}"), uid(f"b{i}"), oaid(f"o{i}"))) for i in range(100)]
    event.listen(tongcrm_db.engine.sync_engine, "before_cursor_execute", count_statement)
    try:
        await run(tongcrm_db, ctx, *sets)
        new_batch = list(statements)
        statements.clear()
        await run(tongcrm_db, ctx, *sets)
        known_batch = list(statements)
    finally:
        event.remove(tongcrm_db.engine.sync_engine, "before_cursor_execute", count_statement)

    def work(batch: list[str]) -> list[str]:
        # Outbox events go through jobs.outbox.emit (the ORM; row by row on SQLite, batched on PostgreSQL).
        return [
            s
            for s in batch
            if s.split()[0].upper() in {"SELECT", "INSERT", "UPDATE"} and "outbox_events" not in s
        ]

    assert len(work(new_batch)) <= 5, work(new_batch)[:8]
    assert len([s for s in known_batch if s.startswith("SELECT")]) == 1, known_batch  # one lookup
    assert len(work(known_batch)) <= 3, known_batch


async def test_two_concurrent_batches_creating_the_same_member_end_with_one(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    if tongcrm_db.backend != "postgresql":
        pytest.skip("the race needs two real connections to PostgreSQL (SQLite serialises writers)")
    engines = [create_engine(tongcrm_db.url), create_engine(tongcrm_db.url)]
    try:
        for round_ in range(5):
            gate = asyncio.Barrier(2)
            claim = ClaimSet((mobile(f"1370013{round_:04d}"),))

            async def ingest(
                engine: Any, own: str, claim: ClaimSet = claim, gate: asyncio.Barrier = gate
            ) -> int | None:
                async with session_factory(engine)() as session, session.begin():
                    await session.execute(sa.text("SELECT 1"))
                    await gate.wait()
                    out = await resolve_many(session, ctx, [claim, ClaimSet((uid(own),))])
                    await asyncio.sleep(0.05)  # hold the transaction open so the other one must wait
                    return out[0].member_id

            first, second = await asyncio.gather(
                ingest(engines[0], f"left{round_}"), ingest(engines[1], f"right{round_}")
            )
            assert first == second
        async with tongcrm_db.sessions() as session:
            per_mobile = (
                await session.execute(
                    sa.select(sa.func.count()).select_from(Identity).where(Identity.kind == "mobile")
                )
            ).scalar_one()
            mobile_members = (
                await session.execute(
                    sa.select(sa.func.count(sa.distinct(Identity.member_id))).where(Identity.kind == "mobile")
                )
            ).scalar_one()
            members = (await session.execute(sa.select(sa.func.count()).select_from(Member))).scalar_one()
        assert per_mobile == 5 and mobile_members == 5
        # the loser's first attempt (no savepoint) took back the members it had made for nothing
        assert members == 5 + 2 * 5
    finally:
        for engine in engines:
            await engine.dispose()


async def test_profile_fills_blanks_but_never_overwrites(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    (a,) = await run(
        tongcrm_db, ctx, ClaimSet((uid("u1"),), profile=BuyerProfile(name="李四"), source_channel="taobao")
    )
    async with tongcrm_db.sessions() as session:
        first = await session.get(Member, a.member_id)
        assert first is not None
        name_meta = first.profile_meta["name"]
    await run(
        tongcrm_db,
        ctx,
        ClaimSet((uid("u1"),), profile=BuyerProfile(name="别人", city="上海", mobile="13800138000")),
    )
    async with tongcrm_db.sessions() as session:
        member = await session.get(Member, a.member_id)
    assert member is not None
    assert member.name == "李四" and member.city == "上海" and member.source_channel == "taobao"
    assert ctx.vault.decrypt(member.mobile_enc or "", context="member.mobile") == "+8613800138000"
    assert member.version == 2
    # the fill adds the metadata of what it filled to what the member had (read back from the lookup)
    assert member.profile_meta["name"] == name_meta
    assert set(member.profile_meta) == {"name", "city", "mobile_enc"}
    assert member.profile_meta["mobile_enc"]["verified"] is False


def test_clock_fixture_is_monotonic() -> None:
    clock = Clock()
    assert clock() < clock()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"name": {"verified": true}}', {"name": {"verified": True}}),
        ({"city": {}}, {"city": {}}),
        (None, {}),
        ("null", {}),
    ],
)
def test_profile_metadata_read_by_the_lookup_parses_on_first_use(raw: Any, expected: dict[str, Any]) -> None:
    """The lookup hands ``profile_meta`` over as the text the database returned; a fill copies it as a dict."""
    meta = _LazyMeta(raw)
    assert dict(meta) == expected and len(meta) == len(expected)


class MobileWins:
    """A policy for claims naming two members: the one the mobile names takes them (no merge)."""

    @hookimpl
    def resolve_member(self, claims: Any, matches: list[MemberMatch]) -> ResolutionDecision | None:
        by_mobile = [m.member_id for m in matches if m.kind == "mobile"]
        if by_mobile and len({m.member_id for m in matches}) > 1:
            return ResolutionDecision(member_id=by_mobile[0], reason="the mobile wins")
        return None


async def test_a_lost_race_leaves_no_profile_fill_of_its_first_attempt(
    tongcrm_db: TestDatabase, vault: Any
) -> None:
    """The first attempt of a batch (no savepoint) that loses the race for a new identity takes back what it
    wrote: its resolution is redone and may name another member, so the profile it filled into the member it
    first chose must not stay there."""
    if tongcrm_db.backend != "postgresql":
        pytest.skip("the race needs two real connections to PostgreSQL (SQLite serialises writers)")
    host = make_host()
    host.register(MobileWins(), "policy")
    ctx = ResolutionContext(host=host, vault=vault, clock=Clock())
    (a,) = await run(tongcrm_db, ctx, ClaimSet((uid("u1"),)))  # member A: no city, no mobile
    engine = create_engine(tongcrm_db.url)
    try:
        async with session_factory(engine)() as other, other.begin():
            # another transaction stores the mobile first, for a new member B, and has not committed yet
            (b,) = await resolve_many(other, ctx, [ClaimSet((mobile("13700130000"),))])
            batch = asyncio.create_task(
                run(
                    tongcrm_db,
                    ctx,
                    ClaimSet((uid("u1"), mobile("13700130000")), profile=BuyerProfile(city="上海")),
                )
            )
            for _ in range(600):  # until the batch waits on B's identity row (its first attempt's insert)
                waiting = await other.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                )
                if waiting.scalar_one() or batch.done():
                    break
                await asyncio.sleep(0.05)
            assert not batch.done()
        (out,) = await batch  # B committed: the first attempt lost, the second resolves to B (the policy)
    finally:
        await engine.dispose()
    assert out.member_id == b.member_id != a.member_id
    async with tongcrm_db.sessions() as session:
        member_a = await session.get(Member, a.member_id)
        member_b = await session.get(Member, b.member_id)
    assert member_a is not None and member_b is not None
    assert member_b.city == "上海"
    assert (member_a.city, member_a.version) == (None, 1), "the lost attempt's fill of A stayed"


async def test_a_claim_seen_again_moves_last_seen_at_once_it_is_an_hour_old(
    tongcrm_db: TestDatabase, ctx: ResolutionContext
) -> None:
    """Every order of a known buyer rewrote its identity's ``last_seen_at``; now the time moves only when what is
    stored is at least :data:`LAST_SEEN_EVERY` old (issue #22, ingestpg18), on both databases."""
    clock = ctx.clock
    assert isinstance(clock, Clock)
    claim = ClaimSet((uid("seen-again"),))

    async def last_seen() -> datetime:
        async with tongcrm_db.sessions() as session:
            return (await session.execute(sa.select(Identity.last_seen_at))).scalar_one()

    await run(tongcrm_db, ctx, claim)
    first = await last_seen()
    clock.now = first + LAST_SEEN_EVERY - timedelta(minutes=1)
    await run(tongcrm_db, ctx, claim)  # seen again within the hour: the row is not rewritten
    assert await last_seen() == first
    clock.now = first + LAST_SEEN_EVERY
    await run(tongcrm_db, ctx, claim)  # an hour after it was last written: it moves to the resolution's time
    moved = await last_seen()
    assert first + LAST_SEEN_EVERY < moved <= first + LAST_SEEN_EVERY + timedelta(seconds=5)
