"""The ingest engine over an in-memory channel: forward-only upserts, quarantine, replays, leases, cursors,
re-authorisation — on both databases."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.channels import service as accounts
from tongcrm.channels.models import ChannelAccount, QuarantinedRecord, SyncState
from tongcrm.crypto import Vault
from tongcrm.db.engine import is_inline_writer
from tongcrm.errors import BadRequest, Conflict
from tongcrm.ingest.apply import IngestContext, apply_orders_page, next_status
from tongcrm.ingest.service import lease_key, page_sessions, sync_account, sync_error_code
from tongcrm.jobs import leases
from tongcrm.jobs.models import OutboxEvent
from tongcrm.members.models import Member
from tongcrm.orders.models import Order, OrderLine
from tongcrm.plugin.errors import ChannelAuthError, ChannelError, ChannelRequestError, ChannelUnavailable
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import OrderStatus
from tongcrm.plugin.types import QuarantinedRecord as QuarantinedIn
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.memory import MemoryChannel, make_order

VAULT = Vault("ingest-test-secret-0123456789")
NOW = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)


@pytest.fixture
def ctx(memory_host: PluginHost) -> IngestContext:
    return IngestContext(host=memory_host, vault=VAULT, clock=lambda: NOW, tz=ZoneInfo("Asia/Shanghai"))


@pytest.fixture
async def account(tongcrm_db: TestDatabase, memory_host: PluginHost) -> ChannelAccount:
    async with tongcrm_db.sessions() as session, session.begin():
        created = await accounts.create_account(
            session, memory_host, VAULT, "memory", "shop-a", {"token": "s3cr3t-token", "shop": "A"}
        )
    return created


async def _count(db: TestDatabase, model: Any) -> int:
    async with db.sessions() as session:
        return (await session.execute(sa.select(sa.func.count()).select_from(model))).scalar_one()


async def _apply(
    db: TestDatabase,
    ctx: IngestContext,
    account: ChannelAccount,
    orders: list[Any],
    quarantined: tuple[Any, ...] = (),
) -> Any:
    async with db.sessions() as session, session.begin():
        return await apply_orders_page(session, ctx, account.id, "memory", orders, quarantined)


# ------------------------------------------------------------------------------------------------ accounts


async def test_account_secrets_are_encrypted_and_never_shown(
    tongcrm_db: TestDatabase, account: ChannelAccount
) -> None:
    async with tongcrm_db.sessions() as session:
        row = (await session.execute(sa.select(ChannelAccount))).scalar_one()
        view = await accounts.account_view(session, "shop-a")
    assert "s3cr3t-token" not in (row.secrets or "")
    assert row.settings == {"shop": "A"}
    assert view.secrets_set == ["token"]
    assert "s3cr3t-token" not in repr(view)
    ctx = accounts.channel_context(row, VAULT, clock=lambda: NOW)
    assert ctx.settings["token"] == "s3cr3t-token"


async def test_account_settings_are_validated(tongcrm_db: TestDatabase, memory_host: PluginHost) -> None:
    async with tongcrm_db.sessions() as session, session.begin():
        with pytest.raises(
            BadRequest, match=r"missing required setting 'token'.*unknown|unknown setting\(s\) colour"
        ):
            await accounts.create_account(
                session, memory_host, VAULT, "memory", "x", {"shop": "A", "colour": "red"}
            )
        with pytest.raises(BadRequest, match="no channel named 'youzan'"):
            await accounts.create_account(session, memory_host, VAULT, "youzan", "y", {})


async def test_duplicate_account_name_conflicts(
    tongcrm_db: TestDatabase, memory_host: PluginHost, account: ChannelAccount
) -> None:
    async with tongcrm_db.sessions() as session, session.begin():
        with pytest.raises(Conflict):
            await accounts.create_account(
                session, memory_host, VAULT, "memory", "shop-a", {"token": "t", "shop": "B"}
            )


# ------------------------------------------------------------------------------------------------ applying pages


@pytest.mark.parametrize(
    ("stored", "incoming", "kept"),
    [
        (None, OrderStatus.PAID, OrderStatus.PAID),
        ("shipped", OrderStatus.PAID, OrderStatus.SHIPPED),
        ("paid", OrderStatus.COMPLETED, OrderStatus.COMPLETED),
        ("completed", OrderStatus.REFUNDED, OrderStatus.REFUNDED),
        ("refunded", OrderStatus.PAID, OrderStatus.REFUNDED),
        ("closed", OrderStatus.CREATED, OrderStatus.CLOSED),
        ("created", OrderStatus.CLOSED, OrderStatus.CLOSED),
    ],
)
def test_status_only_moves_forward(stored: str | None, incoming: OrderStatus, kept: OrderStatus) -> None:
    assert next_status(stored, incoming) is kept


async def test_same_buyer_is_one_member_and_orders_carry_lines(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    result = await _apply(
        tongcrm_db,
        ctx,
        account,
        [
            make_order("o1", "b1"),
            make_order("o2", "b1", lines=(("a", 100), ("b", 250))),
            make_order("o3", "b2"),
        ],
    )
    assert result.applied == 3
    assert result.members_created == 2
    async with tongcrm_db.sessions() as session:
        members = {r.external_id: r.member_id for r in (await session.execute(sa.select(Order))).scalars()}
        lines = (await session.execute(sa.select(sa.func.count()).select_from(OrderLine))).scalar_one()
    assert members["o1"] == members["o2"] != members["o3"]
    assert lines == 4
    assert await _count(tongcrm_db, Member) == 2


async def test_replaying_a_page_changes_nothing(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    page = [make_order("o1", "b1"), make_order("o2", "b2", status=OrderStatus.COMPLETED)]
    await _apply(tongcrm_db, ctx, account, page)
    before = (
        await _count(tongcrm_db, Order),
        await _count(tongcrm_db, OutboxEvent),
        await _count(tongcrm_db, Member),
    )
    again = await _apply(tongcrm_db, ctx, account, page)
    assert again.applied == 0 and again.unchanged == 2
    after = (
        await _count(tongcrm_db, Order),
        await _count(tongcrm_db, OutboxEvent),
        await _count(tongcrm_db, Member),
    )
    assert before == after


async def test_a_page_larger_than_one_upsert_batch_stores_every_order_and_line_once(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    """A bulk import's page of 1,000 orders is upserted in batches on SQLite (its VALUES lists hold 512 rows at
    most): every order and line is written, each line under its own order, and a replay changes nothing."""
    page = [
        make_order(f"o{i}", f"b{i % 300}", lines=(("a", 100 + i), ("b", 7)) if i % 2 else (("a", 100 + i),))
        for i in range(1100)
    ]
    result = await _apply(tongcrm_db, ctx, account, page)
    assert result.applied == 1100
    async with tongcrm_db.sessions() as session:
        stored = (
            await session.execute(
                sa.select(Order.external_id, OrderLine.external_id, OrderLine.amount_fen).join(
                    OrderLine, OrderLine.order_id == Order.id
                )
            )
        ).all()
    assert len(stored) == 1100 + 550
    assert {(o, line, amount) for o, line, amount in stored if line == "a"} == {
        (f"o{i}", "a", 100 + i) for i in range(1100)
    }
    assert await _count(tongcrm_db, Member) == 300
    again = await _apply(tongcrm_db, ctx, account, page)
    assert (again.applied, again.unchanged) == (0, 1100)
    assert await _count(tongcrm_db, OrderLine) == 1650


async def test_older_version_never_overwrites_a_newer_one(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    await _apply(tongcrm_db, ctx, account, [make_order("o1", "b1", status=OrderStatus.SHIPPED, minutes=10)])
    late = await _apply(
        tongcrm_db, ctx, account, [make_order("o1", "b1", status=OrderStatus.PAID, minutes=5)]
    )
    assert late.applied == 0
    newer_but_backwards = await _apply(
        tongcrm_db, ctx, account, [make_order("o1", "b1", status=OrderStatus.PAID, minutes=20)]
    )
    assert newer_but_backwards.applied == 1
    async with tongcrm_db.sessions() as session:
        order = (await session.execute(sa.select(Order))).scalar_one()
    assert order.status == "shipped"
    assert order.modified_at == make_order("o1", minutes=20).modified_at


async def test_partial_refund_per_line_is_recorded(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    lines = (("a", 5_000), ("b", 3_000))
    await _apply(tongcrm_db, ctx, account, [make_order("o1", "b1", lines=lines)])
    await _apply(
        tongcrm_db, ctx, account, [make_order("o1", "b1", lines=lines, minutes=3, refunded={"b": 3_000})]
    )
    async with tongcrm_db.sessions() as session:
        order = (await session.execute(sa.select(Order))).scalar_one()
        refunds = {
            r.external_id: (r.refunded_fen, r.refund_status)
            for r in (await session.execute(sa.select(OrderLine))).scalars()
        }
    assert order.refunded_fen == 3_000
    assert refunds == {"a": (0, "none"), "b": (3_000, "refunded")}


async def test_malformed_and_unresolvable_records_are_quarantined_not_dropped(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    bad_claim = make_order("o9", None)
    bad_claim = type(bad_claim)(
        **{
            **{f: getattr(bad_claim, f) for f in bad_claim.__dataclass_fields__},
            "claims": (make_order("x").claims[0].__class__("unknown.kind", "v"),),
        }
    )
    result = await _apply(
        tongcrm_db,
        ctx,
        account,
        [make_order("o1", "b1"), bad_claim],
        (QuarantinedIn("o7", "payment is not a number: 'abc'", '{"tid": "o7", "payment": "abc"}'),),
    )
    assert result.applied == 1
    assert result.quarantined == 2
    again = await _apply(
        tongcrm_db,
        ctx,
        account,
        [],
        (QuarantinedIn("o7", "payment is not a number: 'abc'", '{"tid": "o7", "payment": "abc"}'),),
    )
    assert again.quarantined == 1
    async with tongcrm_db.sessions() as session:
        rows = list(
            (
                await session.execute(sa.select(QuarantinedRecord).order_by(QuarantinedRecord.external_id))
            ).scalars()
        )
    assert [(r.external_id, r.reason.split(":")[0]) for r in rows] == [
        ("o7", "payment is not a number"),
        ("o9", "identity"),
    ]


async def test_orders_without_claims_are_kept_without_a_member(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    await _apply(tongcrm_db, ctx, account, [make_order("anon", None)])
    async with tongcrm_db.sessions() as session:
        order = (await session.execute(sa.select(Order))).scalar_one()
    assert order.member_id is None


async def test_order_changed_events_are_written_with_the_page(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    await _apply(tongcrm_db, ctx, account, [make_order("o1", "b1", status=OrderStatus.CREATED)])
    await _apply(tongcrm_db, ctx, account, [make_order("o1", "b1", status=OrderStatus.PAID, minutes=1)])
    async with tongcrm_db.sessions() as session:
        events = [
            e.payload
            for e in (
                await session.execute(
                    sa.select(OutboxEvent).where(OutboxEvent.name == "order_changed").order_by(OutboxEvent.id)
                )
            ).scalars()
        ]
    assert [(e["status"], e["previous"]) for e in events] == [("created", None), ("paid", "created")]
    # when the platform changed the order, so care flows can tell a first sync's history from news
    changed = [datetime.fromisoformat(e["changed_at"]) for e in events]
    assert changed[0].tzinfo is not None and changed[1] - changed[0] == timedelta(minutes=1)


# ------------------------------------------------------------------------------------------------ syncing


async def test_sync_walks_pages_and_stores_the_cursor(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount, memory_channel: MemoryChannel
) -> None:
    memory_channel.add_page([make_order("o1", "b1"), make_order("o2", "b2")])
    memory_channel.add_page([make_order("o3", "b1")])
    report = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert (report.pages, report.applied, report.caught_up, report.error) == (2, 3, True, None)
    async with tongcrm_db.sessions() as session:
        state = (await session.execute(sa.select(SyncState))).scalar_one()
    assert state.cursor == '{"page": 2}' and state.orders == 3 and state.last_success_at is not None
    memory_channel.add_page([make_order("o4", "b3")])
    resumed = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert resumed.applied == 1
    assert memory_channel.fetched[-1] == '{"page": 2}'


async def test_a_sync_writes_each_pages_order_changed_events_with_its_cursor(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount, memory_channel: MemoryChannel
) -> None:
    """The sync writes a page's order_changed events with its cursor (one statement on PostgreSQL): the
    same events as a page applied alone, the page's last, committed with the cursor that follows it."""
    memory_channel.add_page([make_order("o1", "b1"), make_order("o2", "b2")])
    memory_channel.add_page([make_order("o1", "b1", status=OrderStatus.SHIPPED, minutes=1)])
    report = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert (report.pages, report.applied, report.error) == (2, 3, None)
    async with tongcrm_db.sessions() as session:
        events = (await session.execute(sa.select(OutboxEvent).order_by(OutboxEvent.id))).scalars().all()
        state = (await session.execute(sa.select(SyncState))).scalar_one()
    changed = [(e.payload["external_id"], e.payload["status"], e.payload["previous"]) for e in events
               if e.name == "order_changed"]  # fmt: skip
    assert changed == [("o1", "paid", None), ("o2", "paid", None), ("o1", "shipped", "paid")]
    assert all(e.occurred_at == ctx.clock() for e in events if e.name == "order_changed")
    # each page's order_changed events come after everything else the page emitted
    first_page = [e.name for e in events][: [e.name for e in events].index("order_changed") + 2]
    assert first_page[-2:] == ["order_changed", "order_changed"]
    assert "order_changed" not in first_page[:-2] and "member_created" in first_page
    assert state.cursor == '{"page": 2}' and state.pages == 2 and state.orders == 3
    # a replay changes nothing and emits nothing
    await sync_account(tongcrm_db.sessions, ctx, "shop-a", since=datetime(2020, 1, 1, tzinfo=UTC))
    assert await _count(tongcrm_db, OutboxEvent) == len(events)


def _fail_second_page(monkeypatch: pytest.MonkeyPatch, error: Exception) -> list[int]:
    """Make the sync's second page application raise ``error`` after its writes (once); returns the calls."""
    import tongcrm.ingest.service as engine

    real = engine.apply_orders_page
    calls: list[int] = []

    async def fail_on_second(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(calls) + 1)
        result = await real(*args, **kwargs)
        if len(calls) == 2:
            raise error
        return result

    monkeypatch.setattr(engine, "apply_orders_page", fail_on_second)
    return calls


async def test_a_crash_mid_page_replays_that_page_only(
    tongcrm_db: TestDatabase,
    ctx: IngestContext,
    account: ChannelAccount,
    memory_channel: MemoryChannel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    memory_channel.add_page([make_order("o1", "b1")])
    memory_channel.add_page([make_order("o2", "b2")])
    import tongcrm.ingest.service as engine

    real = engine.apply_orders_page
    _fail_second_page(monkeypatch, RuntimeError("power cut"))
    with pytest.raises(RuntimeError, match="power cut"):
        await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert await _count(tongcrm_db, Order) == 1  # page 2 rolled back with its cursor
    monkeypatch.setattr(engine, "apply_orders_page", real)
    report = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert report.applied == 1 and report.caught_up
    assert await _count(tongcrm_db, Order) == 2


async def test_a_page_that_loses_to_a_concurrent_one_is_redone_from_the_committed_cursor(
    tongcrm_db: TestDatabase,
    ctx: IngestContext,
    account: ChannelAccount,
    memory_channel: MemoryChannel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two shops of one brand share buyers: their pages race to create the same members, and on PostgreSQL can
    deadlock. The loser's page rolled back whole with its cursor; the sync redoes it instead of failing."""
    memory_channel.add_page([make_order("o1", "b1")])
    memory_channel.add_page([make_order("o2", "b2"), make_order("o3", "b1")])

    class Deadlock(Exception):
        sqlstate = "40P01"

    calls = _fail_second_page(monkeypatch, sa.exc.DBAPIError("statement", {}, Deadlock("deadlock detected")))
    report = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert (report.pages, report.applied, report.caught_up, report.error) == (2, 3, True, None)
    assert calls == [1, 2, 3] and memory_channel.fetched[-1] == '{"page": 1}', (
        "the lost page was fetched again"
    )
    assert await _count(tongcrm_db, Order) == 3 and await _count(tongcrm_db, Member) == 2


async def test_two_workers_never_sync_one_account_at_once(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount, memory_channel: MemoryChannel
) -> None:
    memory_channel.add_page([make_order("o1", "b1")])
    async with tongcrm_db.sessions() as session, session.begin():
        assert await leases.acquire(session, lease_key(account.id), "other-worker", ctx.lease_ttl, now=NOW)
    with pytest.raises(Conflict, match="being synced by other-worker"):
        await sync_account(tongcrm_db.sessions, ctx, "shop-a")


@pytest.mark.parametrize("page", [["o1", "o2"], []], ids=["orders", "empty"])
async def test_a_page_renews_its_lease_and_is_refused_once_another_worker_holds_it(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount, page: list[str]
) -> None:
    key, ttl = lease_key(account.id), timedelta(minutes=2)
    orders = [make_order(ext, "b1") for ext in page]
    async with tongcrm_db.sessions() as session, session.begin():
        assert await leases.acquire(session, key, "me", ttl, now=NOW)
    later = NOW + timedelta(minutes=1)
    async with tongcrm_db.sessions() as session, session.begin():
        result = await apply_orders_page(
            session, ctx, account.id, "memory", orders, lease=leases.Renewal(key, "me", ttl, later)
        )
    assert result.applied == len(page)
    async with tongcrm_db.sessions() as session:
        # renewed: another worker cannot take it before the renewal runs out
        assert await leases.holder_of(session, key, now=later + timedelta(seconds=90)) == "me"
    async with tongcrm_db.sessions() as session, session.begin():
        assert await leases.acquire(session, key, "other-worker", ttl, now=later + ttl + timedelta(seconds=1))
    async with tongcrm_db.sessions() as session:
        with pytest.raises(leases.NotHeld):
            async with session.begin():
                await apply_orders_page(
                    session,
                    ctx,
                    account.id,
                    "memory",
                    [make_order("o3", "b2")],
                    lease=leases.Renewal(key, "me", ttl, later + ttl + timedelta(seconds=2)),
                )
    assert await _count(tongcrm_db, Order) == len(page)
    async with tongcrm_db.sessions() as session:
        assert await leases.holder_of(session, key, now=later + ttl + timedelta(seconds=2)) == "other-worker"


async def test_expired_session_stops_the_account_until_reauthorised(
    tongcrm_db: TestDatabase,
    ctx: IngestContext,
    account: ChannelAccount,
    memory_channel: MemoryChannel,
    memory_host: PluginHost,
) -> None:
    memory_channel.add_page([make_order("o1", "b1")])
    memory_channel.fail_at[0] = ChannelAuthError("Invalid session:session-expired", code="27")
    report = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert report.needs_reauth
    async with tongcrm_db.sessions() as session:
        listed = await accounts.list_accounts(session)
    assert listed[0].status == "needs_reauth" and "session-expired" in listed[0].status_detail
    async with tongcrm_db.sessions() as session:
        state = (await session.execute(sa.select(SyncState))).scalar_one()
    # the English sentence for the API and the logs, and its code (from the error's class) for the console
    assert (state.last_error or "").startswith("authorisation failed: Invalid session")
    assert state.last_error_code == "sync.auth_failed"
    skipped = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert skipped.pages == 0 and skipped.needs_reauth
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.update_secrets(session, memory_host, VAULT, "shop-a", {"token": "fresh"})
    resumed = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert resumed.applied == 1 and resumed.error is None
    async with tongcrm_db.sessions() as session:
        state = (await session.execute(sa.select(SyncState))).scalar_one()
    assert state.last_error is None and state.last_error_code is None


def test_a_sync_error_s_code_comes_from_the_contract_s_error_class_whatever_the_channel() -> None:
    class SessionExpired(ChannelAuthError):  # a plugin's own subclass is coded as its contract class
        pass

    assert sync_error_code(SessionExpired("x", code="27")) == "sync.auth_failed"
    assert sync_error_code(ChannelUnavailable("x")) == "sync.unavailable"
    assert sync_error_code(ChannelRequestError("x")) == "sync.request_refused"
    assert sync_error_code(ChannelError("x")) == "sync.platform_error"


async def test_platform_outage_ends_the_run_with_the_error_recorded(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount, memory_channel: MemoryChannel
) -> None:
    memory_channel.add_page([make_order("o1", "b1")])
    memory_channel.add_page([make_order("o2", "b1")])
    memory_channel.fail_at[1] = ChannelUnavailable("isp.top-remote-connection-timeout", code="isp")
    report = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert report.applied == 1 and report.error and "isp.top-remote" in report.error
    async with tongcrm_db.sessions() as session:
        state = (await session.execute(sa.select(SyncState))).scalar_one()
    assert state.last_error and state.cursor == '{"page": 1}' and state.last_error_code == "sync.unavailable"
    report = await sync_account(tongcrm_db.sessions, ctx, "shop-a")
    assert report.applied == 1 and report.error is None


async def test_a_growing_sync_analyses_the_tables_it_writes_on_a_geometric_schedule(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tongcrm.db import stats
    from tongcrm.ingest import apply

    analysed: list[tuple[str, ...]] = []

    async def analyse(session: Any, tables: Sequence[str]) -> None:
        analysed.append(tuple(tables))

    monkeypatch.setattr(stats, "_SCHEDULES", {})
    monkeypatch.setattr(stats, "FIRST_ANALYSE", 2)
    monkeypatch.setattr(stats, "analyse", analyse)
    for n in range(1, 5):  # 1, 2, 3, 4 orders written: due at 2 and 4
        await _apply(tongcrm_db, ctx, account, [make_order(f"g{n}", f"b{n}")])
        expected = {1: 0, 2: 1, 3: 1, 4: 2}[n] if tongcrm_db.backend == "postgresql" else 0
        assert analysed == [apply.GROWN_TABLES] * expected
    # a replayed order writes nothing and counts nothing
    await _apply(tongcrm_db, ctx, account, [make_order("g4", "b4")])
    assert len(analysed) == (2 if tongcrm_db.backend == "postgresql" else 0)


async def test_truncate_empties_every_table_and_keeps_foreign_keys_enforced(
    tongcrm_db: TestDatabase, ctx: IngestContext, account: ChannelAccount
) -> None:
    """``TestDatabase.truncate`` between tests: members, orders, lines and events of a page all go (SQLite
    empties the tables with its foreign keys off), and a reference to a missing row is still refused
    afterwards."""
    await _apply(tongcrm_db, ctx, account, [make_order("o1", "b1"), make_order("o2", "b2")])
    await tongcrm_db.truncate()
    for model in (Member, Order, OrderLine, OutboxEvent, ChannelAccount):
        assert await _count(tongcrm_db, model) == 0, model
    orphan = OrderLine(
        order_id=999, external_id="l", sku="s", title="t", quantity=1, unit_price_fen=1, amount_fen=1
    )
    with pytest.raises(sa.exc.IntegrityError):
        async with tongcrm_db.sessions() as session, session.begin():
            session.add(orphan)


async def test_a_sync_applies_its_pages_inline_on_sqlite(
    tongcrm_db: TestDatabase, account: ChannelAccount
) -> None:
    """On a SQLite file the pages go through an inline writer of the sync's own on the same database (what
    it commits, the ordinary engine reads), disposed at the end; PostgreSQL keeps the sessions it was given."""
    async with page_sessions(tongcrm_db.sessions) as pages:
        if tongcrm_db.backend == "postgresql":
            assert pages is tongcrm_db.sessions
            return
        engine = pages.kw["bind"]
        assert pages is not tongcrm_db.sessions and is_inline_writer(engine)
        async with pages() as session, session.begin():
            await session.execute(
                sa.update(ChannelAccount)
                .where(ChannelAccount.id == account.id)
                .values(status_detail="inline")
            )
        async with tongcrm_db.sessions() as session:
            detail = await session.scalar(
                sa.select(ChannelAccount.status_detail).where(ChannelAccount.id == account.id)
            )
        assert detail == "inline"
    assert engine.sync_engine.pool.checkedout() == 0
