"""A till's lookup and checkout in process, without HTTP: the CPU a receipt's database work and unit of work cost.

The served benchmark (``test_pos_checkout.py``) measures the serving process's CPU per receipt, HTTP stack
included; this one calls what the till's two routes call (a read-only unit of work finding the member by mobile,
then a writing one applying the receipt, as ``tongcrm_offline_pos.api`` does) on the counter the app builds
(``create_app``'s, SQLite: the inline writer), 8 tills at once, half of the sales by new buyers named by mobile, half by
known members named by id. It reports this process's CPU per receipt, which on a shared machine moves far less
than wall time. ``TONGCRM_BENCH_COUNTER_RECEIPTS`` (default 800) receipts; ``TONGCRM_BENCH_PROFILE=FILE`` writes
a cProfile of the timed part to FILE (``%s`` in it: the database's name), timed by process CPU so that a loaded
machine's preemption is not charged to whatever function was running.
Run: ``python -m pytest tests/benchmarks/test_counter_receipt_cpu.py --benchmark-enable --benchmark-only -s``.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from tongcrm.app import create_app
from tongcrm.audit.service import SYSTEM, Actor
from tongcrm.channels import service as accounts
from tongcrm.config import Settings
from tongcrm.counter import CounterService
from tongcrm.errors import NotFound
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import load

TILLS = 8
RECEIPTS = int(os.environ.get("TONGCRM_BENCH_COUNTER_RECEIPTS", "800"))
TZ = ZoneInfo("Asia/Shanghai")


@pytest.mark.slow
async def test_counter_receipt_cpu(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings, benchmark: Any, report_figure: Any
) -> None:
    from tongcrm_offline_pos.plugin import OfflinePosPlugin

    host = PluginHost(autoload=False)
    host.register(OfflinePosPlugin(), "offline_pos")
    async with tongcrm_db.sessions() as session, session.begin():
        await accounts.create_account(session, host, tongcrm_settings.vault(), "offline_pos", "BENCH", {})
    app = create_app(tongcrm_settings, host, run_jobs=False, configure_logs=False)
    async with app.lifespan():
        counter: CounterService = app.state.counter  # as the app builds it (SQLite: the inline writer)
        await _run(tongcrm_db, counter, benchmark, report_figure)


async def _run(tongcrm_db: TestDatabase, counter: CounterService, benchmark: Any, report_figure: Any) -> None:
    from tongcrm_offline_pos import members, receipts, stores
    from tongcrm_offline_pos.models import TABLES
    from tongcrm_offline_pos.schemas import ReceiptIn

    async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
        for n in range(TILLS):
            await stores.add_till(uow, "BENCH", f"T{n:02d}")
    tills = stores.TillCache(60.0)
    actor = Actor("till", "pos")
    now = datetime.now(UTC)
    day = now.astimezone(TZ).date().isoformat()
    per_till = max(1, RECEIPTS // TILLS)
    seen: dict[tuple[int, int], int] = {}

    async def till(no: int) -> None:
        for i in range(per_till):
            mobile = f"1390{no:02d}{i % (per_till // 2 or 1):05d}"
            member: int | None = None
            async with counter.unit_of_work(actor=actor, tables=TABLES, readonly=True) as uow:
                store = await stores.get_store(uow, "BENCH")
                await tills.require(uow, store, f"T{no:02d}")
                try:
                    member = (
                        await members.lookup(uow, store, f"T{no:02d}", mobile=mobile, code=None)
                    ).member_id
                except NotFound:  # a new buyer
                    member = None
            body = {
                "store": "BENCH", "till": f"T{no:02d}", "business_day": day, "sequence": i + 1,
                "occurred_at": (now - timedelta(seconds=5)).isoformat(), "total_fen": 12_800,
                "lines": [{"line_no": 1, "title": "tea", "quantity": 1, "unit_price_fen": 12_800,
                           "amount_fen": 12_800}],
                "payments": [{"method": "wechat", "amount_fen": 12_800}],
                "member": {"member_id": member} if member else {"mobile": mobile},
            }  # fmt: skip
            receipt = msgspec.convert(body, ReceiptIn, strict=False)
            async with counter.unit_of_work(actor=actor, tables=TABLES) as uow:
                store = await stores.get_store(uow, "BENCH")
                result = await receipts.apply_receipt(
                    uow, store, receipt, tills=tills, offline=False, sent_at=None, strict=True
                )
            assert result.status == "applied" and result.member_id is not None
            seen[(no, i % (per_till // 2 or 1))] = result.member_id

    commits, units = counter.group.commits, counter.group.committed_units
    profile = os.environ.get("TONGCRM_BENCH_PROFILE")
    # timed by CPU: on a loaded machine, preemption is not the receipt's
    profiler = cProfile.Profile(time.process_time) if profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await asyncio.gather(*(till(n) for n in range(TILLS)))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile.replace("%s", tongcrm_db.backend))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = TILLS * per_till
    commits, units = counter.group.commits - commits, counter.group.committed_units - units
    grouped = f"; {units} writing units in {commits} group commits" if commits else ""
    report_figure(
        f"counter receipt in process {tongcrm_db.backend}, {TILLS} tills: {done} receipts (lookup + earn, half new "
        f"buyers) in {wall:.2f} s = {done / wall:,.0f} receipts/s; CPU per receipt {1000 * cpu / done:.3f} ms; "
        f"{load()}{grouped}"
    )
    assert len(set(seen.values())) == len(seen)
    benchmark.extra_info.update({"receipts": done, "cpu_ms_per_receipt": 1000 * cpu / done, "load": load()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
