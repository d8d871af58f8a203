"""A known member's checkout sends no statement it can fold into another (issue #22: across a socket a receipt
costs its round trips): the identity's ``last_seen_at`` and the order's lines move with the order's upsert on
PostgreSQL, and what the till shows (points earned, balance) comes back from the statement writing the
``order_changed`` event, not from a read after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session
from tongcrm import counter_quick
from tongcrm.db import direct
from tongcrm.testing.plugin import ApiClient

from .conftest import Receipts, enrol

#: what the process caches for seconds (the store's account, its tills, an API key): a reload lands in whichever
#: receipt comes after the cache's time ran out — on a loaded machine, the counted one — and is no part of a sale
_CACHED = ("channel_accounts", "pos_tills", "api_keys")


def _cache_reload(statement: str) -> bool:
    return statement.startswith("SELECT") and any(f"FROM {table}" in statement for table in _CACHED)


@contextmanager
def _statements() -> Iterator[list[tuple[str, str]]]:
    """(dialect, statement) of every statement sent while the block runs."""
    seen: list[tuple[str, str]] = []

    def on(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        said = " ".join(statement.split())
        if not _cache_reload(said):
            seen.append((conn.dialect.name, said))

    event.listen(sa.engine.Engine, "before_cursor_execute", on)
    try:
        yield seen
    finally:
        event.remove(sa.engine.Engine, "before_cursor_execute", on)


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "transactional"])
async def test_a_known_members_checkout_reads_nothing_after_its_last_write(
    pos: ApiClient, receipts: Receipts, quick: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the quick path's two statements (:mod:`tongcrm.counter_quick`); on SQLite, and on
    PostgreSQL with the quick path off, the transactional path's."""
    monkeypatch.setattr(counter_quick, "ENABLED", quick)
    member = await enrol(pos, "13800138030")
    first = receipts.sale((10_000,), member={"member_id": member["member_id"]})
    assert (await pos.post("/pos/v1/receipts", json=first)).status_code == 201
    with _statements() as seen:
        sold = await pos.post(
            "/pos/v1/receipts", json=receipts.sale((20_000,), member={"member_id": member["member_id"]})
        )
    assert sold.status_code == 201, sold.text
    body = sold.json()
    assert body["points_earned"] == 200
    assert body["points_available"] == member["points_available"] + 100 + 200
    dialect = seen[0][0]
    if dialect == "postgresql" and quick:
        # the quick path (tongcrm.counter_quick): a read in autocommit (the receipt under its key, the buyer,
        # the settings, the order as stored, the balance, the key's revocation counter, the ids to use), then
        # every write in one statement — no BEGIN, no COMMIT
        [read, write] = [s for _, s in seen]
        assert read.startswith("WITH quick_ids AS") and "pos_receipts" in read and "points_balances" in read
        assert write.startswith("WITH o AS (INSERT INTO orders")
        for part in ("identities", "order_lines", "points_line_awards", "points_entries", "points_lots",
                     "points_balances", "pos_receipts", "outbox_events"):  # fmt: skip
            assert f"INSERT INTO {part}" in write or f"UPDATE {part}" in write, part
        return
    statements = [s for _, s in seen if s.split()[0].upper() not in {"BEGIN", "COMMIT", "ROLLBACK"}]
    [changed] = [i for i, s in enumerate(statements) if "RETURNING (SELECT" in s and "outbox_events" in s]
    assert not any(s.startswith("SELECT") and "points_balances" in s for s in statements[changed:])
    touches = [s for s in statements if s.upper().startswith("UPDATE IDENTITIES")]
    assert len(touches) == (0 if dialect == "postgresql" else 1)
    lines = [s for s in statements if s.upper().startswith("INSERT INTO ORDER_LINES")]
    assert len(lines) == (0 if dialect == "postgresql" else 1)
    # claim (+ buyer, stored order and settings on PostgreSQL), [buyer, stored order with settings on SQLite],
    # order (+ identity seen + lines on PostgreSQL), [identity seen, lines on SQLite], [award gate on SQLite],
    # entries/lots/balances (one statement with the award gate on PostgreSQL, three on SQLite), points_changed
    # (SQLite; PostgreSQL's is in the posting), order_changed (+ the receipt's finish on PostgreSQL), [finish on
    # SQLite]
    awards = [s for s in statements if s.upper().startswith("INSERT INTO POINTS_LINE_AWARDS")]
    assert len(awards) == (0 if dialect == "postgresql" else 1)
    assert dialect != "postgresql" or any("INSERT INTO points_line_awards" in s for s in statements)
    # the receipt's row is finished in the statement writing the order_changed event on PostgreSQL
    [finish] = [i for i, s in enumerate(statements) if "UPDATE pos_receipts" in s]
    assert finish == (changed if dialect == "postgresql" else changed + 1)
    assert len(statements) == (4 if dialect == "postgresql" else 13)
    assert not any(s.startswith("SELECT members.status") for s in statements) or dialect != "postgresql"
    print(dialect, len(seen), "statements on the socket:", *(s[:90] for _, s in seen), sep="\n  ")


async def test_the_buyer_read_with_the_claim_answers_as_the_read_after_it(
    pos: ApiClient, receipts: Receipts
) -> None:
    """On PostgreSQL the claim of a receipt naming a member id reads that member in the same statement: a
    member merged away still leads to the survivor, an unknown one is refused and leaves nothing, and a
    receipt sent again replays its first answer."""
    from tongcrm.audit.service import SYSTEM
    from tongcrm.members.merge import merge_members
    from tongcrm.orders.models import Order
    from tongcrm_offline_pos.models import PosReceipt

    survivor = await enrol(pos, "13800138050")
    absorbed = await enrol(pos, "13800138051")
    async with pos.db.sessions() as session, session.begin():
        await merge_members(
            session,
            survivor["member_id"],
            absorbed["member_id"],
            actor=SYSTEM,
            reason="same shopper",
            at=datetime.now(UTC),
        )
    sale = receipts.sale((10_000,), member={"member_id": absorbed["member_id"]})
    sold = await pos.post("/pos/v1/receipts", json=sale)
    assert sold.status_code == 201, sold.text
    assert sold.json()["member_id"] == survivor["member_id"] and sold.json()["points_earned"] == 100
    again = await pos.post("/pos/v1/receipts", json=sale)
    assert again.status_code == 200 and again.json() == {**sold.json(), "replayed": True}

    async def count(table: Any) -> int:
        async with pos.db.sessions() as session:
            return (await session.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()

    before = (await count(Order), await count(PosReceipt))
    unknown = await pos.post("/pos/v1/receipts", json=receipts.sale((10_000,), member={"member_id": 987_654}))
    assert unknown.status_code == 422 and unknown.json()["reason"] == "unknown_member", unknown.text
    assert (await count(Order), await count(PosReceipt)) == before


async def test_a_new_buyer_named_by_mobile_is_looked_up_with_the_claim(
    pos: ApiClient, receipts: Receipts
) -> None:
    """On PostgreSQL the claim of a sale naming its buyer by mobile also reads who that mobile belongs to (the
    buyer's lookup, one round trip fewer); the sale makes the member as before, and a second sale by the same
    mobile finds them. An invalid mobile is still refused as the receipt's own problem."""
    with _statements() as seen:
        first = await pos.post(
            "/pos/v1/receipts", json=receipts.sale((10_000,), member={"mobile": "13800138077"})
        )
    assert first.status_code == 201, first.text
    dialect = seen[0][0]
    card_reads = [s for _, s in seen if s.startswith("SELECT members.id, members.status, members.name")]
    assert len(card_reads) == (0 if dialect == "postgresql" else 1)
    again = await pos.post(
        "/pos/v1/receipts", json=receipts.sale((20_000,), member={"mobile": "13800138077"})
    )
    assert again.status_code == 201, again.text
    assert again.json()["member_id"] == first.json()["member_id"]
    bad = await pos.post("/pos/v1/receipts", json=receipts.sale((10_000,), member={"mobile": "12"}))
    assert bad.status_code == 422 and bad.json()["reason"] == "invalid_receipt", bad.text


async def test_a_checkout_commits_on_the_driver_without_the_orm(pos: ApiClient, receipts: Receipts) -> None:
    """A till's checkout — a known member's, a new buyer's named by mobile, the same receipt sent again — runs
    its statements on the connection its unit of work holds and commits on the driver: the ORM session, whose
    begin/commit machinery cost more than the statements (issue #22 Build 2, ``tongcrm.db.held``), never begins."""
    member = await enrol(pos, "13800138031")
    begun: list[Session] = []

    def on(session: Session, transaction: Any, connection: Any) -> None:
        if session.info.get(direct.HELD) is not None:  # a counter's writing unit of work
            begun.append(session)

    sales = [
        receipts.sale((10_000,), member={"member_id": member["member_id"]}),
        receipts.sale((20_000,), member={"mobile": "13800138032"}),
    ]
    event.listen(Session, "after_begin", on)
    try:
        for sale, status in [(sales[0], 201), (sales[1], 201), (sales[0], 200)]:
            sold = await pos.post("/pos/v1/receipts", json=sale)
            assert sold.status_code == status, sold.text
    finally:
        event.remove(Session, "after_begin", on)
    assert begun == []
    assert sold.json()["replayed"] is True


async def test_the_finish_riding_the_sale_stores_what_the_till_was_answered(
    pos: ApiClient, receipts: Receipts
) -> None:
    """The receipt's row, finished by the sale's follow-up (on PostgreSQL inside the statement writing the
    ``order_changed`` event, the figures taken from its ``RETURNING``), holds the answer the till got: a known
    member's sale, one paid partly with points, a new buyer's and a sale without a member, each sent again
    (the replay answers the stored result)."""
    member = await enrol(pos, "13800138060")
    sales = [
        receipts.sale((10_000,), member={"member_id": member["member_id"]}),
        receipts.sale((30_000,), member={"member_id": member["member_id"]}, points=50, points_fen=500),
        receipts.sale((20_000,), member={"mobile": "13800138061"}),
        receipts.sale((5_000,)),
    ]
    for sale in sales:
        sold = await pos.post("/pos/v1/receipts", json=sale)
        assert sold.status_code == 201, sold.text
        again = await pos.post("/pos/v1/receipts", json=sale)
        assert again.status_code == 200, again.text
        assert again.json() == {**sold.json(), "replayed": True}
    answers = [(await pos.post("/pos/v1/receipts", json=sale)).json() for sale in sales]
    assert [a["points_earned"] for a in answers] == [100, 295, 200, 0]
    assert answers[1]["points_redeemed"] == 50
    assert answers[3]["member_id"] is None and answers[3]["points_available"] is None
    assert answers[1]["points_available"] == member["points_available"] + 100 - 50 + 295


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "transactional"])
async def test_a_known_members_checkout_under_a_tier_ladder(
    pos: ApiClient, receipts: Receipts, quick: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a ladder whose tiers multiply what a line earns (issue #22, tillpg11), the quick path adds two
    reads to its two statements: the buyer's tier row (alone, before the statement) and whether an upgrade
    is due (after it, in the transaction an upgrade would write in): 6 round trips against the transactional
    path's 8."""
    from tongcrm.audit.service import SYSTEM
    from tongcrm.tiers import service as tiers
    from tongcrm.tiers.testing import LADDER

    monkeypatch.setattr(counter_quick, "ENABLED", quick)
    async with pos.db.sessions() as s, s.begin():
        await tiers.apply_ladder(s, tiers.TierContext(datetime.now(UTC)), LADDER, reason="test", actor=SYSTEM)
    member = await enrol(pos, "13800138031")
    first = receipts.sale((10_000,), member={"member_id": member["member_id"]})
    assert (await pos.post("/pos/v1/receipts", json=first)).status_code == 201
    with _statements() as seen:
        sold = await pos.post(
            "/pos/v1/receipts", json=receipts.sale((20_000,), member={"member_id": member["member_id"]})
        )
    assert sold.status_code == 201, sold.text
    assert sold.json()["points_earned"] == 200
    if seen[0][0] == "postgresql":
        # quick: the read, the tier row, the statement, the upgrade check (with BEGIN and COMMIT: 6 round
        # trips); transactional: six statements, with BEGIN and COMMIT 8
        assert len(seen) == (4 if quick else 6), seen
        assert sum("member_tiers" in text for _, text in seen) == 2  # the tier row and the upgrade check
        if quick:
            assert "FROM member_tiers" in seen[1][1] and "INSERT INTO orders" in seen[2][1]


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "transactional"])
async def test_a_new_buyers_checkout_by_mobile(
    pos: ApiClient, receipts: Receipts, quick: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new buyer named by mobile (issue #22, tillpg12): on PostgreSQL the quick path's read (which draws the
    member's id and asks whether the mobile is held) and one statement writing the member, its identity, its
    ``member_created`` event and the sale; the transactional path's statements with ``BEGIN`` and ``COMMIT``."""
    monkeypatch.setattr(counter_quick, "ENABLED", quick)
    member = await enrol(pos, "13800138034")
    first = receipts.sale((10_000,), member={"member_id": member["member_id"]})
    assert (await pos.post("/pos/v1/receipts", json=first)).status_code == 201
    with _statements() as seen:
        sold = await pos.post(
            "/pos/v1/receipts", json=receipts.sale((20_000,), member={"mobile": "13800138035"})
        )
    assert sold.status_code == 201, sold.text
    assert sold.json()["points_earned"] == 200 and sold.json()["points_available"] == 200
    assert sold.json()["member_id"] != member["member_id"]
    if seen[0][0] != "postgresql":
        return
    texts = [s for _, s in seen]
    if quick:
        [read, write] = texts
        assert read.startswith("WITH quick_ids AS") and "members_id_seq" in read and "identities" in read
        assert write.startswith("WITH o AS (INSERT INTO orders")
        for part in (
            "members",
            "identities",
            "order_lines",
            "points_entries",
            "pos_receipts",
            "outbox_events",
        ):
            assert f"INSERT INTO {part}" in write, part
        assert "member_created" in write
    else:
        # the claim (+ the card), member + identity + member_created, order + lines, posting, order_changed +
        # finish; BEGIN and COMMIT on the driver (not seen here): 7 round trips against the quick path's 2
        assert len(texts) == 5, texts
