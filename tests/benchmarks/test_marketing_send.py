"""Benchmark: a marketing send to N members (``TONGCRM_BENCH_MEMBERS``, default 100,000) through the contact
policy, the dispatcher and the fake Aliyun gateway on loopback, at a configured send rate
(``TONGCRM_BENCH_RATE`` messages/s, default 2000). Reports messages/s and the fake's highest count in any 1 s
window, which must not exceed the configured rate.

    python -m pytest tests/benchmarks/test_marketing_send.py --benchmark-enable --benchmark-only
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.consent.models import ConsentEvent
from tongcrm.crypto import Vault
from tongcrm.db.base import metadata
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.db.models import import_models
from tongcrm.members.models import Member
from tongcrm.members.phone import MOBILE_CONTEXT
from tongcrm.messaging import service
from tongcrm.messaging.dispatch import Dispatcher
from tongcrm.messaging.models import Message
from tongcrm.messaging.policy import PolicyConfig
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.servers import serve_in_thread
from tongcrm_sms_gateway import plugin as sms_plugin
from tongcrm_sms_gateway.fake_server import FakeAliyun, FakeTemplate

MEMBERS = int(os.environ.get("TONGCRM_BENCH_MEMBERS", "100000"))
RATE = int(os.environ.get("TONGCRM_BENCH_RATE", "2000"))
SIGN, PROMO = "通通会员", "SMS_PROMO"
NOON_BEIJING = datetime(2024, 5, 1, 4, 0, tzinfo=UTC)


async def _prepare(url: str, vault: Vault, host: PluginHost, endpoint: str) -> None:
    engine = create_engine(url)
    import_models()
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        await service.create_account(
            session,
            host,
            vault,
            "aliyun_sms",
            "bench",
            {
                "access_key_id": "k",
                "access_key_secret": "s",
                "endpoint": endpoint + "/",
                "max_send_rate": str(RATE),
                "concurrency": "4",
            },
        )
        template = await service.create_template(
            session,
            name="promo",
            account="bench",
            purpose="marketing",
            signature=SIGN,
            template_code=PROMO,
            text="会员日全场五折，拒收请回复R",
        )
        for start in range(0, MEMBERS, 5000):
            ids = range(start + 1, min(start + 5000, MEMBERS) + 1)
            await session.execute(
                sa.insert(Member),
                [
                    {
                        "id": i,
                        "status": "active",
                        "version": 1,
                        "name": f"m{i}",
                        "lifecycle_stage": "new",
                        "profile_meta": {},
                        "mobile_enc": vault.encrypt(f"+86138{i:08d}", context=MOBILE_CONTEXT),
                    }
                    for i in ids
                ],
            )
            # every tenth member never opted in: refused by the policy
            await session.execute(
                sa.insert(ConsentEvent),
                [
                    {
                        "member_id": i,
                        "purpose": "marketing",
                        "signature": "*",
                        "status": "opt_in",
                        "source": "bench",
                        "proof": "",
                        "actor": "system",
                        "recorded_at": NOON_BEIJING,
                    }
                    for i in ids
                    if i % 10
                ],
            )
        await service.queue_messages(
            session,
            "campaign.bench",
            template,
            [service.Target(i) for i in range(1, MEMBERS + 1)],
            now=NOON_BEIJING,
        )
    await engine.dispose()


async def _send(url: str, vault: Vault, host: PluginHost) -> dict[str, int]:
    engine = create_engine(url)
    try:
        dispatcher = Dispatcher(
            session_factory(engine), host, vault, PolicyConfig(), clock=lambda: NOON_BEIJING, batch=2000
        )
        stats = await dispatcher.run()
        async with session_factory(engine)() as session:
            counts = dict(
                (
                    await session.execute(sa.select(Message.status, sa.func.count()).group_by(Message.status))
                ).all()
            )
        return {
            "sent": stats.sent,
            "refused": stats.refused,
            **{f"db_{k}": int(v) for k, v in counts.items()},
        }
    finally:
        await engine.dispose()


@pytest.mark.benchmark(group="messaging")
def test_marketing_send(benchmark: Any, report_figure: Any) -> None:
    vault = Vault("bench-secret-key-0123456789")
    host = PluginHost(autoload=False)
    host.register(sms_plugin, "sms_gateway")
    fake = FakeAliyun(
        access_keys={"k": "s"},
        signatures={SIGN},
        templates=[FakeTemplate(PROMO, frozenset(), "promotion")],
        clock=lambda: NOON_BEIJING,
    )
    with tempfile.TemporaryDirectory() as tmp, serve_in_thread(fake.app) as endpoint:
        url = os.environ.get("TONGCRM_BENCH_DATABASE_URL") or f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        asyncio.run(_prepare(url, vault, host, endpoint))
        started = time.perf_counter()
        result = benchmark.pedantic(lambda: asyncio.run(_send(url, vault, host)), rounds=1, iterations=1)
        elapsed = time.perf_counter() - started
    peak = fake.meter.max_in_window(1.0)
    expected_sent = MEMBERS - MEMBERS // 10
    assert result["sent"] == expected_sent and len(fake.accepted) == expected_sent
    assert result["refused"] == MEMBERS // 10
    assert result.get("db_queued", 0) == 0 and result.get("db_sending", 0) == 0
    assert peak <= RATE, f"{peak} messages in one second, configured {RATE}"
    report_figure(
        f"marketing send: {MEMBERS} members ({expected_sent} sent, {MEMBERS // 10} refused) in {elapsed:.1f} s = "
        f"{MEMBERS / elapsed:.0f} messages/s through policy + fake gateway; configured rate {RATE}/s, "
        f"peak observed {peak} in any 1 s window"
    )
