"""The quick checkout (a known member's sale on PostgreSQL as a read and one statement, no transaction:
:mod:`tongcrm.counter_quick`) stores exactly what the transactional path stores, answers the till the same,
replays the same, and stays exact under concurrent tills and a concurrent upload of the same receipt. On SQLite
the quick path is never taken, and the same tests hold the transactional path."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm import counter_quick
from tongcrm.audit.service import SYSTEM
from tongcrm.config import Settings
from tongcrm.counter import CounterService, CounterWork
from tongcrm.db import direct
from tongcrm.plugin.host import PluginHost
from tongcrm.points import ledger
from tongcrm.points import service as points_service
from tongcrm.testing.plugin import ApiClient
from tongcrm.tiers import service as tiers
from tongcrm.tiers.testing import LADDER
from tongcrm_offline_pos import stores
from tongcrm_offline_pos.api import PosConfig
from tongcrm_offline_pos.models import TABLES as POS_TABLES

from .conftest import FakeClock, Receipts, add_store, enrol, make_host

#: What a checkout writes, compared whole (ids as their rank: the quick path draws an order's ids in its read).
TABLES = (
    "members", "identities", "orders", "order_lines", "points_entries", "points_lots", "points_balances",
    "points_line_awards", "member_tiers", "tier_history", "outbox_events", "pos_receipts", "audit_log",
)  # fmt: skip
#: A rule set with a first-purchase bonus, a rule whose points wait for a return window (pending lots) and
#: expiry, so the quick statement writes every kind of row the ledger's posting writes.
RULES = {
    "rules": [
        {"type": "spend", "code": "base", "priority": 100},
        {
            "type": "spend", "code": "tea", "priority": 50, "categories": ["tea"], "points_per_yuan": "2",
            "release": "return_window", "return_window_days": 7,
        },
        {"type": "event", "code": "first", "priority": 10, "event": "first_purchase", "points": 30},
    ],
}  # fmt: skip


@pytest.fixture
def pos_host(clock: FakeClock) -> PluginHost:
    """The plugin with its tills kept the default 10 s: a till cache reloaded mid-test (a loaded machine) reads
    the tills outside the unit of work's transaction, and that receipt keeps the quick path (branch till15;
    it took an hour's cache before: see :func:`test_a_receipt_that_reloads_the_till_cache_still_takes_the_quick_path`)."""
    return make_host(PosConfig(clock=clock, rate_per_second=1000, burst=1000))


@pytest.fixture
def quick_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each call of ``CounterWork.quick_sale`` came to: ``sale``, ``existing`` or ``fallback``."""
    calls: list[str] = []
    original = CounterWork.quick_sale

    async def counted(self: CounterWork, *args: Any, **kwargs: Any) -> Any:
        out = await original(self, *args, **kwargs)
        calls.append("fallback" if out is None else "sale" if out.sale is not None else "existing")
        return out

    monkeypatch.setattr(CounterWork, "quick_sale", counted)
    return calls


#: audit columns made with a random salt or chained from one, and the request id (each request its own); an
#: audit record's time is compared by whether it is there too (a consent's is the wall clock's)
_RANDOM = frozenset({"content_digest", "content_salt", "hash", "prev_hash", "request_id"})


async def _snapshot(pos: ApiClient) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    async with pos.db.engine.connect() as conn:
        meta = sa.MetaData()
        await conn.run_sync(
            lambda c: meta.reflect(c, only=[t for t in TABLES if t in c.dialect.get_table_names(c)])
        )
        for name in TABLES:
            if name not in meta.tables:
                continue
            table = meta.tables[name]
            rows = await conn.execute(sa.select(table).order_by(*table.primary_key.columns))
            out[name] = [dict(r._mapping) for r in rows]
    return _ranked(out)


def _ranked(snapshot: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Ids of orders, lines, entries and receipts replaced by their rank, wherever they appear; ciphertexts by
    whether they are there (their nonce is random)."""
    ranks = {
        name: {row["id"]: n for n, row in enumerate(sorted(snapshot[name], key=lambda r: r["id"]))}
        for name in ("orders", "order_lines", "points_entries", "pos_receipts")
    }
    by_column = {
        "order_id": ranks["orders"],
        "line_id": ranks["order_lines"],
        "ref_entry_id": ranks["points_entries"],
    }
    own_id = {"orders": "orders", "order_lines": "order_lines", "points_entries": "points_entries",
              "points_lots": "points_entries", "pos_receipts": "pos_receipts"}  # fmt: skip

    def line_key(match: re.Match[str]) -> str:
        return f"earn:L{ranks['order_lines'][int(match.group(1))]}:"

    def value(table: str, column: str, v: Any) -> Any:
        if v is None:
            return None
        if column.endswith("_enc") or column in _RANDOM or (table, column) == ("audit_log", "at"):
            return True
        if column == "id" and table in own_id:
            return ranks[own_id[table]][v]
        if column in by_column:
            return by_column[column].get(v, ("unknown", v))
        if column == "idempotency_key" and isinstance(v, str):
            return re.sub(r"^earn:(\d+):", line_key, v)
        if isinstance(v, dict) and "order_id" in v:
            return {**v, "order_id": ranks["orders"].get(v["order_id"], ("unknown", v["order_id"]))}
        return v

    out: dict[str, list[dict[str, Any]]] = {}
    for table, rows in snapshot.items():
        # an event's id is kept: the order the outbox hands events on in is compared too
        kept = own_id.keys() | {"outbox_events"}
        converted = [{k: value(table, k, v) for k, v in row.items() if not (k == "id" and table not in kept)}
                     for row in rows]  # fmt: skip
        out[table] = (
            sorted(converted, key=lambda r: r["id"]) if table in kept else sorted(converted, key=repr)
        )
    return out


async def _rules(pos: ApiClient, clock: FakeClock) -> None:
    async with pos.db.sessions() as s, s.begin():
        await points_service.create_rule_set(s, RULES, now=clock() - timedelta(days=1), activate=True)


async def _day(pos: ApiClient, receipts: Receipts, clock: FakeClock) -> list[tuple[int, dict[str, Any]]]:
    """A till's day: sales to members named by id (one line, three lines with one earning nothing, a tea line
    that earns pending points), a replay, a key reused, a sale paid with points, a return, a new buyer by
    mobile, a sale without a member. Every answer, in order."""
    a = await enrol(pos, "13800138101")
    b = await enrol(pos, "13800138102")
    sales = [
        receipts.sale((10_000,), member={"member_id": a["member_id"]}),
        receipts.sale((30_000, 50, 12_345), member={"member_id": a["member_id"]}),
        receipts.sale((8_800,), member={"member_id": b["member_id"]}),
    ]
    sales[2]["lines"][0]["category"] = "tea"
    answers = []
    for sale in sales:
        clock.advance(1)
        answers.append(await pos.post("/pos/v1/receipts", json=sale))
    answers.append(await pos.post("/pos/v1/receipts", json=sales[1]))  # sent again
    reused = {**sales[0], "total_fen": 20_000, "payments": [{"method": "wechat", "amount_fen": 20_000}]}
    reused["lines"] = [{**sales[0]["lines"][0], "amount_fen": 20_000, "unit_price_fen": 20_000}]
    answers.append(await pos.post("/pos/v1/receipts", json=reused))
    clock.advance(1)
    paid = receipts.sale((20_000,), member={"member_id": a["member_id"]}, points=50, points_fen=500)
    answers.append(await pos.post("/pos/v1/receipts", json=paid))
    clock.advance(1)
    answers.append(await pos.post("/pos/v1/receipts", json=receipts.ret(sales[1], {1: 30_000})))
    for sale in (
        receipts.sale((5_000,), member={"member_id": a["member_id"]}),
        receipts.sale((7_000,), member={"mobile": "13800138103"}),
        receipts.sale((3_000,)),
    ):
        clock.advance(1)
        answers.append(await pos.post("/pos/v1/receipts", json=sale))
    # a problem's request id is the request's own
    return [(r.status_code, {k: v for k, v in r.json().items() if k != "request_id"}) for r in answers]


async def test_the_quick_path_stores_and_answers_what_the_transactional_path_does(
    pos: ApiClient,
    pos_host: PluginHost,
    tongcrm_settings: Settings,
    receipts: Receipts,
    clock: FakeClock,
    quick_calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = clock.now
    runs = []
    for enabled in (False, True):
        monkeypatch.setattr(counter_quick, "ENABLED", enabled)
        await pos.db.truncate()
        pos.key = await pos.create_key("pos", store_code="S1")
        pos.client.headers["Authorization"] = f"Bearer {pos.key}"
        await add_store(pos, pos_host, tongcrm_settings, "S1", ("T01", "T02"))
        clock.now, receipts.seq = start, 0
        quick_calls.clear()
        await _rules(pos, clock)
        answers = await _day(pos, receipts, clock)
        async with pos.db.sessions() as s:
            assert await ledger.verify(s) == []
        runs.append((answers, await _snapshot(pos), list(quick_calls)))
    (slow_answers, slow, _), (quick_answers, quick, calls) = runs
    assert [status for status, _ in quick_answers] == [201, 201, 201, 200, 409, 201, 201, 201, 201, 201]
    assert quick_answers == slow_answers
    if pos.db.backend == "postgresql":
        # the three sales, the replay answered from the read, the key reused and the sale paid with points
        # (not asked: a points payment) left to the transactional path, the next sale to a member and the new
        # buyer's by mobile quick (its member, identity and member_created written by the sale's statement)
        assert calls == ["sale", "sale", "sale", "existing", "existing", "sale", "sale"]
    assert (
        quick_answers[2][1]["points_earned"] == 88 + 176
    )  # base and pending tea points (the bonus: no order)
    for name in slow:
        assert quick[name] == slow[name], name
    assert any(e["rule_code"] == "first" for e in quick["points_entries"])
    assert any(lot["status"] == "pending" for lot in quick["points_lots"])


async def test_concurrent_tills_on_one_member_stay_exact(
    pos: ApiClient, receipts: Receipts, clock: FakeClock, quick_calls: list[str]
) -> None:
    """Two tills sell to one member at once, 20 receipts each: every balance the tills were shown is distinct,
    the last is the sum of everything earned, and the ledger verifies."""
    member = await enrol(pos, "13800138110")
    sales = [
        receipts.sale(
            (1_000 * (n + 1),), member={"member_id": member["member_id"]}, till=("T01", "T02")[n % 2]
        )
        for n in range(40)
    ]
    answers = await asyncio.gather(*(pos.post("/pos/v1/receipts", json=sale) for sale in sales))
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers if a.status_code != 201]
    earned = sum(a.json()["points_earned"] for a in answers)
    assert earned == sum(10 * (n + 1) for n in range(40))
    shown = sorted(a.json()["points_available"] for a in answers)
    assert len(set(shown)) == len(shown)
    assert shown[-1] == member["points_available"] + earned
    async with pos.db.sessions() as s:
        assert await ledger.verify(s) == []
        count = await s.scalar(sa.text("SELECT count(*) FROM orders"))
    assert count == 40
    if pos.db.backend == "postgresql":
        assert quick_calls.count("sale") == 40


async def test_a_receipt_claimed_meanwhile_leaves_the_quick_statement_writing_nothing(
    pos: ApiClient, receipts: Receipts, quick_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another upload of the same receipt claims its key between the quick read and the quick statement (its
    row committed, as a transactional claim's is once its sale commits): the quick statement fails on the
    receipt's key and writes nothing — no order, no line, no points, no event — and the receipt is applied by
    the transactional path over the row it met: one order, one receipt row, points once."""
    member = await enrol(pos, "13800138120")
    sale = receipts.sale((10_000,), member={"member_id": member["member_id"]})
    original = direct.rows_alone
    raced: list[bool] = []

    async def racing(session: Any, statement: Any, params: Any) -> list[Any]:
        if (
            "o_external_id" in params and not raced
        ):  # the quick statement, the first time: claim its key first
            raced.append(True)
            import asyncpg

            values = {name[5:]: value for name, value in params.items() if name.startswith("then_")}
            values.update(status="pending", result={}, order_id=None, member_id=None)
            columns = ", ".join(values)
            marks = ", ".join(f"${n}" for n in range(1, len(values) + 1))
            args = [json.dumps(v) if isinstance(v, dict) else v for v in values.values()]
            other = await asyncpg.connect(pos.db.url.replace("+asyncpg", ""))
            try:
                await other.execute(f"INSERT INTO pos_receipts ({columns}) VALUES ({marks})", *args)  # noqa: S608
            finally:
                await other.close()
        return await original(session, statement, params)

    monkeypatch.setattr(direct, "rows_alone", racing)
    answer = await pos.post("/pos/v1/receipts", json=sale)
    assert answer.status_code == 201, answer.text
    assert answer.json()["points_earned"] == 100
    if pos.db.backend == "postgresql":
        assert raced and quick_calls == ["fallback"]
    async with pos.db.sessions() as s:
        assert await s.scalar(sa.text("SELECT count(*) FROM orders")) == 1
        assert await s.scalar(sa.text("SELECT count(*) FROM order_lines")) == 1
        assert await s.scalar(sa.text("SELECT count(*) FROM pos_receipts WHERE kind = 'sale'")) == 1
        assert await s.scalar(sa.text("SELECT status FROM pos_receipts WHERE kind = 'sale'")) == "applied"
        assert (
            await s.scalar(sa.text("SELECT sum(amount) FROM points_entries WHERE order_id IS NOT NULL"))
            == 100
        )
        changed = "SELECT count(*) FROM outbox_events WHERE name = 'order_changed'"
        assert await s.scalar(sa.text(changed)) == 1
        assert await ledger.verify(s) == []


async def test_the_same_receipt_sent_twice_at_once_is_applied_once(
    pos: ApiClient, receipts: Receipts, quick_calls: list[str]
) -> None:
    """Two uploads of one receipt at once: one applies it, the other answers its answer (replayed)."""
    member = await enrol(pos, "13800138130")
    sale = receipts.sale((10_000,), member={"member_id": member["member_id"]})
    first, second = await asyncio.gather(*(pos.post("/pos/v1/receipts", json=sale) for _ in range(2)))
    assert sorted([first.status_code, second.status_code]) == [200, 201], (first.text, second.text)
    body = {k: v for k, v in first.json().items() if k != "replayed"}
    assert body == {k: v for k, v in second.json().items() if k != "replayed"}
    async with pos.db.sessions() as s:
        assert await s.scalar(sa.text("SELECT count(*) FROM orders")) == 1
        assert (
            await s.scalar(sa.text("SELECT sum(amount) FROM points_entries WHERE order_id IS NOT NULL"))
            == 100
        )
        assert await ledger.verify(s) == []


def _events_unordered(snapshot: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The outbox's events without their ids, in a fixed order (see the ladder test)."""
    return sorted(repr({k: v for k, v in e.items() if k != "id"}) for e in snapshot["outbox_events"])


async def test_under_a_tier_ladder_the_quick_path_stores_what_the_transactional_path_does(
    pos: ApiClient,
    pos_host: PluginHost,
    tongcrm_settings: Settings,
    receipts: Receipts,
    clock: FakeClock,
    quick_calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A till's day under a three-tier ladder whose tiers multiply what a line earns (issue #22, tillpg11): the
    day's sales, then one that takes a member past Silver's 100,000 fen of spend (an upgrade, decided after the
    quick statement) and one they earn at Silver's 120 %. Every row is the transactional path's; the one
    difference is where the upgrade's events stand in the outbox: after that sale's ``order_changed`` on the
    quick path, before it on the transactional one."""
    start = clock.now
    runs = []
    for enabled in (False, True):
        monkeypatch.setattr(counter_quick, "ENABLED", enabled)
        await pos.db.truncate()
        pos.key = await pos.create_key("pos", store_code="S1")
        pos.client.headers["Authorization"] = f"Bearer {pos.key}"
        await add_store(pos, pos_host, tongcrm_settings, "S1", ("T01", "T02"))
        clock.now, receipts.seq = start, 0
        quick_calls.clear()
        await _rules(pos, clock)
        async with pos.db.sessions() as s, s.begin():
            await tiers.apply_ladder(s, tiers.TierContext(clock()), LADDER, reason="test", actor=SYSTEM)
        answers = await _day(pos, receipts, clock)
        member_id = answers[0][1]["member_id"]
        for fen in (60_000, 10_000):  # past Silver's 100,000 fen, then a sale at Silver
            clock.advance(1)
            sale = receipts.sale((fen,), member={"member_id": member_id})
            answer = await pos.post("/pos/v1/receipts", json=sale)
            answers.append(
                (answer.status_code, {k: v for k, v in answer.json().items() if k != "request_id"})
            )
        async with pos.db.sessions() as s:
            assert await ledger.verify(s) == []
        runs.append((answers, await _snapshot(pos), list(quick_calls)))
    (slow_answers, slow, _), (quick_answers, quick, calls) = runs
    assert quick_answers == slow_answers
    # 100 % as Member, then 120 % as Silver
    assert [a[1]["points_earned"] for a in quick_answers[-2:]] == [600, 120]
    if pos.db.backend == "postgresql":
        # the ladder sends no sale to the transactional path: the day's as before, then the two sales
        assert calls == ["sale", "sale", "sale", "existing", "existing", "sale", "sale", "sale", "sale"]
    assert [t["tier_code"] for t in quick["member_tiers"]] == ["silver"]
    assert any(e["name"] == "tier_changed" for e in quick["outbox_events"]) or quick["tier_history"]
    for name in slow:
        if name == "outbox_events":
            assert _events_unordered(quick) == _events_unordered(slow)
        else:
            assert quick[name] == slow[name], name


async def test_the_same_new_mobile_on_two_tills_at_once_makes_one_member(
    pos: ApiClient, receipts: Receipts, quick_calls: list[str]
) -> None:
    """Two tills sell to the same new mobile at once, five mobiles in turn (issue #22, tillpg12): each mobile
    becomes one member with one identity and one ``member_created`` event, both sales are theirs, and the ledger
    verifies. On PostgreSQL one sale of each pair makes the member in its quick statement; the other finds the
    mobile held (by the read, or by its statement's identity insert failing whole) and is resolved to that member
    by the transactional path."""
    for till in (
        "T01",
        "T02",
    ):  # a sale without a member on each till first: its cache loads in a transaction
        assert (await pos.post("/pos/v1/receipts", json=receipts.sale((100,), till=till))).status_code == 201
    quick_calls.clear()
    for n in range(5):
        mobile = f"1380013821{n}"
        sales = [
            receipts.sale((1_000 * (t + 1),), member={"mobile": mobile}, till=till)
            for t, till in enumerate(("T01", "T02"))
        ]
        answers = await asyncio.gather(*(pos.post("/pos/v1/receipts", json=sale) for sale in sales))
        assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
        assert len({a.json()["member_id"] for a in answers}) == 1
        assert sorted(a.json()["points_earned"] for a in answers) == [10, 20]
        assert max(a.json()["points_available"] for a in answers) == 30
    async with pos.db.sessions() as s:
        assert await s.scalar(sa.text("SELECT count(*) FROM members")) == 5
        assert await s.scalar(sa.text("SELECT count(*) FROM identities")) == 5
        created = "SELECT count(*) FROM outbox_events WHERE name = 'member_created'"
        assert await s.scalar(sa.text(created)) == 5
        assert await s.scalar(sa.text("SELECT count(*) FROM orders WHERE member_id IS NOT NULL")) == 10
        assert await s.scalar(sa.text("SELECT count(DISTINCT member_id) FROM orders")) == 5
        assert await ledger.verify(s) == []
    if pos.db.backend == "postgresql":
        assert sorted(quick_calls) == ["fallback"] * 5 + ["sale"] * 5


async def test_a_mobile_claimed_meanwhile_leaves_the_quick_statement_writing_nothing(
    pos: ApiClient, receipts: Receipts, quick_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another transaction makes a member with the new buyer's mobile between the quick read and the quick
    statement (committed, as an enrolment at another till would be): the statement fails on the identity's key
    and writes nothing — no member under the id the read drew, no order, no event — and the transactional path
    resolves the sale to the member who holds the mobile, as it would have had it run alone."""
    # a sale without a member first: the till's cache loads in a transaction, which that receipt then takes
    assert (await pos.post("/pos/v1/receipts", json=receipts.sale((100,)))).status_code == 201
    quick_calls.clear()
    sale = receipts.sale((10_000,), member={"mobile": "13800138220"})
    original = direct.rows_alone
    raced: list[int] = []

    async def racing(session: Any, statement: Any, params: Any) -> list[Any]:
        if "new_member_id" in params and not raced:  # the quick statement: claim the mobile first
            import asyncpg

            member = {k[2:]: v for k, v in params.items() if k.startswith("m_")}
            identity = {k[2:]: v for k, v in params.items() if k.startswith("i_")}
            other = await asyncpg.connect(pos.db.url.replace("+asyncpg", ""))
            try:
                args = [json.dumps(v) if isinstance(v, dict) else v for v in member.values()]
                marks = ", ".join(f"${n}" for n in range(1, len(args) + 1))
                made = await other.fetchval(
                    f"INSERT INTO members ({', '.join(member)}) VALUES ({marks}) RETURNING id",  # noqa: S608
                    *args,
                )
                args = [*identity.values(), made]
                marks = ", ".join(f"${n}" for n in range(1, len(args) + 1))
                await other.execute(
                    f"INSERT INTO identities ({', '.join(identity)}, member_id) VALUES ({marks})",  # noqa: S608
                    *args,
                )
            finally:
                await other.close()
            raced.append(int(made))
        return await original(session, statement, params)

    monkeypatch.setattr(direct, "rows_alone", racing)
    answer = await pos.post("/pos/v1/receipts", json=sale)
    assert answer.status_code == 201, answer.text
    assert answer.json()["points_earned"] == 100
    async with pos.db.sessions() as s:
        assert await s.scalar(sa.text("SELECT count(*) FROM members")) == 1
        [holder] = (await s.execute(sa.text("SELECT id FROM members"))).scalars().all()
        assert answer.json()["member_id"] == holder
        assert await s.scalar(sa.text("SELECT count(*) FROM identities")) == 1
        assert await s.scalar(sa.text("SELECT count(*) FROM orders")) == 2
        assert await s.scalar(sa.text("SELECT member_id FROM orders WHERE member_id IS NOT NULL")) == holder
        assert await s.scalar(sa.text("SELECT status FROM pos_receipts WHERE kind = 'sale'")) == "applied"
        created = "SELECT count(*) FROM outbox_events WHERE name = 'member_created'"
        # the racer wrote none; the transactional path made no member; the quick statement wrote nothing
        assert await s.scalar(sa.text(created)) == (0 if raced else 1)
        assert await ledger.verify(s) == []
    if pos.db.backend == "postgresql":
        assert raced == [holder] and quick_calls == ["fallback"]


async def test_a_sale_by_a_known_mobile_the_till_had_not_resolved_draws_no_member_id(
    pos: ApiClient, receipts: Receipts, quick_calls: list[str]
) -> None:
    """A receipt naming only the mobile of a member the till has not resolved is read as a new buyer's; the read
    finds the mobile held and the transactional path gives the sale to its member. The read draws a member id
    only when no identity holds the claim, so such a sale leaves no gap in ``members_id_seq`` (leftovers14)."""
    mobile = "13800138230"
    first = await pos.post("/pos/v1/receipts", json=receipts.sale((1_000,), member={"mobile": mobile}))
    assert first.status_code == 201, first.text
    holder = first.json()["member_id"]

    async def drawn() -> int | None:
        if pos.db.backend != "postgresql":
            return None
        async with pos.db.sessions() as s:
            return int(await s.scalar(sa.text("SELECT last_value FROM members_id_seq")))

    before = await drawn()
    quick_calls.clear()
    again = await pos.post("/pos/v1/receipts", json=receipts.sale((2_000,), member={"mobile": mobile}))
    assert again.status_code == 201, again.text
    assert again.json()["member_id"] == holder and again.json()["points_earned"] == 20
    assert await drawn() == before
    async with pos.db.sessions() as s:
        assert await s.scalar(sa.text("SELECT count(*) FROM members")) == 1
        assert await ledger.verify(s) == []
    if pos.db.backend == "postgresql":
        assert quick_calls == ["fallback"]


async def test_a_receipt_that_reloads_the_account_cache_still_takes_the_quick_path(
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    tongcrm_settings: Settings,
    receipts: Receipts,
    clock: FakeClock,
    quick_calls: list[str],
) -> None:
    """Issue #22 (branch tillpg17): a checkout that finds the store's account lapsed from the counter's cache
    (every ``account_ttl``, for all the tills at once) reads it again — on PostgreSQL outside the unit of work's
    transaction, so a known member's sale and a new buyer's still take the quick path (read through the session,
    the reload began the transaction and sent every such receipt to the transactional path, whose statements
    each connection then parsed mid-run). On SQLite (no quick path) the same receipts are applied."""
    host = make_host(PosConfig(clock=clock, rate_per_second=1000, burst=1000))
    async with make_client(host=host, role="pos", store_code="S1") as pos:
        await add_store(pos, host, tongcrm_settings, "S1", ("T01",))
        a = await enrol(pos, "13800138211")
        counter = pos.app.state.counter
        answers = []
        for member in ({"member_id": a["member_id"]}, {"mobile": "13800138212"}):
            clock.advance(1)
            counter.forget_accounts()  # lapsed, as every account_ttl
            answers.append(await pos.post("/pos/v1/receipts", json=receipts.sale((10_000,), member=member)))
        assert [r.status_code for r in answers] == [201, 201], [r.text for r in answers]
        assert answers[0].json()["member_id"] == a["member_id"]
        assert all(r.json()["points_earned"] == 100 for r in answers), [r.json() for r in answers]
        assert quick_calls == (["sale", "sale"] if pos.db.backend == "postgresql" else [])


async def test_a_receipt_that_reloads_the_till_cache_still_takes_the_quick_path(
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    tongcrm_settings: Settings,
    receipts: Receipts,
    clock: FakeClock,
    quick_calls: list[str],
) -> None:
    """Issue #22 (branch till15): with the till cache expired at every receipt (``till_ttl`` 0), each checkout
    reads the store's tills again — on PostgreSQL outside the unit of work's transaction, so a known member's
    sale and a new buyer's still take the quick path (through the session the reload began the transaction
    and sent them to the transactional path). The reload still sees a till disabled meanwhile. On SQLite (no
    quick path) the same receipts are applied."""
    host = make_host(PosConfig(clock=clock, rate_per_second=1000, burst=1000, till_ttl=0.0))
    async with make_client(host=host, role="pos", store_code="S1") as pos:
        await add_store(pos, host, tongcrm_settings, "S1", ("T01", "T02"))
        a = await enrol(pos, "13800138201")
        answers = []
        for member in ({"member_id": a["member_id"]}, {"mobile": "13800138202"}):
            clock.advance(1)
            answers.append(await pos.post("/pos/v1/receipts", json=receipts.sale((10_000,), member=member)))
        assert [r.status_code for r in answers] == [201, 201], [r.text for r in answers]
        assert answers[0].json()["member_id"] == a["member_id"]
        assert all(r.json()["points_earned"] == 100 for r in answers), [r.json() for r in answers]
        assert quick_calls == (["sale", "sale"] if pos.db.backend == "postgresql" else [])
        counter = CounterService(pos.db.sessions, pos.db.read_sessions, host, tongcrm_settings)
        async with counter.unit_of_work(actor=SYSTEM, tables=POS_TABLES) as uow:
            await stores.disable_till(uow, "S1", "T02")
        clock.advance(1)
        refused = await pos.post("/pos/v1/receipts", json=receipts.sale((5_000,), till="T02"))
        assert refused.status_code == 404 and refused.json()["reason"] == "unknown_till", refused.text
