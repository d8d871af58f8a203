"""The backfill page (补拉订单) over HTTP on both databases: an operator starts a backfill of a Taobao shop from
the form (its windows and their jobs written, audited), the form's refusals in Chinese from the service's
``backfill.*`` codes with the form kept, the English page and the CLI's service keeping the English message,
analysts reading progress without the form, and a store (its tills push orders) offered nothing to pull."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.audit.models import AuditEntry
from tongcrm.channels import service as channels
from tongcrm.channels.models import Backfill, BackfillWindow
from tongcrm.config import Settings
from tongcrm.errors import BadRequest
from tongcrm.ingest import backfill
from tongcrm.jobs.models import Job
from tongcrm_taobao import plugin as taobao_plugin

from .conftest import sign_in
from .ops_kit import SECRET_KEY, ops_host, seed

SH = ZoneInfo("Asia/Shanghai")
PAGE = "/console/channels/tmall-flagship/backfill"


async def _seeded(api: Any, host: Any) -> None:
    await seed(api.db, host, members=4, vip=2)
    vault = Settings(database_url=api.db.url, secret_key=SECRET_KEY).vault()
    async with api.db.sessions() as session, session.begin():
        await channels.create_account(
            session, host, vault, "taobao", "tmall-flagship",
            {"app_key": "12345678", "app_secret": "app-s3cret", "session": "token"},
        )  # fmt: skip


async def test_an_operator_starts_a_backfill_and_its_refusals_are_chinese(make_client: Any) -> None:
    host = ops_host()
    host.register(taobao_plugin, "taobao")
    async with make_client(host=host, role=None) as api:
        await _seeded(api, host)
        token = await sign_in(api, "operator")
        listing = (await api.get("/console/channels")).text
        assert f'<a href="{PAGE}" class="word" data-backfill-link>补拉订单</a>' in listing
        assert "/console/channels/SH001/backfill" not in listing  # a store's tills push their orders

        async def refused(form: dict[str, str], says: str, status: int = 400) -> str:
            answer = await api.post(PAGE, data={**form, "csrf_token": token})
            assert answer.status_code == status, answer.text
            assert f'<p role="alert" class="error" data-problem>{says}</p>' in answer.text, answer.text
            assert "系统说明" not in answer.text  # said from its code, not the English fallback
            return answer.text

        page = await refused(
            {"since": "2026-11-01T08:00", "until": "2026-11-02T08:00", "window_hours": "0"},
            "每个窗口的时长必须大于 0 小时。",
        )
        # the form keeps what was typed
        assert 'name="since" type="datetime-local" required value="2026-11-01T08:00"' in page
        assert 'name="window_hours" inputmode="decimal" size="6" value="0"' in page
        await refused(
            {"since": "2026-11-03T08:00", "until": "2026-11-02T08:00", "window_hours": "24"},
            "补拉的开始时间必须早于结束时间：现在填的是从 2026-11-03 08:00 到 2026-11-02 08:00。",
        )
        await refused(
            {"since": "2020-01-01T00:00", "until": "2026-01-01T00:00", "window_hours": "0.5"},
            "按每个窗口 0.5 小时，这段时间要切成 105,216 个窗口，一次补拉最多 10,000 个：请把窗口调长，或缩短时间段。",
        )
        await refused({"since": "", "window_hours": "24"}, "起始日期：请填写。", 422)
        await refused(
            {"since": "11/01/2026", "window_hours": "24"},
            "起始日期：“11/01/2026”不是日期和时间，请按 2026-11-11 10:00 的格式填写。",
            422,
        )
        await refused(
            {"since": "2026-11-01T08:00", "window_hours": "1" + "0" * 29},
            f"每个窗口（小时）：“1{'0' * 29}”超过了上限 8,784。",
            422,
        )
        await refused(  # a NUL after the time: Python's fromisoformat alone read it as 2026-11-01 08:00
            {"since": "2026-11-01T08:00\x00", "window_hours": "24"},
            "起始日期：“2026-11-01T08:00\u2400”不是日期和时间，请按 2026-11-11 10:00 的格式填写。",
            422,
        )
        await refused(
            {"since": "0001-01-01T00:00", "window_hours": "24"},
            "起始日期：“0001-01-01T00:00”不是日期和时间，请按 2026-11-11 10:00 的格式填写。",
            422,
        )
        english = await api.post(
            PAGE + "?lang=en",
            data={
                "since": "2026-11-01T08:00",
                "until": "2026-11-02T08:00",
                "window_hours": "0",
                "csrf_token": token,
            },
        )
        assert english.status_code == 400 and "a backfill window must be longer than zero" in english.text
        await api.get("/console/channels?lang=zh")
        async with api.db.sessions() as session:
            assert (await session.execute(sa.select(sa.func.count()).select_from(Backfill))).scalar_one() == 0

        # three days in windows of a day, from the programme's local midnight
        started = await api.post(
            PAGE,
            data={
                "since": "2026-11-01T00:00",
                "until": "2026-11-04T00:00",
                "window_hours": "24",
                "csrf_token": token,
            },
            follow_redirects=False,
        )
        assert started.status_code == 303, started.text
        shown = (await api.get(started.headers["location"])).text
        async with api.db.sessions() as session:
            made = (await session.execute(sa.select(Backfill))).scalar_one()
            windows = list(
                (
                    await session.execute(
                        sa.select(BackfillWindow)
                        .where(BackfillWindow.backfill_id == made.id)
                        .order_by(BackfillWindow.seq)
                    )
                ).scalars()
            )
            jobs = (
                await session.execute(
                    sa.select(sa.func.count()).select_from(Job).where(Job.name == backfill.WINDOW_JOB)
                )
            ).scalar_one()
            (entry,) = (
                await session.execute(
                    sa.select(AuditEntry).where(AuditEntry.action == "channel_account.backfill")
                )
            ).scalars()
        assert made.since == datetime(2026, 11, 1, tzinfo=SH) and made.until == datetime(
            2026, 11, 4, tzinfo=SH
        )
        assert [w.start for w in windows] == [
            datetime(2026, 11, d, tzinfo=SH) for d in (1, 2, 3)
        ] and jobs == 3
        assert entry.role == "operator" and entry.object_id == "tmall-flagship"
        assert entry.after is not None and entry.after["windows"] == 3 and entry.after["window_hours"] == 24
        assert (
            f'data-started="{made.id}"' in shown
            and f'data-backfill="{made.id}" data-status="running"' in shown
        )
        assert 'data-windows="0/3">0 / 3<' in shown and "进行中" in shown

        # an empty "to" is up to now, short of the minutes the platform indexes late
        before = datetime.now(UTC)
        up_to_now = await api.post(
            PAGE,
            data={"since": "2026-11-01T00:00", "window_hours": "240", "csrf_token": token},
            follow_redirects=False,
        )
        assert up_to_now.status_code == 303, up_to_now.text
        async with api.db.sessions() as session:
            latest = (
                await session.execute(sa.select(Backfill).order_by(Backfill.id.desc()).limit(1))
            ).scalar_one()
        assert before - backfill.PRESENT_MARGIN <= latest.until <= datetime.now(UTC) - backfill.PRESENT_MARGIN

        # a store's account: nothing to pull, said in Chinese, and no form
        store = await api.get("/console/channels/SH001/backfill")
        assert (
            store.status_code == 200
            and "data-cannot-fetch" in store.text
            and "data-write" not in store.text.split("<main")[1]
        )
        no = await api.post(
            "/console/channels/SH001/backfill", data={"since": "2026-11-01T00:00", "csrf_token": token}
        )
        assert no.status_code == 422 and "这个渠道的订单由门店收银推送，不从平台拉取，无法补拉。" in no.text
        assert (await api.get("/console/channels/nowhere/backfill")).status_code == 404

        # analysts read the progress, get no form, and their POST is refused
        analyst = await sign_in(api, "analyst")
        read = (await api.get(PAGE)).text
        assert (
            f'data-backfill="{made.id}"' in read
            and 'name="since"' not in read
            and "只有运营和管理员可以补拉订单。" in read
        )
        forged = await api.post(PAGE, data={"since": "2026-11-01T00:00", "csrf_token": analyst})
        assert forged.status_code == 403


def test_the_service_keeps_its_english_message_beside_the_code() -> None:
    """The CLI (``tongcrm sync --window-hours``) shows the message; the console the code's sentence."""
    at = datetime(2026, 11, 3, 8, tzinfo=SH)
    with pytest.raises(BadRequest, match="a backfill needs since < until") as caught:
        backfill.split(at, at - timedelta(days=1), timedelta(hours=1))
    assert caught.value.code == "backfill.since_not_before_until"
    assert caught.value.params == {"since": "2026-11-03 08:00", "until": "2026-11-02 08:00"}
    with pytest.raises(BadRequest, match="must be longer than zero") as zero:
        backfill.split(at, at + timedelta(days=1), timedelta(0))
    assert zero.value.code == "backfill.window_not_positive"
