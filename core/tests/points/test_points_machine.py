"""A hypothesis state machine drives earn / complete / refund / redeem / refund of a redemption / transfer / expire /
clock advance / replay and member merges and their undos against a small pure-Python model of lots and entries, and checks after every
step that the database agrees with the model and that the ledger's invariants hold: every member's cached balance
equals its entries and its open lots, owed points are never negative, every lot's remainder is its amount minus
its draws (``tongcrm verify`` finds nothing), and one effect is posted per idempotency key.

Each example draws the reversal policy (``debt`` or ``clawback``). Merges pick any two live members (so chains
form) and undos pick any merge that may be undone now (last in, first out along a chain); the model follows the
undo rule of :func:`tongcrm.points.ledger.split_after_undo` — lots go back as they are, entries about them follow,
and one zero-sum ``merge_split`` pair moves what one member's lots lost to the other's entries.

It runs on every backend (a temporary SQLite file; PostgreSQL when ``TONGCRM_TEST_POSTGRES_URL`` is set), each on
its own event loop and engine (a sync state machine cannot share the test loop), emptying the tables between
examples. Size, by environment variable:

* ``TONGCRM_LEDGER_MACHINE_STEPS`` — steps to run in total per backend (default 5,000; examples are run until
  that many steps ran);
* ``TONGCRM_LEDGER_MACHINE_STEPS_PER_EXAMPLE`` — steps per example (default 50).

The long run, >= 100,000 steps on SQLite (100,002 steps in 2,467 examples took 1,041 s on a shared 2-core
machine), and on PostgreSQL too when its URL is set::

    TONGCRM_LEDGER_MACHINE_STEPS=100000 python -m pytest core/tests/points/test_points_machine.py -q -s

"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from points_helpers import SHANGHAI, Clock, ctx, make_members, order
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from tongcrm.audit import chain
from tongcrm.audit.service import SYSTEM
from tongcrm.db.base import metadata
from tongcrm.db.engine import async_url, create_engine, create_inline_writer, session_factory
from tongcrm.db.models import import_models
from tongcrm.errors import Conflict
from tongcrm.members.merge import merge_members, undo_merge
from tongcrm.points import ledger, service
from tongcrm.points.models import PointsBalance, PointsEntry
from tongcrm.points.rules import Expiry, expires_at
from tongcrm.testing.database import backends, scratch_url

STEPS = int(os.environ.get("TONGCRM_LEDGER_MACHINE_STEPS", "5000"))
STEPS_PER_EXAMPLE = int(os.environ.get("TONGCRM_LEDGER_MACHINE_STEPS_PER_EXAMPLE", "50"))
EXPIRY = Expiry(kind="days_after", days=3)
N_MEMBERS = 4


def _doc(policy: str) -> dict[str, Any]:
    return {
        "reversal_policy": policy,
        "rules": [
            {
                "type": "spend",
                "code": "base",
                "priority": 100,
                "release": "completed",
                "expiry": {"kind": "days_after", "days": 3},
            }
        ],
    }


@dataclass(eq=False)
class MLot:
    seq: int
    member: int
    amount: int
    remaining: int
    status: str
    expires: datetime | None
    earned: datetime
    reversed: int = 0

    def key(self) -> tuple[int, datetime, datetime, int]:
        far = datetime(9999, 1, 1, tzinfo=UTC)
        return (0 if self.expires else 1, self.expires or far, self.earned, self.seq)


@dataclass(eq=False)
class MEntry:
    """A ledger line: its owner, its signed points and owed points, what it is about (the lot an expiry or a
    reversal is about, the redemption a refund gives back) and the lot it created."""

    member: int
    kind: str
    amount: int
    shortfall: int = 0
    about: MLot | MEntry | None = None
    lot: MLot | None = None  # the lot it created


@dataclass
class MMerge:
    merge_id: int
    survivor: int
    absorbed: int
    entries: list[MEntry]
    lots: list[MLot]
    undone: bool = False


@dataclass
class MOrder:
    order_id: int
    line_id: int
    member: int
    amount_fen: int
    paid_at: datetime
    refunded_fen: int = 0
    completed_at: datetime | None = None
    lot: MLot | None = None


@dataclass
class Model:
    policy: str = "debt"
    lots: list[MLot] = field(default_factory=list)
    entries: list[MEntry] = field(default_factory=list)
    available: dict[int, int] = field(default_factory=dict)
    pending: dict[int, int] = field(default_factory=dict)
    owed: dict[int, int] = field(default_factory=dict)
    merged_into: dict[int, int | None] = field(default_factory=dict)
    seq: int = 0

    def add_member(self, m: int) -> None:
        self.available[m] = self.pending[m] = self.owed[m] = 0
        self.merged_into[m] = None

    def live(self, m: int) -> int:
        while (into := self.merged_into[m]) is not None:
            m = into
        return m

    def entry(self, member: int, kind: str, amount: int, **kw: Any) -> MEntry:
        e = MEntry(member, kind, amount, **kw)
        self.entries.append(e)
        return e

    def new_lot(
        self,
        member: int,
        amount: int,
        status: str,
        expires: datetime | None,
        earned: datetime,
        kind: str,
        about: MEntry | None = None,
    ) -> MLot:
        self.seq += 1
        lot = MLot(self.seq, member, amount, amount, status, expires, earned)
        self.lots.append(lot)
        self.entry(member, kind, amount, lot=lot, about=about)
        if status == "available":
            self.available[member] += amount
            self.settle(member)
        else:
            self.pending[member] += amount
        return lot

    def fifo(self, member: int) -> list[MLot]:
        return sorted(
            (x for x in self.lots if x.member == member and x.status == "available" and x.remaining > 0),
            key=MLot.key,
        )

    def settle(self, member: int) -> None:
        """Book.settle: pay debt from available lots, then claw owed points back from what is available."""
        excess = sum(x.remaining for x in self.fifo(member)) - max(self.available[member], 0)
        for lot in self.fifo(member):
            take = min(lot.remaining, excess)
            lot.remaining -= take
            excess -= take
        if self.owed[member] > 0 and self.available[member] > 0:
            amount = min(self.owed[member], self.available[member])
            self.entry(member, "clawback", -amount)
            self.take(member, amount)
            self.owed[member] -= amount

    def take(self, member: int, n: int, first: MLot | None = None) -> tuple[int, list[MLot]]:
        taken, drawn = 0, []
        for lot in ([first] if first else []) + [x for x in self.fifo(member) if x is not first]:
            amount = min(lot.remaining, n - taken)
            if amount <= 0:
                continue
            lot.remaining -= amount
            drawn.append(lot)
            if lot.status == "pending":
                self.pending[member] -= amount
            else:
                self.available[member] -= amount
            taken += amount
        return taken, drawn

    def recompute(self, member: int) -> None:
        """recompute_balances: the balance from the member's entries and lots, then settle."""
        total = sum(e.amount for e in self.entries if e.member == member)
        pending = sum(x.remaining for x in self.lots if x.member == member and x.status == "pending")
        self.pending[member] = pending
        self.available[member] = total - pending
        self.owed[member] = sum(
            e.shortfall + (e.amount if e.kind == "clawback" else 0)
            for e in self.entries
            if e.member == member
        )

    def merge(self, merge_id: int, survivor: int, absorbed: int) -> MMerge:
        record = MMerge(
            merge_id,
            survivor,
            absorbed,
            [e for e in self.entries if e.member == absorbed],
            [x for x in self.lots if x.member == absorbed],
        )
        for e in record.entries:
            e.member = survivor
        for x in record.lots:
            x.member = survivor
        self.merged_into[absorbed] = survivor
        for m in sorted((survivor, absorbed)):
            self.recompute(m)
            self.settle(m)
        return record

    def undo(self, record: MMerge) -> None:
        """The rule of split_after_undo, written out on the model."""
        a, s = record.absorbed, record.survivor
        for e in record.entries:
            assert e.member == s
            e.member = a
        for x in record.lots:
            assert x.member == s
            x.member = a
        followed = True
        while followed:  # entries about a lot or an entry that went back follow it, with their own lot
            followed = False
            for e in self.entries:
                if e.member == s and e.about is not None and e.about.member == a:
                    e.member = a
                    if e.lot is not None:
                        e.lot.member = a
                    followed = True

        def gap(m: int) -> int:
            return sum(e.amount for e in self.entries if e.member == m) - sum(
                x.remaining for x in self.lots if x.member == m
            )

        def owed(m: int) -> int:
            return sum(
                e.shortfall + (e.amount if e.kind == "clawback" else 0) for e in self.entries if e.member == m
            )

        points = gap(a) if gap(a) > 0 else -gap(s) if gap(s) > 0 else 0
        moved_owed = -owed(a) if owed(a) < 0 else owed(s) if owed(s) < 0 else 0
        if points or moved_owed:
            self.entry(a, "merge_split", -points, shortfall=moved_owed)
            self.entry(s, "merge_split", points, shortfall=-moved_owed)
        self.merged_into[a] = None
        record.undone = True
        for m in sorted((a, s)):
            self.recompute(m)
            self.settle(m)


class Harness:
    """One database per backend for the whole run, on its own loop; emptied between examples."""

    def __init__(self, backend: str) -> None:
        import_models()
        self.backend = backend
        self.loop = asyncio.new_event_loop()
        self._scratch = scratch_url(backend)
        self.url = self.run(self._scratch.__aenter__())
        if backend == "postgresql":  # a throw-away database: no need to wait for the disk at every commit
            self.run(self._no_sync_commit())
        # Every statement is a round trip and the machine runs tens of thousands: SQLite runs on the loop's own
        # thread (the app's engine for short units of work), PostgreSQL without a ping at every checkout, and
        # the checks after each step read outside a transaction (nothing else writes meanwhile).
        if backend == "postgresql":
            self.engine = create_async_engine(async_url(self.url), pool_size=2)
            self.reads = async_sessionmaker(self.engine.execution_options(isolation_level="AUTOCOMMIT"))
        else:
            self.engine = create_inline_writer(self.url) or create_engine(self.url)
            self.reads = session_factory(self.engine, readonly=True)
        self.sessions = session_factory(self.engine)
        self.tables = [t.name for t in reversed(metadata.sorted_tables)]
        self.steps = 0
        self.examples = 0
        self.audit_records = 0

        async def create() -> None:
            async with self.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)

        self.run(create())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _no_sync_commit(self) -> None:
        engine = create_engine(self.url)
        try:
            async with engine.connect() as conn:
                name = conn.dialect.identifier_preparer.quote(str(sa.engine.make_url(self.url).database))
                await conn.execute(sa.text(f"ALTER DATABASE {name} SET synchronous_commit TO off"))
                await conn.commit()
        finally:
            await engine.dispose()

    def reset(self) -> None:
        deletes = [f'DELETE FROM "{name}"' for name in self.tables]  # noqa: S608 - names from the metadata

        async def body() -> None:
            async with self.engine.begin() as conn:
                if self.backend == "postgresql":  # one round trip: the simple query protocol takes a script
                    raw = await conn.get_raw_connection()
                    await raw.driver_connection.execute(";".join(deletes))  # type: ignore[union-attr]
                    return
                for statement in deletes:
                    await conn.execute(sa.text(statement))

        self.run(body())

    def close(self) -> None:
        try:
            self.run(self.engine.dispose())
            self.run(self._scratch.__aexit__(None, None, None))
        finally:
            self.loop.close()


class LedgerMachine(RuleBasedStateMachine):
    harness: Harness

    def __init__(self) -> None:
        super().__init__()
        h = self.harness
        h.reset()
        h.examples += 1
        self.sessions = h.sessions
        self.clock = Clock(datetime(2026, 3, 1, 4, 0, tzinfo=UTC))
        self.ctx = ctx(self.clock, _doc("debt"))
        self.model = Model()
        self.orders: list[MOrder] = []
        self.merges: list[MMerge] = []
        #: redemptions made: (the key given to redeem, its entry, points redeemed, points given back so far)
        self.redemptions: list[list[Any]] = []
        self.keys = 0

        async def setup() -> list[int]:
            async with self.sessions() as s, s.begin():
                return await make_members(s, N_MEMBERS)

        self.members = self.run(setup())
        for m in self.members:
            self.model.add_member(m)

    def run(self, coro: Any) -> Any:
        return self.harness.run(coro)

    def teardown(self) -> None:
        """At the end of each example, before the tables are emptied: the audit chain the merges, undos and
        adjustments wrote holds (what ``tongcrm audit verify`` checks)."""

        async def body() -> chain.ChainReport:
            async with self.harness.reads() as s:
                return await chain.verify(s)

        report = self.run(body())
        assert report.ok, report.findings
        self.harness.audit_records += report.records

    def step(self) -> None:
        self.harness.steps += 1

    def facts(self, o: MOrder) -> Any:
        status = "completed" if o.completed_at else "paid"
        return order(
            o.order_id,
            o.member,
            [(o.line_id, o.amount_fen, o.refunded_fen)],
            status=status,
            paid_at=o.paid_at,
            completed_at=o.completed_at,
        )

    def apply(self, facts: list[Any]) -> None:
        async def body() -> None:
            async with self.sessions() as s, s.begin():
                await service.apply_orders(s, self.ctx, facts)

        self.run(body())

    # -- rules ---------------------------------------------------------------------------------------------------

    @initialize(policy=st.sampled_from(["debt", "clawback"]))
    def choose_policy(self, policy: str) -> None:
        self.model.policy = policy
        self.ctx = ctx(self.clock, _doc(policy))

    # Hypothesis orders rules by their number of arguments, then name, and leans towards the first one it may
    # run: ``buy`` takes its purchase as one argument so that it comes first (and ``replay_everything`` takes one
    # too), else half the steps went to moving the clock.
    @rule(purchase=st.tuples(st.integers(0, N_MEMBERS - 1), st.integers(0, 300), st.integers(0, 99)))
    def buy(self, purchase: tuple[int, int, int]) -> None:
        """A member pays an order: pending points until it completes."""
        self.step()
        member, yuan, fen = purchase
        m = self.model.live(self.members[member])
        n = len(self.orders) + 1
        o = MOrder(n, n * 10, m, yuan * 100 + fen, self.clock.now)
        self.orders.append(o)
        self.apply([self.facts(o)])
        if yuan > 0:
            expires = expires_at(EXPIRY, o.paid_at, SHANGHAI)
            o.lot = self.model.new_lot(m, yuan, "pending", expires, o.paid_at, "earn")

    @precondition(lambda self: self.orders)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        self.step()
        o = data.draw(st.sampled_from(self.orders))
        if o.completed_at is not None:
            return
        o.completed_at = self.clock.now
        self.apply([self.facts(o)])
        lot = o.lot
        if lot is not None and lot.status == "pending":
            lot.status = "available"
            self.model.pending[lot.member] -= lot.remaining
            self.model.available[lot.member] += lot.remaining
            self.model.settle(lot.member)

    @precondition(lambda self: self.orders)
    @rule(data=st.data(), pct=st.integers(1, 100))
    def refund(self, data: st.DataObject, pct: int) -> None:
        self.step()
        o = data.draw(st.sampled_from(self.orders))
        o.refunded_fen = min(o.amount_fen, o.refunded_fen + o.amount_fen * pct // 100)
        self.apply([self.facts(o)])
        lot = o.lot
        if lot is None:
            return
        target = lot.amount if o.refunded_fen >= o.amount_fen else lot.amount * o.refunded_fen // o.amount_fen
        delta = target - lot.reversed
        if delta <= 0:
            return
        lot.reversed = target
        m = lot.member
        taken, _ = self.model.take(m, delta, first=lot)
        if self.model.policy == "debt":
            self.model.entry(m, "reverse", -delta, about=lot)
            self.model.available[m] -= delta - taken  # debt
        else:
            self.model.entry(m, "reverse", -taken, shortfall=delta - taken, about=lot)
            self.model.owed[m] += delta - taken

    @rule(member=st.integers(0, N_MEMBERS - 1), points=st.integers(1, 150))
    def redeem(self, member: int, points: int) -> None:
        self.step()
        m = self.model.live(self.members[member])
        self.keys += 1
        key = f"sm-{self.keys}"

        async def body() -> bool:
            try:
                async with self.sessions() as s, s.begin():
                    await service.redeem(s, self.ctx, m, points, key=key)
            except Conflict:
                return False
            return True

        ok = self.run(body())
        assert ok == (self.model.available[m] >= points)
        if ok:
            self.redemptions.append([key, self.model.entry(m, "redeem", -points), points, 0])
            self.model.take(m, points)

    @precondition(lambda self: self.redemptions)
    @rule(data=st.data(), points=st.integers(1, 100))
    def refund_redemption(self, data: st.DataObject, points: int) -> None:
        """Goods paid with points came back: the points return as a new lot of whoever holds the redemption."""
        self.step()
        redemption = data.draw(st.sampled_from(self.redemptions))
        key, entry, redeemed, refunded = redemption
        self.keys += 1
        refund_key = f"sm-r-{self.keys}"

        async def body() -> bool:
            try:
                async with self.sessions() as s, s.begin():
                    await service.refund_redemption(s, self.ctx, key, points, key=refund_key)
            except Conflict:
                return False
            return True

        ok = self.run(body())
        assert ok == (points <= redeemed - refunded)
        if ok:
            redemption[3] += points
            self.model.new_lot(entry.member, points, "available", None, self.clock.now, "refund", about=entry)

    @rule(a=st.integers(0, N_MEMBERS - 1), b=st.integers(0, N_MEMBERS - 1), points=st.integers(1, 200))
    def transfer(self, a: int, b: int, points: int) -> None:
        self.step()
        ma, mb = self.model.live(self.members[a]), self.model.live(self.members[b])
        if ma == mb:
            return
        self.keys += 1
        key = f"sm-t-{self.keys}"

        async def body() -> bool:
            try:
                async with self.sessions() as s, s.begin():
                    await service.transfer(s, self.ctx, ma, mb, points, key=key)
            except Conflict:
                return False
            return True

        ok = self.run(body())
        assert ok == (self.model.available[ma] >= points)
        if ok:
            self.model.entry(ma, "transfer_out", -points)
            _, drawn = self.model.take(ma, points)
            expiries = [x.expires for x in drawn if x.expires is not None]
            expires = min(expiries) if expiries else None
            self.model.new_lot(mb, points, "available", expires, self.clock.now, "transfer_in")

    @rule(hours=st.integers(1, 30))
    def time_passes(self, hours: int) -> None:
        self.step()
        self.clock.advance(hours=hours)
        now = self.clock.now

        async def body() -> None:
            async with self.sessions() as s, s.begin():
                await ledger.expire_due(s, now=now)
                await ledger.release_due(s, now=now)

        self.run(body())
        for lot in sorted(self.model.lots, key=lambda x: x.seq):
            if lot.expires is not None and lot.expires <= now and lot.remaining > 0:
                if lot.status == "pending":
                    self.model.pending[lot.member] -= lot.remaining
                else:
                    self.model.available[lot.member] -= lot.remaining
                self.model.entry(lot.member, "expire", -lot.remaining, about=lot)
                lot.remaining = 0

    @rule(survivor=st.integers(0, N_MEMBERS - 1), absorbed=st.integers(0, N_MEMBERS - 1))
    def merge(self, survivor: int, absorbed: int) -> None:
        self.step()
        s, a = self.members[survivor], self.members[absorbed]
        if s == a or self.model.merged_into[s] is not None or self.model.merged_into[a] is not None:
            return
        at = self.clock.now

        async def body() -> int:
            async with self.sessions() as session, session.begin():
                return (await merge_members(session, s, a, actor=SYSTEM, reason="machine", at=at)).id

        self.merges.append(self.model.merge(self.run(body()), s, a))

    @precondition(lambda self: any(not r.undone for r in self.merges))
    @rule(data=st.data())
    def undo(self, data: st.DataObject) -> None:
        self.step()
        # last in, first out along a chain: a merge whose survivor is still live
        ready = [r for r in self.merges if not r.undone and self.model.merged_into[r.survivor] is None]
        record = data.draw(st.sampled_from(ready))
        at = self.clock.now

        async def body() -> None:
            async with self.sessions() as session, session.begin():
                await undo_merge(session, record.merge_id, actor=SYSTEM, at=at)

        self.run(body())
        self.model.undo(record)

    @precondition(lambda self: self.orders)
    @rule(times=st.integers(1, 2))
    def replay_everything(self, times: int) -> None:
        self.step()
        before = self.run(self._entry_count())
        for _ in range(times):
            self.apply([self.facts(o) for o in self.orders])
        assert self.run(self._entry_count()) == before

    async def _entry_count(self) -> tuple[int, int]:
        async with self.sessions() as s:
            return (
                (await s.execute(sa.select(sa.func.count()).select_from(PointsEntry))).scalar_one(),
                (
                    await s.execute(sa.select(sa.func.count(sa.distinct(PointsEntry.idempotency_key))))
                ).scalar_one(),
            )

    # -- invariants ----------------------------------------------------------------------------------------------

    @invariant()
    def ledger_agrees_with_the_model(self) -> None:
        entries_t = PointsEntry.__table__
        balances_t = PointsBalance.__table__

        async def body() -> tuple[list[Any], list[Any]]:
            async with self.harness.reads() as s:
                drifts = await ledger.verify(s)
                # per member: the cached balance, Σ entries, and entries against distinct idempotency keys
                sums = (
                    sa.select(
                        entries_t.c.member_id,
                        sa.func.sum(entries_t.c.amount).label("total"),
                        sa.func.count().label("entries"),
                        sa.func.count(sa.distinct(entries_t.c.idempotency_key)).label("distinct_keys"),
                    )
                    .group_by(entries_t.c.member_id)
                    .subquery()
                )
                rows = (
                    await s.execute(
                        sa.select(
                            balances_t.c.member_id,
                            balances_t.c.available,
                            balances_t.c.pending,
                            balances_t.c.owed,
                            sa.func.coalesce(sums.c.total, 0),
                            sa.func.coalesce(sums.c.entries, 0),
                            sa.func.coalesce(sums.c.distinct_keys, 0),
                        ).select_from(balances_t.outerjoin(sums, sums.c.member_id == balances_t.c.member_id))
                    )
                ).all()
            return drifts, list(rows)

        drifts, rows = self.run(body())
        balances = {r[0]: (r[1], r[2], r[3]) for r in rows}
        totals = {r[0]: int(r[4]) for r in rows}
        entries, keys = sum(r[5] for r in rows), sum(r[6] for r in rows)
        assert drifts == []  # balance = Σ entries = Σ open lots, owed >= 0, no lot below zero, draws add up
        assert entries == keys  # one effect per idempotency key
        model = self.model
        for m in self.members:
            assert balances.get(m, (0, 0, 0)) == (model.available[m], model.pending[m], model.owed[m]), m
            assert totals.get(m, 0) == sum(e.amount for e in model.entries if e.member == m), m
            if model.available[m] < 0:  # negative available only as recorded debt: no spendable lot meanwhile
                assert all(x.remaining == 0 for x in model.fifo(m))
        # merges and undos never create or lose points: the ledger's total is the model's
        assert sum(totals.values()) == sum(e.amount for e in model.entries)


@pytest.mark.slow(seconds=44)
@pytest.mark.parametrize("backend", backends())
def test_points_ledger_state_machine(backend: str) -> None:
    harness = Harness(backend)
    started = time.monotonic()
    try:
        machine = type("BoundLedgerMachine", (LedgerMachine,), {"harness": harness})
        while harness.steps < STEPS:
            left = STEPS - harness.steps
            run_state_machine_as_test(
                machine,
                settings=settings(
                    max_examples=max(1, -(-left // STEPS_PER_EXAMPLE)),
                    stateful_step_count=STEPS_PER_EXAMPLE,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                ),
            )
    finally:
        harness.close()
    print(
        f"\nledger machine on {backend}: {harness.steps} steps in {harness.examples} examples, "
        f"{time.monotonic() - started:.1f} s, {harness.audit_records} audit records verified"
    )
    assert harness.steps >= STEPS
    assert harness.audit_records > 0  # merges and undos are audited, and their chain was checked
