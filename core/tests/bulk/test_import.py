"""Bulk import on both databases: a file twice, a crash and resume, bad rows, members that already exist through
channel identities, historical orders and opening balances."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.bulk import service, staged
from tongcrm.bulk.mapping import parse_mapping
from tongcrm.bulk.models import BulkImport, BulkImportError, BulkImportKey
from tongcrm.crypto import Vault
from tongcrm.errors import BadRequest, Conflict
from tongcrm.identity.models import Identity
from tongcrm.ingest.apply import IngestContext, apply_orders_page
from tongcrm.jobs.models import Lease, OutboxEvent
from tongcrm.members.masked import masked_index
from tongcrm.members.models import Member
from tongcrm.members.phone import MOBILE_CONTEXT
from tongcrm.orders.models import Order
from tongcrm.plugin import hookimpl
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import MemberMatch, ResolutionDecision
from tongcrm.points.ledger import verify
from tongcrm.points.models import PointsBalance, PointsEntry, PointsLot
from tongcrm.points.service import statement
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.memory import make_order

VAULT = Vault("bulk-test-secret-0123456789abcdef")
NOW = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)
TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def ctx(memory_host: PluginHost) -> service.ImportContext:
    return service.ImportContext(host=memory_host, vault=VAULT, clock=lambda: NOW, tz=TZ)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


async def scalar(db: TestDatabase, query: Any) -> Any:
    async with db.sessions() as session:
        return (await session.execute(query)).scalar_one()


async def count(db: TestDatabase, model: Any, *where: Any) -> int:
    return int(await scalar(db, sa.select(sa.func.count()).select_from(model).where(*where)))


async def do_import(
    db: TestDatabase,
    ctx: service.ImportContext,
    kind: str,
    path: Path,
    *,
    fmt: str = "csv",
    source: str = "legacy",
    page_size: int = 1000,
    mapping: dict[str, str] | None = None,
) -> tuple[BulkImport, service.Progress]:
    job = await service.open_import(db.sessions, ctx, kind, path, fmt, source=source, mapping=mapping)
    progress = await service.run_import(db.sessions, ctx, job.id, path, mapping=mapping, page_size=page_size)
    async with db.sessions() as session:
        return await service.get_import(session, job.id), progress


MEMBERS_CSV = (
    "member_id,mobile,name,city\n"
    "M1,13800138001,张三,上海\n"
    "M2,13800138002,李四,北京\n"
    "M3,13800138003,王五,\n"
    "M4,,赵六,杭州\n"
    "M5,13800138005,,\n"
    "M6,13800138006,孙七,\n"
)


async def test_the_same_file_twice_imports_nothing_the_second_time(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    path = write(tmp_path / "members.csv", MEMBERS_CSV)
    first, _ = await do_import(tongcrm_db, ctx, "members", path)
    assert (first.status, first.imported, first.skipped, first.failed, first.line_reached) == (
        "finished", 6, 0, 0, 7,
    )  # fmt: skip
    assert await count(tongcrm_db, Member) == 6
    identities = await count(tongcrm_db, Identity)

    again, progress = await do_import(tongcrm_db, ctx, "members", path)
    assert again.id == first.id and progress.records_done == 0 and again.imported == 6
    # the same rows in another file (another digest) are skipped by their natural keys
    other = write(tmp_path / "again.csv", MEMBERS_CSV + "M7,13800138007,周八,\n")
    second, _ = await do_import(tongcrm_db, ctx, "members", other)
    assert second.id != first.id
    assert (second.imported, second.skipped, second.failed) == (1, 6, 0)
    assert await count(tongcrm_db, Member) == 7
    assert await count(tongcrm_db, Identity) == identities + 2  # M7's member id and mobile


async def test_a_crash_mid_file_resumes_at_the_next_page(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "members.csv", MEMBERS_CSV)
    real = service._apply_members
    calls = 0

    async def crashing(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        outcome = await real(*args)
        if calls == 2:  # the second page fails after its members were written, before the commit
            raise RuntimeError("power cut")
        return outcome

    monkeypatch.setattr(service, "_apply_members", crashing)
    job = await service.open_import(tongcrm_db.sessions, ctx, "members", path, "csv")
    with pytest.raises(RuntimeError, match="power cut"):
        await service.run_import(tongcrm_db.sessions, ctx, job.id, path, page_size=2)
    async with tongcrm_db.sessions() as session:
        crashed = await service.get_import(session, job.id)
    assert (crashed.status, crashed.line_reached, crashed.imported) == ("failed", 3, 2)
    assert "power cut" in (crashed.error or "")
    assert await count(tongcrm_db, Member) == 2  # the second page rolled back whole

    monkeypatch.setattr(service, "_apply_members", real)
    resumed = await service.run_import(tongcrm_db.sessions, ctx, job.id, path, page_size=2)
    assert resumed.records_done == 4  # lines 4-7 only
    async with tongcrm_db.sessions() as session:
        done = await service.get_import(session, job.id)
    assert (done.status, done.imported, done.skipped, done.line_reached) == ("finished", 6, 0, 7)
    assert await count(tongcrm_db, Member) == 6
    # each member once: six imported ids
    assert await count(tongcrm_db, Identity, Identity.kind == "import.member_id") == 6


async def test_a_lease_taken_over_between_pages_stops_the_import_before_its_next_page(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease is renewed in each page's transaction (on PostgreSQL in the statement that claims the page's
    keys): a page that finds another process holding it claims nothing and writes nothing."""
    path = write(tmp_path / "members.csv", MEMBERS_CSV)
    real = service._import_page
    calls = 0

    async def taken_over(session: Any, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # another process took the lease after the first page
            await session.execute(
                sa.update(Lease).values(holder="elsewhere:1", expires_at=NOW + timedelta(hours=1))
            )
        return await real(session, *args)

    monkeypatch.setattr(service, "_import_page", taken_over)
    job = await service.open_import(tongcrm_db.sessions, ctx, "members", path, "csv")
    with pytest.raises(Conflict, match="lost the lease"):
        await service.run_import(tongcrm_db.sessions, ctx, job.id, path, page_size=2)
    async with tongcrm_db.sessions() as session:
        stopped = await service.get_import(session, job.id)
    assert (stopped.status, stopped.line_reached, stopped.imported) == ("failed", 3, 2)
    assert await count(tongcrm_db, BulkImportKey) == 2  # the second page's keys were not claimed
    assert await count(tongcrm_db, Member) == 2


async def test_bad_rows_are_kept_with_line_numbers_and_reasons(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "members.csv",
        "member_id,mobile,name\n"
        "M1,13800138001,张三\n"
        "M2,12345,李四\n"  # line 3: not a mobile
        ",13800138003,王五\n"  # line 4: no member id
        "M4,13800138004\n"  # line 5: a field short
        'M5,13800138005,"多行\n名字"\n'  # lines 6-7: one record over two lines
        "M6,13800138006,孙七\n",  # line 8
    )
    job, _ = await do_import(tongcrm_db, ctx, "members", path)
    assert (job.imported, job.failed) == (3, 3)
    async with tongcrm_db.sessions() as session:
        errors = await service.import_errors(session, job.id)
    reasons = {e.line: e.reason for e in errors}
    assert set(reasons) == {3, 4, 5}
    assert "mobile" in reasons[3] and "phone number" in reasons[3]
    assert "member_id is missing" in reasons[4]
    assert "2 fields where the header has 3" in reasons[5]
    bad_mobile = next(e for e in errors if e.line == 3)
    assert json.loads(bad_mobile.row) == {"member_id": "M2", "mobile": "****", "name": "李*"}
    assert bad_mobile.key == "legacy/M2"
    # the failed row's key was given back: a corrected file imports it
    fixed = write(tmp_path / "fixed.csv", "member_id,mobile,name\nM2,13800138002,李四\n")
    again, _ = await do_import(tongcrm_db, ctx, "members", fixed)
    assert (again.imported, again.skipped) == (1, 0)

    jsonl = write(
        tmp_path / "members.jsonl",
        '{"member_id": "J1", "mobile": "13900139001"}\n'
        "\n"
        "{not json\n"  # line 3
        "[1, 2]\n"  # line 4
        '{"member_id": 42, "mobile": "13900139005", "identity.nowhere.id": "x"}\n',  # line 5: unknown kind
    )
    job2, _ = await do_import(tongcrm_db, ctx, "members", jsonl, fmt="jsonl")
    assert (job2.imported, job2.failed) == (1, 3)
    async with tongcrm_db.sessions() as session:
        reasons = {e.line: e.reason for e in await service.import_errors(session, job2.id)}
    assert reasons[3].startswith("the row is not JSON") and reasons[4] == "the row is not a JSON object"
    assert "unknown identity kind 'nowhere.id'" in reasons[5]


async def test_members_known_through_channel_identities_merge_instead_of_duplicating(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, memory_host: PluginHost, tmp_path: Path
) -> None:
    channel = await _channel_buyers(tongcrm_db, memory_host)
    assert await count(tongcrm_db, Member) == 2
    buyer1, buyer2 = channel["buyer-1"], channel["buyer-2"]
    path = write(
        tmp_path / "members.csv",
        "member_id,mobile,name,taobao_id\n"
        "M1,13800138001,张三,buyer-1\n"  # the channel's buyer-1, now with a mobile
        "M2,13700137002,李四,\n"  # buyer-2's mobile: the same person
        "M3,13800138001,张三,buyer-2\n",  # M1's mobile and buyer-2: both named, so they merge
    )
    job, _ = await do_import(tongcrm_db, ctx, "members", path, mapping={"identity.memory.buyer": "taobao_id"})
    assert (job.imported, job.failed) == (3, 0)
    assert await count(tongcrm_db, Member, Member.status == "active") == 1
    async with tongcrm_db.sessions() as session:
        pairs = (await session.execute(sa.select(Identity.value, Identity.member_id))).all()
        owners = {value: member for value, member in pairs}
        survivor = await session.get(Member, min(buyer1, buyer2))
    assert survivor is not None and survivor.status == "active"
    assert {owners["legacy/M1"], owners["legacy/M2"], owners["legacy/M3"]} == {survivor.id}
    assert owners["buyer-1"] == owners["buyer-2"] == survivor.id


async def test_historical_orders_attach_to_members_without_earning_or_messaging(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    await do_import(tongcrm_db, ctx, "members", write(tmp_path / "m.csv", MEMBERS_CSV))
    events_before = await count(tongcrm_db, OutboxEvent)
    path = write(
        tmp_path / "orders.csv",
        "order_id,member_id,placed_at,total_fen,paid_fen,refunded_fen,status,title\n"
        "O1,M1,2025-03-01 10:00:00,19900,19900,0,completed,连衣裙\n"
        "O2,M1,2025-04-01T10:00:00+08:00,5000,5000,5000,refunded,\n"
        "O3,M9,2025-05-01 10:00,1000,,,,\n"  # a member the members file did not have: created
        "O4,M2,yesterday,100,100,0,completed,\n"  # bad time
        "O5,M2,2025-05-01 10:00,100,100,200,completed,\n"  # refund over payment
        "O6,M2,2025-05-01 10:00,100,100,0,lost,\n",  # bad status
    )
    job, _ = await do_import(tongcrm_db, ctx, "orders", path)
    assert (job.imported, job.failed) == (3, 3)
    async with tongcrm_db.sessions() as session:
        reasons = {e.line: e.reason for e in await service.import_errors(session, job.id)}
        orders = {o.external_id: o for o in (await session.execute(sa.select(Order))).scalars()}
        m1 = (
            await session.execute(sa.select(Identity.member_id).where(Identity.value == "legacy/M1"))
        ).scalar_one()
    assert "placed_at 'yesterday' is not an ISO 8601 time" in reasons[5]
    assert "refunded_fen 200 exceeds paid_fen 100" in reasons[6]
    assert "status 'lost'" in reasons[7]
    assert orders["O1"].member_id == orders["O2"].member_id == m1
    assert orders["O1"].channel == "import" and orders["O1"].placed_at == datetime(2025, 3, 1, 2, tzinfo=UTC)
    assert orders["O2"].refunded_fen == 5000 and orders["O3"].paid_fen == 1000
    assert await count(tongcrm_db, PointsEntry) == 0  # history earns nothing: balances come as opening
    assert await count(tongcrm_db, OutboxEvent) == events_before + 1  # M9's member_created, no order_changed
    # the same orders in another file are not imported twice
    again, _ = await do_import(tongcrm_db, ctx, "orders", write(tmp_path / "o2.csv", path.read_text() + "\n"))
    assert (again.imported, again.skipped) == (0, 3)
    assert await count(tongcrm_db, Order) == 3


async def test_opening_balances_are_ledger_entries_with_their_expiry(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    await do_import(tongcrm_db, ctx, "members", write(tmp_path / "m.csv", MEMBERS_CSV))
    expiry = NOW + timedelta(days=200)
    path = write(
        tmp_path / "points.jsonl",
        f'{{"member_id": "M1", "points": 1200, "expires_at": "{expiry.isoformat()}", "note": "2025 balance"}}\n'
        '{"member_id": "M2", "points": 300}\n'
        '{"member_id": "M3", "points": -5}\n'
        '{"member_id": "M4", "points": 10, "expires_at": "2020-01-01T00:00:00+08:00"}\n'
        '{"member_id": "M1", "points": 99}\n',  # M1 again: one opening balance per member
    )
    job, _ = await do_import(tongcrm_db, ctx, "points", path, fmt="jsonl")
    assert (job.imported, job.skipped, job.failed) == (2, 1, 2)
    async with tongcrm_db.sessions() as session:
        entries = (await session.execute(sa.select(PointsEntry).order_by(PointsEntry.id))).scalars().all()
        lots = (await session.execute(sa.select(PointsLot).order_by(PointsLot.id))).scalars().all()
        balances = {
            b.member_id: b.available for b in (await session.execute(sa.select(PointsBalance))).scalars()
        }
        reasons = {e.line: e.reason for e in await service.import_errors(session, job.id)}
        assert await verify(session) == []
        told = await statement(session, entries[0].member_id, tz=TZ)
    assert (
        told.entries[0].explanation
        == "opening balance of 1200 carried over: imported from legacy: 2025 balance"
    )
    assert [(e.kind, e.amount) for e in entries] == [("opening", 1200), ("opening", 300)]
    assert entries[0].reason == "imported from legacy: 2025 balance"
    assert lots[0].expires_at == expiry and lots[1].expires_at is None and lots[0].status == "available"
    assert sorted(balances.values()) == [300, 1200]
    assert "points must be at least 1" in reasons[3] and "expires_at has passed" in reasons[4]
    # idempotent: the file again posts nothing
    await do_import(
        tongcrm_db, ctx, "points", write(tmp_path / "p2.jsonl", path.read_text() + "\n"), fmt="jsonl"
    )
    assert await count(tongcrm_db, PointsEntry) == 2


def test_a_mapping_names_documented_columns_only() -> None:
    assert parse_mapping({"mobile": "手机号", "identity.taobao.ouid": "ouid"}, "members") == {
        "mobile": "手机号",
        "identity.taobao.ouid": "ouid",
    }
    with pytest.raises(BadRequest, match="'phone' is not a column of members files"):
        parse_mapping({"phone": "手机号"}, "members")
    with pytest.raises(BadRequest, match="unknown import kind 'coupons'"):
        parse_mapping({}, "coupons")
    # a kind of any size is quoted by its first 40 characters only
    with pytest.raises(
        BadRequest, match=r"unknown import kind 'k{40}'…; kinds: members, orders, points$"
    ) as long:
        parse_mapping({}, "k" * 100_000)
    assert len(long.value.message) < 120
    # keys of any size and number are quoted by their first 40 characters, the first five of them
    with pytest.raises(
        BadRequest, match=r"'x{40}'… is not a column of members files, .* and 95 more \("
    ) as many:
        parse_mapping({"x" * 100_000 + str(i): "y" for i in range(100)}, "members")
    assert len(many.value.message) < 600


async def test_a_member_a_balance_row_creates_comes_from_the_import_like_one_a_members_file_creates(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    await do_import(tongcrm_db, ctx, "members", write(tmp_path / "m.csv", "member_id\nM1\n"), source="youzan")
    await do_import(
        tongcrm_db, ctx, "points", write(tmp_path / "p.csv", "member_id,points\nZZ,5\n"), source="youzan"
    )
    async with tongcrm_db.sessions() as session:
        origins = (await session.execute(sa.select(Member.source_channel, Member.source_campaign))).all()
    assert [tuple(o) for o in origins] == [("import", "youzan"), ("import", "youzan")]


async def test_a_file_that_cannot_be_read_as_a_whole_is_refused_before_it_starts(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    no_id = write(tmp_path / "m.csv", "编号,mobile\nA1,13800138001\n")
    with pytest.raises(BadRequest, match=r"the header of m\.csv has no member_id column"):
        await service.open_import(tongcrm_db.sessions, ctx, "members", no_id, "csv")
    mapped = await service.open_import(
        tongcrm_db.sessions, ctx, "members", no_id, "csv", mapping={"member_id": "编号"}
    )
    assert mapped.lines_total == 1
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("member_id,name\nA1,张三\n".encode("gbk"))
    with pytest.raises(BadRequest, match=r"gbk\.csv is not UTF-8 text"):
        await service.open_import(tongcrm_db.sessions, ctx, "members", gbk, "csv")
    assert await count(tongcrm_db, BulkImport) == 1


async def test_a_source_is_checked(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    path = write(tmp_path / "m.csv", MEMBERS_CSV)
    with pytest.raises(BadRequest, match="import source 'Old CRM!'"):
        await service.open_import(tongcrm_db.sessions, ctx, "members", path, "csv", source="Old CRM!")
    assert await count(tongcrm_db, BulkImportError) == 0


async def test_imported_history_counts_for_tiers_but_earns_no_points(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, memory_host: PluginHost, tmp_path: Path
) -> None:
    from tongcrm.audit.service import SYSTEM
    from tongcrm.channels import service as accounts
    from tongcrm.points.service import create_rule_set
    from tongcrm.tiers.models import MemberTier
    from tongcrm.tiers.service import TierContext, apply_ladder

    ladder = {
        "window_months": 24,
        "review": {"mode": "anniversary", "one_step": False},
        "tiers": [
            {"code": "member", "name": "Member"},
            {"code": "silver", "name": "Silver", "rule": {"metric": "spend_fen", "min": 10_000}},
        ],
    }
    async with tongcrm_db.sessions() as session, session.begin():
        await create_rule_set(
            session,
            {"rules": [{"type": "spend", "code": "base", "priority": 100, "points_per_yuan": "1"}]},
            now=NOW,
            activate=True,
        )
        await apply_ladder(session, TierContext(now=NOW, tz=TZ), ladder, reason="test", actor=SYSTEM)
    await do_import(tongcrm_db, ctx, "members", write(tmp_path / "m.csv", MEMBERS_CSV))
    orders = write(
        tmp_path / "o.csv",
        "order_id,member_id,placed_at,total_fen\nO1,M1,2025-12-01 10:00,19900\nO2,M2,2025-12-01 10:00,5000\n",
    )
    job, _ = await do_import(tongcrm_db, ctx, "orders", orders)
    assert job.imported == 2
    async with tongcrm_db.sessions() as session:
        tiers = {
            value: code
            for value, code in (
                await session.execute(
                    sa.select(Identity.value, MemberTier.tier_code).join(
                        MemberTier, MemberTier.member_id == Identity.member_id
                    )
                )
            ).all()
        }
    assert tiers.get("legacy/M1") == "silver" and tiers.get("legacy/M2", "member") == "member"
    assert await count(tongcrm_db, PointsEntry) == 0
    # the same rules do earn on a channel's order: the import's silence on points is its own choice
    ingest = IngestContext(host=memory_host, vault=VAULT, clock=lambda: NOW, tz=TZ)
    async with tongcrm_db.sessions() as session, session.begin():
        account = await accounts.create_account(
            session, memory_host, VAULT, "memory", "shop-a", {"token": "t", "shop": "A"}
        )
        await apply_orders_page(session, ingest, account.id, "memory", [make_order("T1", "buyer-9")])
    assert await count(tongcrm_db, PointsEntry, PointsEntry.kind == "earn") > 0


async def test_json_lines_orders_may_carry_their_lines(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    from tongcrm.orders.models import OrderLine

    rows = [
        {
            "order_id": "J1", "mobile": "13800138001", "placed_at": "2025-06-18T20:00:00+08:00", "total_fen": 30000,
            "lines": [
                {"line_id": "a", "title": "面霜", "category": "beauty", "sku": "S1", "amount_fen": 20000},
                {"line_id": "b", "title": "袜子", "quantity": 2, "amount_fen": 10000, "refunded_fen": 10000},
            ],
        },
        {"order_id": "J2", "placed_at": "2025-06-18T20:00:00+08:00", "total_fen": 100, "lines": [{"amount_fen": "1"}]},
        {"order_id": "J3", "placed_at": "2025-06-18T20:00:00+08:00", "total_fen": 100, "lines": []},
        {
            "order_id": "J4", "placed_at": "2025-06-18T20:00:00+08:00", "total_fen": 100,
            "lines": [{"line_id": 1, "amount_fen": 100}, {"line_id": 1, "amount_fen": 0}],
        },
    ]  # fmt: skip
    path = write(tmp_path / "orders.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    job, _ = await do_import(tongcrm_db, ctx, "orders", path, fmt="jsonl")
    assert (job.imported, job.failed) == (1, 3)
    async with tongcrm_db.sessions() as session:
        lines = (await session.execute(sa.select(OrderLine).order_by(OrderLine.external_id))).scalars().all()
        reasons = {e.line: e.reason for e in await service.import_errors(session, job.id)}
    assert [(x.external_id, x.category, x.quantity, x.unit_price_fen, x.refunded_fen) for x in lines] == [
        ("a", "beauty", 1, 20000, 0),
        ("b", None, 2, 5000, 10000),
    ]
    assert "line 1: amount_fen" in reasons[2]
    assert "non-empty JSON array" in reasons[3]
    assert "duplicate line ids" in reasons[4]


async def test_imported_mobiles_are_not_at_rest_in_the_clear(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    import re

    numbers = ["13812345671", "13912345672", "13712345673"]
    path = write(
        tmp_path / "members.csv",
        "member_id,mobile,name,identity.nowhere.id\n"
        f"P1,{numbers[0]},张三,\nP2,+86 {numbers[1]},李四,\nP3,{numbers[2]},王五,x-1\n",  # P3: refused, kept
    )
    job, _ = await do_import(tongcrm_db, ctx, "members", path)
    assert (job.imported, job.failed) == (2, 1)
    async with tongcrm_db.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        parts = []
        for table in tables:
            query = sa.select(sa.text("*")).select_from(sa.table(table))
            parts.extend(str(row) for row in (await conn.execute(query)).all())
    dump = "\n".join(parts)
    # ciphertexts and digests hold digits by chance: take them out, as the PII scan does
    dump = re.sub(r"v1\.[A-Za-z0-9_.\-=+/]+|[0-9a-f]{32,}", "", dump)
    for number in numbers:
        assert number[-8:] not in dump
    assert "王*" in dump and "王五" not in dump  # the refused row is kept, masked


# -------------------------------------------------------------------------------------------------------------
# the set-based members path (#22): brand-new members by COPY on PostgreSQL, the rest through resolution

MIXED_CSV = (
    "member_id,mobile,name,city,buyer\n"
    "M1,13800138001, 张三 ,上海,\n"  # new
    "M2,,李四,,\n"  # new, no mobile
    "M3,13800138009,王五,,\n"  # M3 and M4 share a mobile: one person
    "M4,138 0013 8009,,杭州,\n"
    "M5,,赵六,,buyer-1\n"  # the channel's buyer-1
    "M6,13700137002,,,\n"  # the channel's buyer-2's mobile
)


async def _channel_buyers(db: TestDatabase, host: PluginHost) -> dict[str, int]:
    from tongcrm.channels import service as accounts

    ingest = IngestContext(host=host, vault=VAULT, clock=lambda: NOW, tz=TZ)
    async with db.sessions() as session, session.begin():
        account = await accounts.create_account(
            session, host, VAULT, "memory", "shop-a", {"token": "t", "shop": "A"}
        )
        await apply_orders_page(
            session,
            ingest,
            account.id,
            "memory",
            [make_order("T1", "buyer-1"), make_order("T2", "buyer-2", mobile="13700137002")],
        )
    return await _owners(db)


async def _owners(db: TestDatabase) -> dict[str, int]:
    async with db.sessions() as session:
        return {v: m for v, m in (await session.execute(sa.select(Identity.value, Identity.member_id))).all()}


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many members each page's staged write created."""
    written: list[int] = []
    real = staged._write

    async def spying(driver: Any, ctx: Any, fresh: Any, now: Any, origin: Any) -> list[int]:
        ids = await real(driver, ctx, fresh, now, origin)
        written.append(len(ids))
        return ids

    monkeypatch.setattr(staged, "_write", spying)
    return written


async def test_new_rows_are_written_set_based_and_known_ones_are_resolved(
    tongcrm_db: TestDatabase,
    ctx: service.ImportContext,
    memory_host: PluginHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = await _channel_buyers(tongcrm_db, memory_host)
    events_before = await count(tongcrm_db, OutboxEvent, OutboxEvent.name == "member_created")
    written = _spy(monkeypatch)
    path = write(tmp_path / "members.csv", MIXED_CSV)
    job, _ = await do_import(tongcrm_db, ctx, "members", path, mapping={"identity.memory.buyer": "buyer"})

    assert (job.imported, job.failed) == (6, 0)
    # PostgreSQL: M1 and M2 by COPY; M3/M4 (shared mobile), M5 and M6 (known) through resolution
    assert written == ([2] if tongcrm_db.backend == "postgresql" else [])
    owners = await _owners(tongcrm_db)
    assert owners["legacy/M5"] == before["buyer-1"]
    assert owners["legacy/M6"] == before["buyer-2"]
    assert owners["legacy/M3"] == owners["legacy/M4"]
    new = {owners["legacy/M1"], owners["legacy/M2"], owners["legacy/M3"]}
    assert len(new) == 3 and not new & set(before.values())
    assert await count(tongcrm_db, Member) == 2 + 3
    # one member_created per new member, naming it
    async with tongcrm_db.sessions() as session:
        payloads = (
            await session.execute(
                sa.select(OutboxEvent.payload)
                .where(OutboxEvent.name == "member_created")
                .order_by(OutboxEvent.id)
            )
        ).scalars()
        created = [p for p in payloads][events_before:]
        m1 = await session.get(Member, owners["legacy/M1"])
        m2 = await session.get(Member, owners["legacy/M2"])
        mobile_identity = (
            await session.execute(
                sa.select(Identity).where(
                    Identity.member_id == owners["legacy/M1"], Identity.kind == "mobile"
                )
            )
        ).scalar_one()
    assert sorted(p["member_id"] for p in created) == sorted(new)
    assert {p["source"] for p in created} == {"import"}
    # the staged member is the member resolution would have written
    assert m1 is not None and m2 is not None
    assert (m1.status, m1.version, m1.name, m1.city, m1.province, m1.lifecycle_stage) == (
        "active", 1, "张三", "上海", None, "prospect",
    )  # fmt: skip
    assert (m1.source_channel, m1.source_campaign, m1.source_store) == ("import", "legacy", None)
    assert (
        m1.mobile_enc is not None and VAULT.decrypt(m1.mobile_enc, context=MOBILE_CONTEXT) == "+8613800138001"
    )
    assert m1.mobile_masked_index == masked_index(VAULT, "+8613800138001")
    assert m1.profile_meta["mobile_enc"]["verified"] is True and m1.profile_meta["name"]["verified"] is False
    assert set(m1.profile_meta) == {"name", "city", "mobile_enc"}
    assert m2.mobile_enc is None and set(m2.profile_meta) == {"name"}
    assert mobile_identity.value_enc == m1.mobile_enc
    assert mobile_identity.masked_index == masked_index(VAULT, "+8613800138001")  # a masked search finds it
    assert "line 2" in mobile_identity.evidence


async def test_an_identity_stored_meanwhile_sends_the_page_through_resolution(
    tongcrm_db: TestDatabase,
    ctx: service.ImportContext,
    memory_host: PluginHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A channel sync may store a claim between the lookup and the write: the staged write rolls back to its
    savepoint and resolution merges as usual."""
    if tongcrm_db.backend != "postgresql":
        pytest.skip("the staged writer runs on PostgreSQL")
    before = await _channel_buyers(tongcrm_db, memory_host)
    # a lookup that misses what is stored, as if it had run before the channel's commit
    monkeypatch.setattr(
        staged,
        "_LOOKUP",
        "SELECT t.n FROM unnest($1::varchar[], $2::varchar[], $3::int[]) AS t(k, v, n) WHERE false",
    )
    path = write(tmp_path / "members.csv", "member_id,mobile\nM1,13800138001\nM6,13700137002\n")
    job, _ = await do_import(tongcrm_db, ctx, "members", path)
    assert (job.imported, job.failed) == (2, 0)
    owners = await _owners(tongcrm_db)
    assert owners["legacy/M6"] == before["buyer-2"]
    assert await count(tongcrm_db, Member) == 3
    assert await count(tongcrm_db, OutboxEvent, OutboxEvent.name == "member_created") == 3


async def test_a_key_another_import_claims_meanwhile_is_skipped_and_the_rest_claimed(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL copies a page's keys in: a key another import claimed before (here: just before the ``COPY``)
    stops it on the keys' primary key, and the page claims its keys one by one instead, skipping that row as
    imported by the other."""
    if tongcrm_db.backend != "postgresql":
        pytest.skip("the keys go in by COPY on PostgreSQL (SQLite's page holds the write lock throughout)")
    other, _ = await do_import(tongcrm_db, ctx, "members", write(tmp_path / "other.csv", "member_id\nX1\n"))
    copied: list[bool] = []
    real = service._copy_keys

    async def raced(session: Any, rows: Any) -> bool:
        async with tongcrm_db.sessions() as racer, racer.begin():
            racer.add(BulkImportKey(kind="members", key="legacy/M3", import_id=other.id, line=9))
        copied.append(await real(session, rows))
        return copied[-1]

    monkeypatch.setattr(service, "_copy_keys", raced)
    path = write(tmp_path / "members.csv", "member_id,mobile\nM1,13800138001\nM2,\nM3,13800138003\n")
    job, _ = await do_import(tongcrm_db, ctx, "members", path)
    assert copied == [False]
    assert (job.imported, job.skipped, job.failed) == (2, 1, 0)
    async with tongcrm_db.sessions() as session:
        keys = dict((await session.execute(sa.select(BulkImportKey.key, BulkImportKey.import_id))).all())
    assert keys == {"legacy/X1": other.id, "legacy/M1": job.id, "legacy/M2": job.id, "legacy/M3": other.id}
    assert await count(tongcrm_db, Member) == 3  # X1, M1, M2


def _spy_orders(monkeypatch: pytest.MonkeyPatch) -> list[staged.OrdersWritten]:
    """What each page's set-based order writer stored."""
    written: list[staged.OrdersWritten] = []
    real = staged.write_orders

    async def spying(*args: Any) -> staged.OrdersWritten:
        out = await real(*args)
        written.append(out)
        return out

    monkeypatch.setattr(staged, "write_orders", spying)
    return written


def _orders_through_ingest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every order of the imports after this goes through ingest (the set-based writer stores none)."""

    async def nothing(*args: Any) -> staged.OrdersWritten:
        return staged.OrdersWritten(set(), set())

    monkeypatch.setattr(staged, "write_orders", nothing)


async def test_orders_of_known_buyers_are_stored_set_based_as_ingest_would_store_them(
    tongcrm_db: TestDatabase,
    ctx: service.ImportContext,
    memory_host: PluginHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same history imported twice under two sources (two accounts), once with the set-based writer and once
    through ingest alone, stores the same orders, lines and buyers."""
    await _channel_buyers(tongcrm_db, memory_host)
    await do_import(tongcrm_db, ctx, "members", write(tmp_path / "m.csv", MEMBERS_CSV))
    lines = json.dumps(
        [
            {
                "line_id": "a",
                "title": "裙",
                "amount_fen": 15000,
                "quantity": 3,
                "sku": "S1",
                "refunded_fen": 5000,
            },
            {"line_id": "b", "amount_fen": 4900, "category": "鞋"},
        ]
    )
    text = "\n".join(
        json.dumps(row, ensure_ascii=False)
        for row in [
            {"order_id": "O1", "mobile": "13800138001", "placed_at": "2025-03-01 10:00", "total_fen": "19900",
             "paid_fen": "19900", "refunded_fen": "5000", "lines": lines, "store_code": "S", "post_fee_fen": "500"},
            {"order_id": "O2", "title": "t", "identity.memory.buyer": "buyer-1", "placed_at": "2025-04-01T10:00:00+08:00",
             "total_fen": "5000", "status": "shipped", "completed_at": "2025-04-03 10:00"},
            {"order_id": "O3", "title": "t", "placed_at": "2025-05-01 10:00", "total_fen": "100", "status": "created"},
            {"order_id": "O4", "title": "t", "mobile": "13900139999", "placed_at": "2025-05-01 10:00", "total_fen": "100"},
            {"order_id": "O5", "title": "t", "mobile": "13800138002", "name": "李四", "placed_at": "2025-05-02", "total_fen": "7"},
        ]
    )  # fmt: skip
    path = write(tmp_path / "orders.jsonl", text + "\n")
    written = _spy_orders(monkeypatch)
    first, _ = await do_import(tongcrm_db, ctx, "orders", path, fmt="jsonl", source="a")
    _orders_through_ingest(monkeypatch)
    second, _ = await do_import(
        tongcrm_db, ctx, "orders", write(tmp_path / "o.jsonl", text), fmt="jsonl", source="b"
    )
    assert (first.imported, first.failed) == (second.imported, second.failed) == (5, 0)
    # O1 (a known mobile), O2 (a known channel buyer) and O3 (no buyer), on both databases; O5 fills a profile
    # through ingest, and O4 makes a member there too (a page with an order whose claims are not prepared creates
    # no member set-based: that order might share a claim with it)
    assert [len(w.external_ids) for w in written] == [3]

    def shape(order: Order, order_lines: list[Any]) -> tuple[Any, ...]:
        skip = {"id", "account_id", "ingested_at", "updated_at", "member_id", "origin_member_id"}
        own = {c.key: getattr(order, c.key) for c in sa.inspect(Order).column_attrs if c.key not in skip}
        kept = [
            {c: getattr(line, c) for c in ("external_id", "sku", "category", "title", "quantity", "unit_price_fen",
                                           "amount_fen", "refunded_fen", "refund_status")}
            for line in sorted(order_lines, key=lambda line: line.external_id)
        ]  # fmt: skip
        return own, kept

    from tongcrm.orders.models import OrderLine

    async with tongcrm_db.sessions() as session:
        stored = (await session.execute(sa.select(Order).order_by(Order.id))).scalars().all()
        by_order: dict[int, list[Any]] = {}
        for line in (await session.execute(sa.select(OrderLine))).scalars():
            by_order.setdefault(line.order_id, []).append(line)
    a = {o.external_id: o for o in stored if o.account_id == first.account_id}
    b = {o.external_id: o for o in stored if o.account_id == second.account_id}
    assert set(a) == set(b) == {"O1", "O2", "O3", "O4", "O5"}
    for ext in a:
        assert shape(a[ext], by_order.get(a[ext].id, [])) == shape(b[ext], by_order.get(b[ext].id, []))
    for ext in ("O1", "O2", "O5"):
        assert a[ext].member_id == b[ext].member_id and a[ext].member_id is not None
    assert a["O3"].member_id is None and a["O4"].member_id is not None
    assert a["O1"].refunded_fen == 5000 and len(by_order[a["O1"].id]) == 2


def _new_buyers_history(mobile: str) -> str:
    """Orders of buyers not known yet (``mobile``: a prefix for the file's mobiles, so that two imports of it
    under two sources meet no one of the other)."""
    return (
        "order_id,member_id,mobile,identity.memory.buyer,placed_at,total_fen,store_code\n"
        "O1,N1,,,2025-03-01 10:00,100,S1\n"
        f"O2,N2,{mobile}01,,2025-03-01 11:00,200,S2\n"
        "O3,N1,,,2025-03-02 10:00,300,S3\n"  # N1 again: the member O1 created
        "O4,N3,,buyer-1,2025-03-02 11:00,400,\n"  # a channel buyer known: resolution attaches N3 to it
        "O5,N4,,,2025-03-03 10:00,500,\n"
        f"O6,N4,{mobile}04,,2025-03-03 11:00,600,\n"  # N4 with a new mobile: resolution meets O5's claim
        f"O7,,{mobile}07,buyer-new,2025-03-04 10:00,700,S7\n"
        ",N5,,,2025-03-04 11:00,800,\n"  # no key: a bad row
        "O9,,,,2025-03-05 10:00,900,\n"
    )


async def test_orders_of_buyers_not_known_yet_create_their_members_set_based_as_resolution_would(
    tongcrm_db: TestDatabase,
    ctx: service.ImportContext,
    memory_host: PluginHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A history imported before its members: the same file under two sources, once with the set-based writer
    and once through ingest alone, stores the same members, identities, events and orders."""
    before = await _channel_buyers(tongcrm_db, memory_host)
    spied = _spy_orders(monkeypatch)
    first, _ = await do_import(
        tongcrm_db, ctx, "orders", write(tmp_path / "a.csv", _new_buyers_history("139001390")), source="a"
    )
    # O1, O3 (N1), O2 (N2 and its mobile) and O7 (a mobile and a channel buyer) create three members; O9 has no
    # buyer; O4 (a claim known) and O5, O6 (claims shared unequally) go through ingest
    assert [(len(w.external_ids), w.members_created) for w in spied] == [(5, 3)]
    again, _ = await do_import(
        tongcrm_db,
        ctx,
        "orders",
        write(tmp_path / "a2.csv", _new_buyers_history("139001390") + "O10,N1,,,2025-03-06 10:00,1000,\n"),
        source="a",
    )
    # nothing twice: the file's other rows were imported (the bad row is bad again); O10's buyer is N1's member
    assert (again.imported, again.skipped, again.failed) == (1, 8, 1)
    assert [(len(w.external_ids), w.members_created) for w in spied[1:]] == [(1, 0)]
    _orders_through_ingest(monkeypatch)
    text_b = _new_buyers_history("139001391").replace("buyer-new", "buyer-newer")
    second, _ = await do_import(tongcrm_db, ctx, "orders", write(tmp_path / "b.csv", text_b), source="b")
    assert (first.imported, first.failed) == (second.imported, second.failed) == (8, 1)

    async with tongcrm_db.sessions() as session:
        orders = (await session.execute(sa.select(Order))).scalars().all()
        members = {m.id: m for m in (await session.execute(sa.select(Member))).scalars()}
        identities = (await session.execute(sa.select(Identity))).scalars().all()
        created = [
            p["member_id"]
            for p in (
                await session.execute(
                    sa.select(OutboxEvent.payload).where(OutboxEvent.name == "member_created")
                )
            ).scalars()
        ]
    account = {first.account_id: "a", second.account_id: "b"}
    buyer_of = {
        (account[o.account_id], o.external_id): o.member_id for o in orders if o.account_id in account
    }

    def member_shape(member_id: int | None, source: str) -> Any:
        if member_id is None:
            return None
        if member_id in before.values():
            return "channel buyer", sorted(k for k, v in before.items() if v == member_id)
        m = members[member_id]
        own = (
            m.status, m.version, m.name, m.province, m.city, m.lifecycle_stage, m.source_channel,
            m.source_store, m.source_campaign, m.mobile_enc is not None, m.mobile_masked_index is not None,
            sorted((k, v["verified"]) for k, v in m.profile_meta.items()), created.count(member_id),
        )  # fmt: skip
        if m.mobile_enc is not None:
            number = VAULT.decrypt(m.mobile_enc, context=MOBILE_CONTEXT)
            assert m.mobile_masked_index == masked_index(VAULT, number)
        held = sorted(
            (
                i.kind,
                i.value.replace(f"{source}/", "") if i.kind == "import.member_id" else i.kind,
                account.get(i.account_id or 0) == source, i.masked_index is not None, i.value_enc is not None,
                i.evidence.startswith(f"imported from {source}, line "),
            )
            for i in identities
            if i.member_id == member_id and (i.kind != "import.member_id" or i.value.startswith(f"{source}/"))
        )  # fmt: skip
        return own, held

    for ext in ("O1", "O2", "O3", "O4", "O5", "O6", "O7", "O9"):
        assert member_shape(buyer_of[("a", ext)], "a") == member_shape(buyer_of[("b", ext)], "b"), ext
    for source in "ab":
        assert buyer_of[(source, "O1")] == buyer_of[(source, "O3")] != buyer_of[(source, "O2")]
        assert buyer_of[(source, "O5")] == buyer_of[(source, "O6")]
        assert buyer_of[(source, "O4")] == before["buyer-1"]
        assert buyer_of[(source, "O9")] is None
    assert buyer_of[("a", "O10")] == buyer_of[("a", "O1")]
    new_a = {buyer_of[("a", e)] for e in ("O1", "O2", "O5", "O7")}
    assert len(new_a) == 4 and not new_a & set(before.values())
    assert len(members) == len(set(before.values())) + 2 * 4


async def test_orders_stored_meanwhile_fall_back_to_ingest(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    """An order whose key is free but that is stored (another import of the same account got there first) stops
    the set-based COPY; the page goes through ingest, which finds nothing new."""
    await do_import(tongcrm_db, ctx, "members", write(tmp_path / "m.csv", MEMBERS_CSV))
    text = "order_id,member_id,placed_at,total_fen\nO1,M1,2025-03-01 10:00,100\nO2,M2,2025-03-02 10:00,200\n"
    first, _ = await do_import(tongcrm_db, ctx, "orders", write(tmp_path / "o.csv", text))
    async with tongcrm_db.sessions() as session, session.begin():
        await session.execute(sa.delete(BulkImportKey).where(BulkImportKey.kind == "orders"))
    again, _ = await do_import(
        tongcrm_db, ctx, "orders", write(tmp_path / "o2.csv", text + "O3,M3,2025-03-03,300\n")
    )
    assert (first.imported, again.imported, again.failed) == (2, 3, 0)
    assert await count(tongcrm_db, Order) == 3
    async with tongcrm_db.sessions() as session:
        lines = (
            await session.execute(sa.select(sa.func.count()).select_from(sa.table("order_lines")))
        ).scalar()
    assert lines == 3


async def test_a_nul_character_makes_its_row_bad_not_the_file(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    """PostgreSQL's text columns cannot hold U+0000: a row carrying one is kept as a bad row with its line (the
    NUL shown as U+FFFD) and every other row of its page is imported, on either database."""
    path = write(
        tmp_path / "members.csv",
        "member_id,mobile,name,city\nM1,13800138001,张三,上海\nM2,13800138002,李\x00四,北京\nM3,13800138003,王五,\n",
    )
    job, _ = await do_import(tongcrm_db, ctx, "members", path)
    assert (job.status, job.imported, job.failed) == ("finished", 2, 1)
    async with tongcrm_db.sessions() as session:
        (error,) = await service.import_errors(session, job.id)
    assert error.line == 3 and error.reason == "the name value contains a NUL character (U+0000)"
    assert json.loads(error.row)["city"] == "北京" and "\x00" not in error.row
    assert await count(tongcrm_db, Member) == 2

    orders = write(
        tmp_path / "orders.jsonl",
        "".join(
            json.dumps(
                {"order_id": o, "member_id": "M1", "placed_at": "2026-11-01 10:00:00", "total_fen": 100} | x
            )
            + "\n"
            for o, x in (("O1", {"title": "a\x00b"}), ("O2", {"ignored column": "a\x00b"}))
        ),
    )
    job2, _ = await do_import(tongcrm_db, ctx, "orders", orders, fmt="jsonl")
    assert (job2.imported, job2.failed) == (1, 1)  # a NUL in a column no import reads harms nothing
    async with tongcrm_db.sessions() as session:
        (error,) = await service.import_errors(session, job2.id)
    assert error.line == 1 and "the title value contains a NUL" in error.reason


async def test_a_bad_rows_report_leaves_out_the_columns_no_import_reads(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    path = write(tmp_path / "extra.csv", "member_id,mobile,身份证,name\nM1,12345,110101199003077777,张三\n")
    job, _ = await do_import(tongcrm_db, ctx, "members", path)
    assert (job.imported, job.failed) == (0, 1)
    async with tongcrm_db.sessions() as session:
        (error,) = await service.import_errors(session, job.id)
    # an ID card number has no masking rule: it is not kept at all
    assert json.loads(error.row) == {"member_id": "M1", "mobile": "****", "name": "张*"}


async def test_two_columns_meaning_one_are_refused_not_guessed(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    twice = write(tmp_path / "twice.csv", "member_id,mobile,mobile\nM1,13800138001,13800138009\n")
    with pytest.raises(BadRequest, match=r"the header of twice\.csv has the column 'mobile' twice"):
        await service.open_import(tongcrm_db.sessions, ctx, "members", twice, "csv")
    both = write(tmp_path / "both.csv", "member_id,mobile,手机号\nM1,13800138001,13800138009\n")
    with pytest.raises(
        BadRequest, match=r"has both 'mobile' and '手机号', which both mean the 'mobile' column"
    ):
        await service.open_import(
            tongcrm_db.sessions, ctx, "members", both, "csv", mapping={"mobile": "手机号"}
        )
    assert await count(tongcrm_db, BulkImport) == 0

    jsonl = write(
        tmp_path / "both.jsonl",
        '{"member_id": "J1", "mobile": "13900139001", "手机号": "13900139009"}\n{"member_id": "J2"}\n',
    )
    job, _ = await do_import(tongcrm_db, ctx, "members", jsonl, fmt="jsonl", mapping={"mobile": "手机号"})
    assert (job.imported, job.failed) == (1, 1)
    async with tongcrm_db.sessions() as session:
        (error,) = await service.import_errors(session, job.id)
    assert error.line == 1 and "which both mean the 'mobile' column" in error.reason


async def test_an_order_resolution_refuses_is_a_bad_row_beside_the_orders_written(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    await do_import(tongcrm_db, ctx, "members", write(tmp_path / "m.csv", MEMBERS_CSV))
    path = write(
        tmp_path / "orders.csv",
        "order_id,member_id,identity.nowhere.id,placed_at,total_fen\n"
        "O1,M1,,2025-03-01 10:00:00,19900\n"
        "O2,M2,x-1,2025-03-02 10:00:00,500\n"  # a claim of a kind no plugin declares: resolution refuses it
        "O3,M9,,2025-03-03 10:00:00,700\n",  # a buyer not known yet: created through ingest
    )
    job, _ = await do_import(tongcrm_db, ctx, "orders", path)
    assert (job.imported, job.failed) == (2, 1)
    async with tongcrm_db.sessions() as session:
        errors = await service.import_errors(session, job.id)
        stored = set((await session.execute(sa.select(Order.external_id))).scalars())
    assert [(e.line, e.key) for e in errors] == [(3, "legacy/O2")]
    assert "identity" in errors[0].reason and "nowhere.id" in errors[0].reason
    assert stored == {"O1", "O3"}
    # its key was given back: the corrected row imports
    fixed = write(
        tmp_path / "fixed.csv", "order_id,member_id,placed_at,total_fen\nO2,M2,2025-03-02 10:00:00,500\n"
    )
    again, _ = await do_import(tongcrm_db, ctx, "orders", fixed)
    assert (again.imported, again.skipped, again.failed) == (1, 0, 0)


class AttachElsewhere:
    """A plugin policy: imported orders of member ``buyer`` go to member ``to`` instead; the rest as the core
    decides (None). Counts what it was asked."""

    def __init__(self, buyer: int, to: int) -> None:
        self.buyer, self.to, self.asked = buyer, to, 0

    @hookimpl
    def resolve_member(self, claims: Any, matches: list[MemberMatch]) -> ResolutionDecision | None:
        self.asked += 1
        if matches and {m.member_id for m in matches} == {self.buyer}:
            return ResolutionDecision(member_id=self.to, reason="test policy")
        return None


async def test_the_staged_orders_ask_a_plugin_policy_and_take_the_core_one_as_given(
    tongcrm_db: TestDatabase, ctx: service.ImportContext, tmp_path: Path
) -> None:
    await do_import(tongcrm_db, ctx, "members", write(tmp_path / "m.csv", MEMBERS_CSV))
    owners = await _owners(tongcrm_db)
    assert (
        ctx.host.resolution_is_core()
    )  # the core policy alone: orders of known buyers attach without asking
    first = write(
        tmp_path / "o1.csv",
        "order_id,member_id,placed_at,total_fen\nO1,M1,2025-03-01 10:00:00,100\nO2,M2,2025-03-01 10:00:00,200\n",
    )
    await do_import(tongcrm_db, ctx, "orders", first)
    # a plugin's policy is asked for each order, and what it decides holds: the order it sends elsewhere goes
    # through ingest, whose resolution refuses a member none of the claims names (a bad row, not M1's order)
    policy = AttachElsewhere(owners["legacy/M1"], owners["legacy/M3"])
    ctx.host.register(policy, "policy")
    assert not ctx.host.resolution_is_core()
    second = write(
        tmp_path / "o2.csv",
        "order_id,member_id,placed_at,total_fen\nO3,M1,2025-03-02 10:00:00,300\nO4,M2,2025-03-02 10:00:00,400\n",
    )
    job, _ = await do_import(tongcrm_db, ctx, "orders", second)
    assert policy.asked >= 2 and (job.imported, job.failed) == (1, 1)
    async with tongcrm_db.sessions() as session:
        (error,) = await service.import_errors(session, job.id)
        member_of = {
            o: m for o, m in (await session.execute(sa.select(Order.external_id, Order.member_id))).all()
        }
    assert error.key == "legacy/O3" and "policy" in error.reason
    assert member_of == {"O1": owners["legacy/M1"], "O2": owners["legacy/M2"], "O4": owners["legacy/M2"]}


class RefuseNewcomer:
    """A plugin policy: a buyer whose claims are all new and name ``refused`` goes to member ``to`` (which
    resolution refuses: none of the claims names it); the rest as the core decides (None)."""

    def __init__(self, refused: str, to: int) -> None:
        self.refused, self.to, self.asked = refused, to, 0

    @hookimpl
    def resolve_member(self, claims: Any, matches: list[MemberMatch]) -> ResolutionDecision | None:
        self.asked += 1
        if not matches and any(c.value == self.refused for c in claims):
            return ResolutionDecision(member_id=self.to, reason="test policy")
        return None


async def test_new_buyers_under_a_plugin_policy_are_asked_and_their_later_orders_resolved(
    tongcrm_db: TestDatabase,
    ctx: service.ImportContext,
    memory_host: PluginHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = await _channel_buyers(tongcrm_db, memory_host)
    policy = RefuseNewcomer("legacy/N2", before["buyer-1"])
    ctx.host.register(policy, "policy")
    spied = _spy_orders(monkeypatch)
    text = (
        "order_id,member_id,placed_at,total_fen\n"
        "O1,N1,2025-03-01 10:00,100\nO2,N2,2025-03-01 11:00,200\nO3,N1,2025-03-02 10:00,300\n"
    )
    job, _ = await do_import(tongcrm_db, ctx, "orders", write(tmp_path / "o.csv", text))
    # N1's first order creates it set-based; its second is left to ingest (the plugin's policy is asked there);
    # N2's policy answer is no new member: ingest's resolution refuses it, a bad row
    assert [(sorted(w.external_ids), w.members_created) for w in spied] == [(["O1"], 1)]
    assert (job.imported, job.failed) == (2, 1)
    async with tongcrm_db.sessions() as session:
        (error,) = await service.import_errors(session, job.id)
        member_of = dict((await session.execute(sa.select(Order.external_id, Order.member_id))).all())
    assert error.key == "legacy/O2" and "policy" in error.reason
    assert member_of["O1"] == member_of["O3"] and member_of["O1"] not in before.values()
    assert await count(tongcrm_db, Member) == len(set(before.values())) + 1


async def test_a_new_buyer_stored_meanwhile_sends_the_page_through_ingest(
    tongcrm_db: TestDatabase,
    ctx: service.ImportContext,
    memory_host: PluginHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A channel sync may store a claim between the lookup and the write: the new buyer's identity stops the
    set-based write, which rolls back to its savepoint, and ingest attaches the order to the stored member."""
    before = await _channel_buyers(tongcrm_db, memory_host)

    async def nothing_found(*args: Any) -> dict[Any, Any]:
        return {}  # a lookup that misses what is stored, as if it had run before the channel's commit

    monkeypatch.setattr(staged, "_found_sqlite", nothing_found)
    monkeypatch.setattr(staged, "_found_postgresql", nothing_found)
    spied = _spy_orders(monkeypatch)
    text = (
        "order_id,member_id,identity.memory.buyer,placed_at,total_fen\n"
        "O1,N1,,2025-03-01 10:00,100\nO2,,buyer-1,2025-03-01 11:00,200\n"
    )
    job, _ = await do_import(tongcrm_db, ctx, "orders", write(tmp_path / "o.csv", text))
    assert [len(w.external_ids) for w in spied] == [0]
    assert (job.imported, job.failed) == (2, 0)
    async with tongcrm_db.sessions() as session:
        member_of = dict((await session.execute(sa.select(Order.external_id, Order.member_id))).all())
    assert member_of["O2"] == before["buyer-1"] and member_of["O1"] not in before.values()
    assert await count(tongcrm_db, Member) == len(set(before.values())) + 1
    assert (
        await count(tongcrm_db, OutboxEvent, OutboxEvent.name == "member_created")
        == len(set(before.values())) + 1
    )
