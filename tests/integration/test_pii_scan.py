"""No phone number at rest, no number or credential in the logs, whatever way personal data came in (issue #18).

One run drives every entry path with numbers seeded for it: the admin API (a member created, changed, looked up
and revealed), the till API ``/pos/v1`` (enrol, lookup, a receipt naming the buyer by mobile, an offline batch
with a receipt the database cannot store), Taobao and JD syncs from their fake gateways (JD's records carry
plain mobiles, and some records are quarantined), Tmall's 会员通 SPIs (register and bind by mobile, signed as
Tmall signs them), the SMS send through the fake Aliyun gateway, and its callbacks (delivery reports and
replies, with entries that cannot be parsed). Then the database's own bytes — the SQLite file and its WAL, or a
``pg_dump`` of the PostgreSQL database — must hold none of the seeded numbers, in full or by their last eight
digits, and the captured log must hold no number, API key, app secret, session or access token.

Ciphertexts (``v1.<key>.<base64>``) and digests (long hex runs) are taken out before searching: their
alphabets hold digits, so eight digits in a row turn up in them by chance; nothing else is excused.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import structlog
from litestar.testing import AsyncTestClient
from tongcrm.app import create_app
from tongcrm.audit.service import SYSTEM
from tongcrm.auth.service import create_key
from tongcrm.config import Settings
from tongcrm.counter import CounterService
from tongcrm.db import migrate
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.service import sync_account
from tongcrm.messaging import service as messaging
from tongcrm.messaging.dispatch import Dispatcher
from tongcrm.messaging.models import Message
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase, open_database, scratch_url
from tongcrm.testing.servers import serve_in_thread

GMT8 = ZoneInfo("Asia/Shanghai")
SECRET_KEY = "pii-scan-secret-key-0123456789abcdef"
# credentials that must never reach the log (distinctive, so a hit is certain)
TB_SECRET, TB_SESSION = "TBSECRET-q7Zr41xw", "TBSESSION-m3Kp90vd"
JD_SECRET, JD_TOKEN = "JDSECRET-w2Hn58sa", "JDTOKEN-c6Lt73qe"
SMS_KEY_ID, SMS_SECRET = "LTAI-pii-scan", "SMSSECRET-r5Jb36uf"
SIGN, NOTICE = "通通会员", "SMS_700001"

# numbers seeded through each entry path (JD's come from its fake shop)
ADMIN = "13957310421"
ADMIN_CHANGED = "13957310532"
TILL_ENROL = "13857320643"
TILL_RECEIPT = "13757330754"
TILL_BATCH = "13657340865"
TILL_BAD = "13557350976"
TMALL = "15857361087"
TMALL_BOUND = "15957371198"
SMS_BAD_REPORT = "18657382209"
SMS_BAD_REPLY = "18757393310"
SEEDED = [ADMIN, ADMIN_CHANGED, TILL_ENROL, TILL_RECEIPT, TILL_BATCH, TILL_BAD, TMALL, TMALL_BOUND,
          SMS_BAD_REPORT, SMS_BAD_REPLY]  # fmt: skip

_CIPHERTEXT = re.compile(r"v1\.[0-9a-f]{8}\.[A-Za-z0-9_\-]+=*")
_DIGEST = re.compile(r"(?i)\b[0-9a-f]*[a-f][0-9a-f]*\b")


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


def _without_crypto(text: str) -> str:
    text = _CIPHERTEXT.sub(" ", text)
    return _DIGEST.sub(lambda m: " " if len(m.group()) >= 32 else m.group(), text)


def _leaks(text: str, numbers: list[str]) -> list[str]:
    clean = _without_crypto(text)
    found = []
    for number in numbers:
        for needle in (number, number[-8:]):
            index = clean.find(needle)
            if index >= 0:
                found.append(f"{needle} in …{clean[max(0, index - 80) : index + 40]!r}…")
                break
    return found


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The app configures logging (into the captured stderr): put it back afterwards."""
    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    yield
    structlog.configure(**saved_config)
    root.handlers, root.level = saved_handlers, saved_level


@asynccontextmanager
async def _database(backend: str) -> AsyncIterator[TestDatabase]:
    """A database of its own, built by the real migrations, so its bytes hold this run alone."""
    async with scratch_url(backend) as url, open_database(backend, url) as db:
        await migrate.upgrade(db.engine, PluginHost(autoload=True, disabled=set()))
        yield db


def _stored_text(db: TestDatabase) -> str:
    if db.backend == "sqlite":
        path = Path(db.url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
        assert len(raw) > 100_000, "the database file is suspiciously small: was anything stored?"
        return raw.decode("latin-1")
    dump = subprocess.run(["pg_dump", "--no-owner", db.url], capture_output=True, check=True, timeout=120)
    return dump.stdout.decode("utf-8")


def _receipt(seq: int, mobile: str | None, title: str = "绿茶") -> dict[str, Any]:
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "store": "S1",
        "till": "T01",
        "business_day": now.astimezone(GMT8).date().isoformat(),
        "sequence": seq,
        "occurred_at": (now - timedelta(minutes=5)).isoformat(),
        "total_fen": 1_500,
        "lines": [
            {"line_no": 1, "title": title, "quantity": 1, "unit_price_fen": 1_500, "amount_fen": 1_500}
        ],
        "payments": [{"method": "wechat", "amount_fen": 1_500}],
    }
    if mobile:
        body["member"] = {"mobile": mobile}
    return body


@pytest.mark.slow
@pytest.mark.usefixtures("restore_logging")
async def test_no_phone_number_at_rest_and_no_number_or_credential_in_the_logs(
    tongcrm_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tongcrm_jd.fake_server import FakeJosGateway
    from tongcrm_jd.fake_server import FaultPlan as JdFaults
    from tongcrm_jd.fake_server import create_app as jd_app
    from tongcrm_jd.fake_shop import generate_shop
    from tongcrm_offline_pos import stores
    from tongcrm_offline_pos.models import TABLES
    from tongcrm_sms_gateway.fake_server import FakeAliyun, FakeTemplate
    from tongcrm_taobao.fake_server import FakeTopGateway
    from tongcrm_taobao.fake_server import FaultPlan as TbFaults
    from tongcrm_taobao.fake_server import create_app as tb_app
    from tongcrm_taobao.fake_shop import FakeShop, ShopConfig
    from tongcrm_taobao.fake_tmall import FakeTmall

    credentials: list[str] = [TB_SECRET, TB_SESSION, JD_SECRET, JD_TOKEN, SMS_SECRET]
    async with _database(tongcrm_backend) as db:
        host = PluginHost(autoload=True, disabled=set())
        settings = Settings(database_url=db.url, secret_key=SECRET_KEY, log_json=True)
        vault = settings.vault()
        anchor = datetime(2024, 6, 18, 12, 0, tzinfo=UTC)
        sync_clock = Clock(anchor + timedelta(hours=1))
        tb_shop = FakeShop(ShopConfig(trades=60, buyers=20, days=3, anchor=anchor), clock=sync_clock)
        tb_gateway = FakeTopGateway(
            tb_shop, app_key="12345678", app_secret=TB_SECRET, session=TB_SESSION, faults=TbFaults()
        )
        jd_shop = generate_shop(seed=5, orders=80, buyers=40, start=anchor - timedelta(days=3), end=anchor)
        jd_gateway = FakeJosGateway(
            shop=jd_shop, app_key="jd-app", app_secret=JD_SECRET, access_tokens={JD_TOKEN}, clock=sync_clock,
            faults=JdFaults(),
        )  # fmt: skip
        jd_numbers = sorted(
            {
                r["consigneeInfo"]["mobile"]
                for r in jd_shop.snapshot().values()
                if re.fullmatch(r"1\d{10}", str(r.get("consigneeInfo", {}).get("mobile", "")))
            }
        )
        assert jd_numbers, "the fake JD shop has no plain mobile: the JD path would prove nothing"
        sms_clock = Clock(datetime(2024, 5, 1, 2, 0, tzinfo=UTC))  # 10:00 in Beijing
        aliyun = FakeAliyun(
            access_keys={SMS_KEY_ID: SMS_SECRET},
            signatures={SIGN},
            templates=[FakeTemplate(NOTICE, frozenset({"member_name"}), "notice")],
            clock=sms_clock,
        )
        async with db.sessions() as session, session.begin():
            admin_key = (await create_key(session, "admin")).key
            pos_key = (await create_key(session, "pos", store_code="S1")).key
        credentials += [admin_key, pos_key]

        with (
            serve_in_thread(tb_app(tb_gateway)) as tb_url,
            serve_in_thread(jd_app(jd_gateway)) as jd_url,
            serve_in_thread(aliyun.app) as sms_url,
        ):
            app = create_app(settings, host, run_jobs=False)  # logs as in production, into the capture
            async with AsyncTestClient(app) as client:
                admin = {"Authorization": f"Bearer {admin_key}"}
                till = {"Authorization": f"Bearer {pos_key}"}

                # -- admin API: channel accounts (secrets in the body), a member, its changes and lookups
                for channel, name, account_settings in (
                    ("taobao", "tmall", {"app_key": "12345678", "app_secret": TB_SECRET, "session": TB_SESSION,
                                         "gateway_url": f"{tb_url}/router/rest", "initial_sync_days": "5",
                                         "sign_method": "md5"}),
                    ("jd", "jd-pop", {"app_key": "jd-app", "app_secret": JD_SECRET, "access_token": JD_TOKEN,
                                      "gateway_url": f"{jd_url}/routerjson", "initial_sync_days": "5"}),
                    ("offline_pos", "S1", {"title": "上海一店"}),
                ):  # fmt: skip
                    created = await client.post(
                        "/api/channel-accounts",
                        json={"channel": channel, "name": name, "settings": account_settings},
                        headers=admin,
                    )
                    assert created.status_code == 201, created.text
                member = await client.post(
                    "/api/members", json={"name": "王小明", "mobile": ADMIN, "tags": ["vip"]}, headers=admin
                )
                assert member.status_code == 201, member.text
                member_id = member.json()["id"]
                view = await client.get(f"/api/members/{member_id}", headers=admin)
                changed = await client.patch(
                    f"/api/members/{member_id}",
                    json={"mobile": ADMIN_CHANGED},
                    headers={**admin, "If-Match": view.headers["etag"]},
                )
                assert changed.status_code == 200, changed.text
                for number in (ADMIN_CHANGED, "+86 " + ADMIN_CHANGED):
                    found = await client.get("/api/members/lookup", params={"mobile": number}, headers=admin)
                    assert found.status_code == 200, found.text
                revealed = await client.get(f"/api/members/{member_id}?reveal=mobile", headers=admin)
                assert revealed.status_code == 200 and revealed.json()["member"]["mobile"].endswith(
                    ADMIN_CHANGED
                )
                missing = await client.post("/api/members", json={"mobile": "12"}, headers=admin)
                assert missing.status_code in (400, 422)

                # -- till API
                counter = CounterService(db.sessions, db.read_sessions, host, settings)
                async with counter.unit_of_work(actor=SYSTEM, tables=TABLES) as uow:
                    await stores.add_till(uow, "S1", "T01")
                enrolled = await client.post(
                    "/pos/v1/members",
                    json={"till": "T01", "mobile": TILL_ENROL, "name": "张三",
                          "consent": {"marketing": True, "proof": "screen"}},
                    headers=till,
                )  # fmt: skip
                assert enrolled.status_code == 201, enrolled.text
                looked_up = await client.post(
                    "/pos/v1/members/lookup", json={"till": "T01", "mobile": TILL_ENROL}, headers=till
                )
                assert looked_up.status_code == 200, looked_up.text
                sale = await client.post("/pos/v1/receipts", json=_receipt(1, TILL_RECEIPT), headers=till)
                assert sale.status_code == 201, sale.text
                batch = await client.post(
                    "/pos/v1/receipts/batch",
                    json={"receipts": [_receipt(2, TILL_BATCH), _receipt(3, TILL_BAD, title="坏\x00标题")]},
                    headers=till,
                )
                assert [r["status"] for r in batch.json()["results"]] == ["applied", "rejected"], batch.text
                shown = await client.get(
                    f"/pos/v1/receipts/S1/T01/{sale.json()['business_day']}/1", headers=till
                )
                assert shown.status_code == 200 and "member" in shown.json()["receipt"]

                # -- Taobao and JD syncs from their fake gateways
                ctx = IngestContext(host=host, vault=vault, clock=sync_clock, tz=GMT8)
                for name in ("tmall", "jd-pop"):
                    for _ in range(10):
                        report = await sync_account(db.sessions, ctx, name)
                        assert report.error is None, report
                        if report.caught_up:
                            break
                orders = await client.get("/api/channel-accounts/jd-pop", headers=admin)
                assert orders.json()["orders"] > 0, orders.text
                await client.get("/api/ingest/quarantine", headers=admin)

                # -- Tmall 会员通 SPIs, signed as Tmall signs them
                spi = FakeTmall(client, account="tmall", app_key="12345678", app_secret=TB_SECRET)
                registered = await spi.call(
                    "tmall.mei.crm.member.register", {"mobile": TMALL, "ouid": "OU-PII", "nick": "t**1"}
                )
                assert registered["query_code"] == "SUC", registered
                queried = await spi.call("tmall.mei.crm.member.bind.query", {"mobile": TMALL_BOUND})
                assert queried["query_code"] == "E01", queried
                bound = await spi.call(
                    "tmall.mei.crm.member.register", {"mobile": TMALL_BOUND, "omid": "OM-PII"}
                )
                assert bound["query_code"] == "SUC", bound

                # -- the SMS send and its callbacks
                async with db.sessions() as session, session.begin():
                    await messaging.create_account(
                        session, host, vault, "aliyun_sms", "sms",
                        {"access_key_id": SMS_KEY_ID, "access_key_secret": SMS_SECRET, "endpoint": sms_url + "/"},
                    )  # fmt: skip
                    template = await messaging.create_template(
                        session, name="notice", account="sms", purpose="service", signature=SIGN,
                        template_code=NOTICE, text="${member_name}您好，您的积分已更新",
                    )  # fmt: skip
                    await messaging.queue_messages(
                        session, "campaign.pii", template, [messaging.Target(member_id)], now=sms_clock()
                    )
                await Dispatcher(db.sessions, host, vault, clock=sms_clock, retry_base=1.0).run()
                (accepted,) = aliyun.accepted
                assert accepted.phone == ADMIN_CHANGED
                accounts_listing = await client.get("/api/messenger-accounts", headers=admin)
                token = accounts_listing.json()[0]["callback_token"]
                credentials.append(token)
                report_push = [
                    {"phone_number": accepted.phone, "send_time": "2024-05-01 10:00:00",
                     "report_time": "2024-05-01 10:00:05", "success": True, "err_code": "DELIVERED",
                     "err_msg": "用户接收成功", "sms_size": "1", "biz_id": accepted.biz_id, "out_id": accepted.out_id},
                    {"phone_number": SMS_BAD_REPORT, "biz_id": "B-1", "report_time": "not a time"},
                ]  # fmt: skip
                up_push = [
                    {"phone_number": ADMIN_CHANGED, "send_time": "2024-05-01 10:01:00", "content": "TD",
                     "sign_name": SIGN, "dest_code": "", "sequence_id": 9001},
                    {"phone_number": SMS_BAD_REPLY, "send_time": "2024-05-01 10:01:00", "content": "退\x00订",
                     "sign_name": SIGN, "sequence_id": 9002},
                    {"phone_number": ADMIN_CHANGED, "send_time": "2024-05-01 10:02:00",
                     "content": f"我的新号码是{SMS_BAD_REPLY}", "sign_name": SIGN, "sequence_id": 9003},
                ]  # fmt: skip
                for path, push in (("report", report_push), ("up", up_push)):
                    acked = await client.post(f"/sms/aliyun/sms/{path}?token={token}", json=push)
                    assert acked.status_code == 200 and acked.json()["code"] == 0, acked.text
                messages = (await client.get(f"/api/messages?member_id={member_id}", headers=admin)).json()
                assert [m["status"] for m in messages] == ["delivered"], messages
                exported = await client.get(f"/api/members/{member_id}/export", headers=admin)
                assert exported.status_code == 200 and exported.json()["replies"], exported.text

        async with db.sessions() as session:
            assert (await session.execute(sa.select(sa.func.count()).select_from(Message))).scalar_one() == 1
        stored = _stored_text(db)
        log = capsys.readouterr()
        logged = log.err + log.out

    seeded = SEEDED + jd_numbers
    assert "OU-PII" in stored, (
        "the 会员通 ouid (kept in clear) is not in the scanned bytes: the scan sees nothing"
    )
    at_rest = _leaks(stored, seeded)
    assert not at_rest, f"phone numbers at rest ({db.backend}): {at_rest}"
    assert "request" in logged and "aliyun_sms.replies" in logged, (
        "nothing was logged: the check proves nothing"
    )
    in_log = _leaks(logged, seeded)
    assert not in_log, f"phone numbers in the log: {in_log}"
    leaked = [c for c in credentials if c in logged]
    assert not leaked, f"credentials in the log: {leaked}"
    for line in logged.splitlines():  # every line the app wrote is JSON, so none escaped the processors
        if line.startswith("{"):
            json.loads(line)
