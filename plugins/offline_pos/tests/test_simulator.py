"""``tongcrm pos simulate`` plays a small day of store traffic against tongcrm served on loopback, and the
database holds what the tills were told: receipts, an offline batch, returns, and points balances that add up —
on both databases."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from datetime import datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from click.testing import CliRunner
from tongcrm.app import create_app
from tongcrm.audit.service import SYSTEM
from tongcrm.auth.service import create_key
from tongcrm.channels import service as accounts
from tongcrm.config import Settings
from tongcrm.counter import CounterService
from tongcrm.points import ledger
from tongcrm.points.models import PointsBalance, PointsEntry
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.servers import serve_in_thread
from tongcrm_offline_pos import stores
from tongcrm_offline_pos.api import PosConfig
from tongcrm_offline_pos.cli import pos_group
from tongcrm_offline_pos.models import TABLES, PosReceipt

from .conftest import make_host

TZ = ZoneInfo("Asia/Shanghai")
SUMMARY = re.compile(
    r"(?P<receipts>\d+) receipts \((?P<offline>\d+) offline, (?P<returns>\d+) returns, (?P<paid>\d+) paid with "
    r"points\), (?P<lookups>\d+) lookups, (?P<enrolments>\d+) enrolments, (?P<rejected>\d+) rejected"
)


async def test_the_simulator_plays_a_day_that_adds_up(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings
) -> None:
    host = make_host(PosConfig(rate_per_second=1_000, burst=1_000))  # the server's real clock
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(session, host, tongcrm_settings.vault(), "offline_pos", "SIM", {})
        key = (await create_key(session, "pos", store_code="SIM")).key
    counter = CounterService(tongcrm_db.sessions, tongcrm_db.read_sessions, host, tongcrm_settings)
    async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
        await stores.add_till(uow, "SIM", "T01")

    app = create_app(tongcrm_settings, host, run_jobs=False, configure_logs=False)
    day = datetime.now(TZ).date().isoformat()
    args = ["simulate", "--key", key, "--store", "SIM", "--till", "T01", "--receipts", "40", "--seconds", "120",
            "--seed", "7", "--customers", "6", "--offline-share", "0.3", "--return-share", "0.2",
            "--business-day", day]  # fmt: skip
    with serve_in_thread(app) as url:
        # the command runs its own event loop (asyncio.run), so it runs in a thread of its own
        outcome = await asyncio.to_thread(CliRunner().invoke, pos_group(), [*args, "--url", url])
    assert outcome.exit_code == 0, outcome.output
    told = SUMMARY.search(outcome.output)
    assert told is not None, outcome.output
    report = {k: int(v) for k, v in told.groupdict().items()}
    assert report["receipts"] == 40 and report["offline"] > 0 and report["returns"] > 0 and report["paid"] > 0
    assert report["lookups"] > 0 and report["enrolments"] > 0

    async with tongcrm_db.sessions() as session:
        assert await ledger.verify(session) == []
        rows = (
            await session.execute(
                sa.select(PosReceipt.kind, PosReceipt.status, PosReceipt.offline, PosReceipt.member_id,
                          PosReceipt.result)
            )
        ).all()  # fmt: skip
        by_kind = (
            await session.execute(
                sa.select(PointsEntry.member_id, PointsEntry.kind, sa.func.sum(PointsEntry.amount)).group_by(
                    PointsEntry.member_id, PointsEntry.kind
                )
            )
        ).all()
        balances = {
            b.member_id: b.available + b.pending
            for b in (await session.execute(sa.select(PointsBalance))).scalars()
        }
    assert len(rows) == report["receipts"]
    applied = [r for r in rows if r.status == "applied"]
    assert len(applied) == report["receipts"] - report["rejected"]
    assert sum(1 for r in applied if r.offline) > 0  # the offline batch was applied
    assert sum(1 for r in applied if r.kind == "return") == report["returns"]
    assert sum(1 for r in applied if r.result["points_redeemed"] > 0) > 0

    # every member's balance is what they earned, less what they redeemed and what returns took back, plus the
    # redeemed points returns gave back — in the ledger and in the answers the tills were given
    ledger_net: dict[int, int] = defaultdict(int)
    for member_id, kind, total in by_kind:
        assert kind in {"earn", "redeem", "reverse", "refund"}, kind
        ledger_net[member_id] += int(total)
    told_net: dict[int, int] = defaultdict(int)
    for r in applied:
        if r.member_id is not None:
            x = r.result
            told_net[r.member_id] += (
                x["points_earned"] - x["points_redeemed"] - x["points_reversed"] + x["points_refunded"]
            )
    assert ledger_net and dict(ledger_net) == dict(told_net)
    assert balances == {m: net for m, net in ledger_net.items()}
