"""``tongcrm verify`` and ``tongcrm points backtest`` on a migrated-from-models SQLite file."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from points_helpers import Clock, ctx, make_members, order
from tongcrm.channels.models import ChannelAccount
from tongcrm.cli import Context, build_cli
from tongcrm.db.base import metadata
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.db.models import import_models
from tongcrm.orders.models import Order, OrderLine
from tongcrm.plugin.host import PluginHost
from tongcrm.points import service


async def _prepare(url: str) -> None:
    import_models()
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        async with session_factory(engine)() as s, s.begin():
            (m,) = await make_members(s, 1)
            s.add(ChannelAccount(id=1, channel="taobao", name="shop"))
            await s.flush()
            paid = datetime(2026, 3, 1, tzinfo=UTC)
            s.add(
                Order(
                    id=1,
                    account_id=1,
                    external_id="T1",
                    member_id=m,
                    channel="taobao",
                    status="paid",
                    total_fen=10_000,
                    paid_fen=10_000,
                    placed_at=paid,
                    paid_at=paid,
                    modified_at=paid,
                )
            )
            await s.flush()
            s.add(
                OrderLine(
                    id=11,
                    order_id=1,
                    external_id="L11",
                    title="t",
                    quantity=1,
                    unit_price_fen=10_000,
                    amount_fen=10_000,
                )
            )
            await s.flush()
            base = {"rules": [{"type": "spend", "code": "base", "priority": 100, "release": "paid"}]}
            await service.apply_orders(s, ctx(Clock(), base), [order(1, m, [(11, 10_000)], paid_at=paid)])
    finally:
        await engine.dispose()


def test_verify_and_backtest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("TONGCRM_DATABASE_URL", url)
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_prepare(url))
    finally:
        loop.close()
    host = PluginHost(autoload=False)

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(build_cli(host), list(args), obj=Context(host), catch_exceptions=False)

    ok = invoke("verify")
    assert ok.exit_code == 0 and "agree" in ok.output
    rules = tmp_path / "draft.json"
    rules.write_text(
        json.dumps({"rules": [{"type": "spend", "code": "double", "priority": 1, "points_per_yuan": "2"}]})
    )
    report = invoke("points", "backtest", "--rules", str(rules), "--since", "2026-01-01", "--json")
    body = json.loads(report.output)
    assert body["draft_total"] == 200 and body["actual_total"] == 100 and body["difference"] == 100
    assert body["by_channel"]["taobao"]["orders"] == 1 and body["by_tier"]["(none)"]["draft"] == 200
    import sqlite3

    with sqlite3.connect(tmp_path / "cli.sqlite3") as conn:
        conn.execute("UPDATE points_balances SET pending = 3")
    bad = invoke("verify")
    assert bad.exit_code == 1 and "pending=3" in bad.output
