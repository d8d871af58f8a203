"""Shared set-up for the messaging tests: a fake Aliyun on loopback, a movable clock, members and orders."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tongcrm.audit.service import SYSTEM
from tongcrm.channels.models import ChannelAccount
from tongcrm.config import Settings
from tongcrm.consent.service import record_consent
from tongcrm.crypto import Vault
from tongcrm.jobs.outbox import emit
from tongcrm.jobs.registry import load_job_modules
from tongcrm.jobs.runner import Runner
from tongcrm.members.service import create_member
from tongcrm.messaging import flows, service
from tongcrm.messaging.dispatch import Dispatcher
from tongcrm.messaging.models import Message
from tongcrm.messaging.policy import PolicyConfig
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.servers import serve_in_thread
from tongcrm_sms_gateway import plugin as sms_plugin
from tongcrm_sms_gateway.fake_server import FakeAliyun, FakeTemplate

KEY_ID, SECRET, SIGN = "LTAI-kit", "kit-secret-123", "通通会员"
NOTICE, PROMO = "SMS_900001", "SMS_900002"
SECRET_KEY = "test-secret-key-0123456789abcdef"  # the key tongcrm_settings uses


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def beijing(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC) - timedelta(hours=8)


def sms_host() -> PluginHost:
    host = PluginHost(autoload=False)
    host.register(sms_plugin, "sms_gateway")
    return host


@contextmanager
def fake_gateway(
    clock: Clock, *, extra_templates: Sequence[FakeTemplate] = (), **options: Any
) -> Iterator[tuple[FakeAliyun, str]]:
    fake = FakeAliyun(
        access_keys={KEY_ID: SECRET},
        signatures={SIGN},
        templates=[
            FakeTemplate(NOTICE, frozenset({"member_name", "order_id"}), "notice"),
            FakeTemplate(PROMO, frozenset(), "promotion"),
            *extra_templates,
        ],
        clock=clock,
        **options,
    )
    with serve_in_thread(fake.app) as url:
        yield fake, url


@dataclass
class World:
    sessions: async_sessionmaker[AsyncSession]
    vault: Vault
    host: PluginHost
    clock: Clock
    shop_id: int = 0
    account: str = "sms"

    def dispatcher(self, **options: Any) -> Dispatcher:
        config = options.pop("config", PolicyConfig())
        return Dispatcher(
            self.sessions, self.host, self.vault, config, clock=self.clock, retry_base=1.0, **options
        )

    def runner(self) -> Runner:
        settings = Settings(database_url="unused", secret_key=SECRET_KEY)
        return Runner(
            self.sessions, self.host, load_job_modules(), clock=self.clock, services={"settings": settings}
        )

    async def setup(self, endpoint: str, **settings: str) -> None:
        async with self.sessions() as session, session.begin():
            await service.create_account(
                session,
                self.host,
                self.vault,
                "aliyun_sms",
                self.account,
                {
                    "access_key_id": KEY_ID,
                    "access_key_secret": SECRET,
                    "endpoint": endpoint + "/",
                    **settings,
                },
            )
            await service.create_template(
                session,
                name="order_notice",
                account=self.account,
                purpose="service",
                signature=SIGN,
                template_code=NOTICE,
                text="${member_name}您好，订单${order_id}有新进展",
            )
            await service.create_template(
                session,
                name="promo",
                account=self.account,
                purpose="marketing",
                signature=SIGN,
                template_code=PROMO,
                text="618大促全场五折，拒收请回复R",
            )
            for flow in flows.FLOWS:
                await flows.configure(session, flow, template="order_notice")
            shop = ChannelAccount(
                channel="memory", name="shop", settings={}, secret_names=[], status="active"
            )
            session.add(shop)
            await session.flush()
            self.shop_id = shop.id

    async def member(self, n: int, *, marketing: bool = True, name: str = "王小明") -> int:
        async with self.sessions() as session, session.begin():
            member = await create_member(
                session, self.vault, {"name": name, "mobile": f"+86139{n:08d}"}, [], SYSTEM
            )
            if marketing:
                await record_consent(session, member.id, "marketing", "opt_in", source="test")
            return member.id

    async def order(self, member_id: int, external_id: str, status: str = "created", **fields: Any) -> int:
        now = self.clock()
        async with self.sessions() as session, session.begin():
            order = Order(
                account_id=self.shop_id,
                external_id=external_id,
                member_id=member_id,
                channel="memory",
                status=status,
                total_fen=12_900,
                paid_fen=fields.pop("paid_fen", 0),
                placed_at=now,
                modified_at=now,
                **fields,
            )
            session.add(order)
            await session.flush()
            return order.id

    async def set_order(self, order_id: int, **values: Any) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(sa.update(Order).where(Order.id == order_id).values(**values))

    async def event(
        self, order_id: int, member_id: int, status: str, previous: str | None, **extra: Any
    ) -> None:
        async with self.sessions() as session, session.begin():
            event = emit(
                session,
                "order_changed",
                {
                    "order_id": order_id,
                    "account_id": self.shop_id,
                    "channel": "memory",
                    "external_id": str(order_id),
                    "member_id": member_id,
                    "status": status,
                    "previous": previous,
                    **extra,
                },
            )
            event.occurred_at = self.clock()

    async def messages(self, **where: Any) -> list[Message]:
        async with self.sessions() as session:
            stmt = sa.select(Message).order_by(Message.id)
            for key, value in where.items():
                stmt = stmt.where(getattr(Message, key) == value)
            return list((await session.execute(stmt)).scalars())

    async def drain(self, runner: Runner, rounds: int = 5) -> None:
        for _ in range(rounds):
            if not await runner.run_once():
                break


def dump(messages: list[Message]) -> str:
    return json.dumps([(m.id, m.flow, m.status, m.reason, m.code) for m in messages], ensure_ascii=False)
