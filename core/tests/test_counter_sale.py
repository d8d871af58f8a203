"""The counter's single-order path (tongcrm.counter_sale) against the page path it replaces at the counter: the
same sales and returns leave the same rows in every table they touch, on every database backend; and a known
buyer's checkout runs only the statements one receipt needs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from tongcrm.audit.service import SYSTEM
from tongcrm.channels.models import ChannelAccount
from tongcrm.config import Settings
from tongcrm.counter import CounterAccount, CounterService, CounterWork
from tongcrm.ingest.apply import IngestContext, apply_orders_page
from tongcrm.jobs.outbox import OutboxEvent
from tongcrm.members.models import Member
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import IdentityClaim, NormalisedOrder
from tongcrm.points import ledger
from tongcrm.testing.database import TestDatabase
from tongcrm.tiers import service as tiers
from tongcrm.tiers.testing import LADDER

from .counter_orders import NOW, counter_order

MOBILE = "+8613800138000"
#: What a sale or return writes, and what the comparison reads back whole.
TABLES = (
    "members", "identities", "orders", "order_lines", "points_entries", "points_lots", "points_balances",
    "points_line_awards", "member_tiers", "tier_history", "outbox_events", "ingest_quarantine",
)  # fmt: skip


#: (order, is a return): a first sale that makes the member, a sale too small to earn a point (its line's award
#: is still written: on PostgreSQL by the posting's statement, which then posts nothing), sales to them, a
#: partial and a full return, a sale that lifts them to gold, and a replay of it.
STEPS = (
    (counter_order("D-1", (80_000,)), False),
    (counter_order("D-0", (50,)), False),
    (counter_order("D-2", (30_000, 20_000)), False),
    (counter_order("D-2", (30_000, 20_000), back=(0, 20_000), version=1), True),
    (counter_order("D-2", (30_000, 20_000), back=(30_000, 20_000), version=2), True),
    (counter_order("D-3", (450_000, 50_000)), False),
    (counter_order("D-3", (450_000, 50_000)), False),
)


async def _setup(db: TestDatabase) -> CounterAccount:
    async with db.sessions() as s, s.begin():
        await tiers.apply_ladder(s, tiers.TierContext(NOW), LADDER, reason="test", actor=SYSTEM)
        s.add(ChannelAccount(channel="service_desk", name="desk-1", settings={}))
    async with db.sessions() as s:
        row = (await s.execute(sa.select(ChannelAccount).where(ChannelAccount.name == "desk-1"))).scalar_one()
    return CounterAccount(row.id, row.channel, row.name, row.status, dict(row.settings))


async def _snapshot(db: TestDatabase) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    async with db.engine.connect() as conn:
        meta = sa.MetaData()
        await conn.run_sync(lambda c: meta.reflect(c, only=list(TABLES)))
        for name in TABLES:
            table = meta.tables[name]
            rows = await conn.execute(sa.select(table).order_by(*table.primary_key.columns))
            # ciphertexts differ by their random nonce: compare whether they are there
            # (and a reversal's points_changed event is stamped with the wall clock, not the caller's)
            out[name] = [
                {
                    k: (v is not None)
                    if k.endswith("_enc") or (name, k) == ("outbox_events", "occurred_at")
                    else v
                    for k, v in r._mapping.items()
                }
                for r in rows
            ]
    return out


async def _by_page(db: TestDatabase, host: PluginHost, settings: Settings, desk: CounterAccount) -> None:
    ctx = IngestContext(host=host, vault=settings.vault(), clock=lambda: NOW, tz=settings.tz, actor="system")
    claim = IdentityClaim("mobile", MOBILE, "desk")
    for order, _ in STEPS:
        async with db.sessions() as s, s.begin():
            await apply_orders_page(s, ctx, desk.id, desk.channel, [_with(order, claim)])


def _with(order: NormalisedOrder, claim: IdentityClaim) -> NormalisedOrder:
    from dataclasses import replace

    return replace(order, claims=(claim,))


def _counter(db: TestDatabase, host: PluginHost, settings: Settings) -> CounterService:
    """The till's service on the test database, its clock stopped at ``NOW``."""
    return CounterService(db.sessions, db.read_sessions, host, settings, clock=lambda: NOW)


async def _by_counter(db: TestDatabase, host: PluginHost, settings: Settings, desk: CounterAccount) -> None:
    counter = _counter(db, host, settings)
    member: int | None = None
    for order, is_return in STEPS:
        async with counter.unit_of_work(actor=SYSTEM) as uow:
            buyer = (
                await uow.buyer(mobile=MOBILE, evidence="desk")
                if member is None
                else await uow.buyer(member_id=member, evidence="desk")
            )
            if is_return:
                await uow.record_return(desk, order, buyer=buyer)
            else:
                member = (await uow.record_sale(desk, order, buyer=buyer)).member_id


async def test_the_counter_path_writes_what_the_page_path_writes(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings
) -> None:
    host = PluginHost(autoload=False)
    snapshots = []
    run: Callable[[TestDatabase, PluginHost, Settings, CounterAccount], Awaitable[None]]
    for run in (_by_page, _by_counter):
        await tongcrm_db.truncate()
        desk = await _setup(tongcrm_db)
        await run(tongcrm_db, host, tongcrm_settings, desk)
        async with tongcrm_db.sessions() as s:
            assert await ledger.verify(s) == []
        snapshots.append(await _snapshot(tongcrm_db))
    page, counter = snapshots
    assert page["member_tiers"][0]["tier_code"] == "gold"  # the steps did move the tier
    assert {e["kind"] for e in page["points_entries"]} >= {"earn", "reverse"}
    assert any(a["points"] == 0 for a in page["points_line_awards"])  # the sale that earned nothing
    for name in TABLES:
        assert counter[name] == page[name], name


@pytest.fixture
def statements() -> Any:
    seen: list[str] = []

    def on(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(sa.engine.Engine, "before_cursor_execute", on)
    yield seen
    event.remove(sa.engine.Engine, "before_cursor_execute", on)


async def test_a_known_buyer_s_sale_runs_only_what_one_receipt_needs(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings, statements: list[str]
) -> None:
    desk = await _setup(tongcrm_db)
    counter = _counter(tongcrm_db, PluginHost(autoload=False), tongcrm_settings)
    async with counter.unit_of_work(actor=SYSTEM) as uow:
        buyer = await uow.buyer(mobile=MOBILE, evidence="desk")
        member = (await uow.record_sale(desk, counter_order("K-1", (10_000,)), buyer=buyer)).member_id
    assert member is not None
    texts: list[list[str]] = []
    for key in ("K-2", "K-3"):
        statements.clear()
        async with counter.unit_of_work(actor=SYSTEM) as uow:
            buyer = await uow.buyer(member_id=member, evidence="desk")
            sale = await uow.record_sale(desk, counter_order(key, (10_000,)), buyer=buyer)
        assert sale.points_earned == 100 and sale.member_id == member
        texts.append([s for s in statements if s.split()[0] not in {"BEGIN", "COMMIT"}])
    run = texts[0]
    assert not [
        s for s in run if s.startswith(("SET", "SAVEPOINT", "RELEASE"))
    ]  # no re-planning, no savepoint
    assert not [s for s in run if s.startswith("SELECT identities.")]  # the buyer's identity was read once
    assert not [s for s in run if "referral_rewards" in s]  # nobody referred this buyer
    assert sum(1 for s in run if "tier_ladders" in s or "points_rule_sets" in s) == 1  # one settings read
    assert texts[1] == run  # the same fixed texts receipt after receipt: prepared once per connection
    # buyer, stored order with settings, identity seen, order, lines, tier multiplier, award gate, entries,
    # lots, balances, points_changed, upgrade due?, order_changed, the sale's points
    assert len(run) <= 14


async def test_a_buyer_made_a_member_meanwhile_is_attached_not_duplicated(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings
) -> None:
    """The counter looked and found nobody; another receipt made the member before this one's insert: the
    identity's insert meets it, the member made for nothing is dropped, and resolution attaches the sale."""
    desk = await _setup(tongcrm_db)
    counter = _counter(tongcrm_db, PluginHost(autoload=False), tongcrm_settings)
    async with counter.unit_of_work(actor=SYSTEM) as uow:
        stale = await uow.buyer(mobile=MOBILE, evidence="desk")
        first = await uow.record_sale(desk, counter_order("R-1", (10_000,)), buyer=stale)
    assert stale.member_id is None and first.member_id is not None
    async with counter.unit_of_work(actor=SYSTEM) as uow:  # as if looked up before R-1 committed
        second = await uow.record_sale(desk, counter_order("R-2", (20_000,)), buyer=stale)
    assert second.member_id == first.member_id and second.points_available == 300
    async with tongcrm_db.sessions() as s:
        assert (await s.execute(sa.select(sa.func.count()).select_from(Member))).scalar_one() == 1
        created = await s.execute(sa.select(sa.func.count()).where(OutboxEvent.name == "member_created"))
        assert created.scalar_one() == 1
        assert await ledger.verify(s) == []


async def test_a_buyer_read_along_a_claim_is_used_by_that_receipt_alone(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings
) -> None:
    """A receipt's claim reads the sale's buyer in the same statement (PostgreSQL) for the buyer read that
    follows. When that receipt goes no further — its claim met its row (a replay: nothing applied, no buyer
    read), or it was refused on its savepoint before its buyer was read — the read must not be kept for a later
    buyer read of the same unit of work (a batch's return of the same member, receipts later), which reads the
    member as it is then: here merged into another meanwhile."""
    desk = await _setup(tongcrm_db)
    counter = _counter(tongcrm_db, PluginHost(autoload=False), tongcrm_settings)
    made = []
    for key, mobile in (("M-1", MOBILE), ("M-2", "+8613900139000"), ("M-3", "+8613700137000")):
        async with counter.unit_of_work(actor=SYSTEM) as uow:
            buyer = await uow.buyer(mobile=mobile, evidence="desk")
            made.append((await uow.record_sale(desk, counter_order(key, (10_000,)), buyer=buyer)).member_id)
    replayed, refused, survivor = made
    accounts = cast(sa.Table, ChannelAccount.__table__)
    claim = sa.select(accounts.c.id).where(accounts.c.id == sa.bindparam("account_id"))

    async def merge(uow: CounterWork, member_id: int | None) -> None:
        # the member changes after the claim read it (another transaction's merge; here the unit's own statement)
        await uow._session.execute(
            sa.update(Member).where(Member.id == member_id).values(status="merged", merged_into_id=survivor)
        )

    async with counter.unit_of_work(actor=SYSTEM, tables=(accounts,)) as uow:
        met_its_row = await uow.first_with_buyer(claim, {"account_id": -1}, member_id=replayed)
        assert met_its_row is None
        await merge(uow, replayed)
        assert (await uow.buyer(member_id=replayed, evidence="desk")).member_id == survivor

    async def refused_receipt(uow: CounterWork) -> None:
        async with uow.attempt():
            assert await uow.first_with_buyer(claim, {"account_id": desk.id}, member_id=refused) is not None
            raise ReceiptRefused("refused before its buyer was read")

    async with counter.unit_of_work(actor=SYSTEM, tables=(accounts,)) as uow:
        with pytest.raises(ReceiptRefused):
            await refused_receipt(uow)
        await merge(uow, refused)
        assert (await uow.buyer(member_id=refused, evidence="desk")).member_id == survivor


class ReceiptRefused(Exception):
    """A receipt of a batch refused on its savepoint."""
