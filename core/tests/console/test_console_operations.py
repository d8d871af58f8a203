"""The console's operations pages over HTTP (no browser), on each backend: segments with the live count, the
export and "why"; campaigns with their report; the calendar; care flows; points rules with the backtest; tiers
with the review preview; channel accounts and stores. Roles as in the API (an analyst sees no write control and
its POSTs are refused), CSRF on every POST, Chinese and English labels."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.audit.models import AuditEntry
from tongcrm.campaigns.models import CalendarMark, Campaign, CampaignRun
from tongcrm.console.campaign_pages import schedule_from_form, yuan_to_fen
from tongcrm.console.charts import DailyPoint, daily_counts
from tongcrm.console.i18n import CATALOGS
from tongcrm.errors import Unprocessable
from tongcrm.messaging.models import Message
from tongcrm.messaging.policy import Reason
from tongcrm.segments.models import Segment

from .conftest import sign_in
from .ops_kit import SH, VIP, ops_host, seed

PAGES = (
    "/console/segments",
    "/console/segments/new",
    "/console/campaigns",
    "/console/campaigns/spring",
    "/console/campaigns/autumn",
    "/console/care-flows",
    "/console/calendar",
    "/console/points/rules",
    "/console/tiers",
    "/console/channels",
    "/console/care-flows/settings",
)
WRITE_MARK = "data-write"


def _json_headers(csrf: str) -> dict[str, str]:
    return {"X-CSRF-Token": csrf, "Content-Type": "application/json"}


async def test_every_page_renders_for_each_role_and_analysts_see_no_write_control(
    make_client: Any, tongcrm_db: Any
) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        ops = await seed(api.db, host)
        for role in ("admin", "operator", "analyst"):
            await sign_in(api, role)
            for path in (*PAGES, f"/console/segments/{ops.segment_id}"):
                page = await api.get(path)
                assert page.status_code == 200, (role, path, page.text[:500])
                writes = path in _WRITE_PAGES or path.startswith("/console/segments/")
                admin_writes = path in _ADMIN_WRITE_PAGES  # storing a rule set: admin-only, as in the API
                expected = (role != "analyst" and writes) or (role == "admin" and admin_writes)
                assert (WRITE_MARK in page.text) == expected, (role, path)
            for nav in ("人群", "营销活动", "营销日历", "积分规则", "等级体系", "渠道与门店"):
                assert nav in page.text
            edit = await api.get(f"/console/segments/{ops.segment_id}/edit")
            assert edit.status_code == (403 if role == "analyst" else 200)

        detail = (await api.get(f"/console/segments/{ops.segment_id}")).text
        assert 'data-figure="live-count">36<' in detail
        assert "<svg" in detail and 'role="img"' in detail
        assert "+8613900000000" not in detail and "13900000000" not in detail  # masked
        assert detail.count('data-member="') == 25  # one page; a next-page link for the rest
        assert 'rel="next"' in detail
        second = (await api.get(f"/console/segments/{ops.segment_id}?after={ops.vip[24]}")).text
        assert second.count('data-member="') == 11 and 'rel="next"' not in second

        why_in = (await api.get(f"/console/segments/{ops.segment_id}/why?member_id={ops.vip[0]}")).text
        assert 'data-member-in="true"' in why_in and 'data-met="true"' in why_in
        outsider = ops.members[-1]
        why_out = (await api.get(f"/console/segments/{ops.segment_id}/why?member_id={outsider}")).text
        assert 'data-member-in="false"' in why_out and 'data-met="false"' in why_out

        report = (await api.get("/console/campaigns/autumn")).text
        assert "data-too-small" in report and "样本太小" in report
        # the reason in the page's language (the API's is an English sentence)
        assert "每组至少需要 30 名符合条件的会员" in report and "each group needs" not in report
        assert 'data-chart="campaign-report"' in report and "<svg" in report
        # the chart's words in the page's language too (report.svg, the API's, stays English)
        assert "触达组 vs 对照组" in report and ">对照组</text>" in report and ">合计</text>" in report
        assert "treated vs control" not in report and ">total</text>" not in report
        english = (await api.get("/console/campaigns/autumn?lang=en")).text
        assert "treated vs control" in english and ">total</text>" in english
        await api.get("/console/campaigns/autumn?lang=zh")
        assert "已入队" in report  # the run, queued
        draft = (await api.get("/console/campaigns/spring")).text
        assert 'data-status="draft"' in draft
        # a campaign that has sent nothing says so, instead of a report of zeros ("treated 0, control 0")
        assert "data-no-report" in draft and "暂无效果报告" in draft
        assert "data-too-small" not in draft and 'data-chart="campaign-report"' not in draft

        month = datetime.now(UTC).astimezone(SH).strftime("%Y-%m")
        cal = (await api.get(f"/console/calendar?month={month}")).text
        assert "会员日" in cal and 'data-kind="mark"' in cal
        run_day = (datetime.now(UTC) + timedelta(hours=1)).astimezone(SH)
        if run_day.strftime("%Y-%m") == month:
            assert 'data-kind="run"' in cal

        channels = (await api.get("/console/channels")).text
        assert 'data-account="tmall-shop" data-needs-reauth="true"' in channels
        assert "s3cret" not in channels
        # the last sync error said from its code; the English sentence rides along for support
        assert (
            'data-sync-error="authorisation failed: invalid session">授权失效，同步已停止：请重新授权此账户。</span>'
            in channels
        )
        assert 'data-store="SH001"' in channels and "上海南京西路店" in channels
        assert 'data-account="SH001" data-needs-reauth="false"' in channels
        # the channel's name as its plugin gives it for the page's language (ChannelSpec.display_names)
        assert "线下门店（POS）" in channels and "Offline store" not in channels
        reauth = (await api.get("/console/channels/SH001/reauthorise")).text
        assert "线下门店（POS）" in reauth and "Offline store" not in reauth
        english = (await api.get("/console/channels?lang=en")).text
        assert "Offline store (POS)" in english and "线下门店" not in english
        await api.get("/console/channels?lang=zh")

        tiers = (await api.get("/console/tiers")).text
        assert "data-review" in tiers and 'data-tier-code="gold"' in tiers
        rules = (await api.get("/console/points/rules")).text
        assert 'data-rule-version="1" data-status="active"' in rules

        care = (await api.get("/console/care-flows")).text
        assert 'data-flow="payment_reminder"' in care
        # each flow by its name in the page's language (the flow's own title mixed Chinese and English)
        assert (
            "催付 <span" in care
            and "order created and still unpaid" not in care
            and "whole or partial" not in care
        )
        assert "未确认（网关无应答，不重发）" in care  # sent without an answer: its own column, not "sent"


_WRITE_PAGES = {"/console/segments", "/console/segments/new", "/console/campaigns", "/console/campaigns/spring",
                "/console/campaigns/autumn", "/console/calendar", "/console/channels",
                "/console/care-flows/settings"}  # fmt: skip
_ADMIN_WRITE_PAGES = {"/console/points/rules"}


async def test_the_live_count_follows_the_draft_and_names_mistakes(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host)
        csrf = await sign_in(api, "analyst")  # previews write nothing: analysts may count, as in the API
        vip = await api.post(
            "/console/segments/preview", json={"definition": VIP}, headers=_json_headers(csrf)
        )
        assert vip.status_code == 200, vip.text
        assert vip.json() == {"count": 36, "warnings": [], "errors": []}
        narrower = {
            "version": 1,
            "condition": {"all": [VIP["condition"], {"field": "orders.count", "op": "gte", "value": 1}]},
        }
        answer = await api.post(
            "/console/segments/preview", json={"definition": narrower}, headers=_json_headers(csrf)
        )
        assert answer.json()["count"] == 5
        typo = {"version": 1, "condition": {"all": [{"field": "orders.spnd", "op": "gte", "value": 1}]}}
        bad = await api.post(
            "/console/segments/preview", json={"definition": typo}, headers=_json_headers(csrf)
        )
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["pointer"] == "/condition/all/0/field"
        assert "是不是“orders.spend”" in bad.json()["errors"][0]["detail"]
        unknown_tag = {"version": 1, "condition": {"field": "tags", "op": "has", "value": "vipp"}}
        warned = await api.post(
            "/console/segments/preview", json={"definition": unknown_tag}, headers=_json_headers(csrf)
        )
        assert warned.json()["count"] == 0 and warned.json()["warnings"]
        # without the session's token, or from another site, the count is refused
        forged = await api.post("/console/segments/preview", json={"definition": VIP})
        assert forged.status_code == 403
        cross = await api.post(
            "/console/segments/preview", json={"definition": VIP},
            headers={**_json_headers(csrf), "Origin": "https://evil.example"},
        )  # fmt: skip
        assert cross.status_code == 403
        # the form without JavaScript counts too
        page = await api.post(
            "/console/segments/check", data={"csrf_token": csrf, "definition": '{"version": 1, "condition": '
                                             '{"field": "tags", "op": "has", "value": "vip"}}'},
        )  # fmt: skip
        assert page.status_code == 200 and 'data-count="36"' in page.text
        broken = await api.post("/console/segments/check", data={"csrf_token": csrf, "definition": "{nope"})
        assert broken.status_code == 200 and "条件不是合法的 JSON" in broken.text


async def test_saving_segments_through_the_forms(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        ops = await seed(api.db, host)
        definition = '{"version": 1, "condition": {"field": "orders.count", "op": "gte", "value": 1}}'
        form = {"name": "buyers", "definition": definition, "description": "买过的", "note": "first"}

        csrf = await sign_in(api, "analyst")
        refused = await api.post("/console/segments/", data={**form, "csrf_token": csrf})
        assert refused.status_code == 403

        csrf = await sign_in(api, "operator")
        no_token = await api.post("/console/segments/", data=form)
        assert no_token.status_code == 403 and "表单已过期" in no_token.text
        saved = await api.post(
            "/console/segments/", data={**form, "csrf_token": csrf}, follow_redirects=False
        )
        assert saved.status_code == 303, saved.text
        async with api.db.sessions() as session:
            created = (await session.execute(sa.select(Segment).where(Segment.name == "buyers"))).scalar_one()
            audited = (
                (
                    await session.execute(
                        sa.select(AuditEntry.action).where(
                            AuditEntry.object_type == "segment", AuditEntry.object_id == str(created.id)
                        )
                    )
                )
                .scalars()
                .all()
            )
        assert saved.headers["location"] == f"/console/segments/{created.id}?saved=1"
        assert audited, "the service audits the save"
        page = await api.get(saved.headers["location"])
        assert 'data-figure="live-count">5<' in page.text and "已保存为第 1 版" in page.text

        twice = await api.post("/console/segments/", data={**form, "csrf_token": csrf})
        assert twice.status_code == 409 and "buyers" in twice.text and "买过的" in twice.text  # kept as typed
        typo = definition.replace("orders.count", "orders.cont")
        invalid = await api.post(
            "/console/segments/", data={**form, "name": "other", "definition": typo, "csrf_token": csrf}
        )
        assert invalid.status_code == 422 and 'data-pointer="/condition/field"' in invalid.text

        wider = '{"version": 1, "condition": {"field": "orders.count", "op": "gte", "value": 0}}'
        again = await api.post(
            f"/console/segments/{created.id}", data={"definition": wider, "note": "all", "csrf_token": csrf},
            follow_redirects=False,
        )  # fmt: skip
        assert again.status_code == 303
        page = await api.get(again.headers["location"])
        assert 'data-version="2"' in page.text and 'data-version="1"' in page.text
        assert 'data-figure="live-count">40<' in page.text
        assert ops.segment_id != created.id


async def test_the_export_is_masked_audited_and_reveals_only_for_admins(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        ops = await seed(api.db, host, members=6, vip=4)
        await sign_in(api, "analyst")
        masked = await api.get(f"/console/segments/{ops.segment_id}/export")
        assert masked.status_code == 200 and masked.headers["x-total-count"] == "4"
        assert masked.headers["content-type"] == "text/csv; charset=utf-8"  # one charset parameter
        # a UTF-8 byte order mark first, so that Excel on a Chinese Windows reads the names as UTF-8, not GBK
        assert masked.content.startswith(b"\xef\xbb\xbfid,")
        rows = list(csv.DictReader(io.StringIO(masked.content.decode("utf-8-sig"))))
        assert "id" in rows[0]
        assert len(rows) == 4 and all("*" in r["mobile"] for r in rows)
        refused = await api.get(f"/console/segments/{ops.segment_id}/export?reveal=mobile")
        assert refused.status_code == 403
        detail = (await api.get(f"/console/segments/{ops.segment_id}")).text
        assert "reveal=mobile" not in detail

        await sign_in(api, "admin")
        assert "reveal=mobile" in (await api.get(f"/console/segments/{ops.segment_id}")).text
        revealed = await api.get(f"/console/segments/{ops.segment_id}/export?reveal=mobile")
        rows = list(csv.DictReader(io.StringIO(revealed.content.decode("utf-8-sig"))))
        assert {r["mobile"] for r in rows} == {f"+86139{n:08d}" for n in range(4)}
        async with api.db.sessions() as session:
            exports = (
                (
                    await session.execute(
                        sa.select(AuditEntry.role)
                        .where(AuditEntry.action == "segment.export")
                        .order_by(AuditEntry.seq)
                    )
                )
                .scalars()
                .all()
            )
        assert exports == ["analyst", "admin"]  # the refused reveal left no record


async def test_campaigns_are_created_scheduled_and_cancelled_through_the_forms(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=6, vip=4)
        form = {
            "name": "winter", "goal": "冬季", "segment": "vip", "template": "promo", "control_percent": "20",
            "response_kind": "order", "within_days": "7", "min_paid_yuan": "49.90", "sku": "", "budget_messages": "",
            "message_cost_yuan": "0.05",
        }  # fmt: skip
        csrf = await sign_in(api, "analyst")
        assert (await api.post("/console/campaigns/", data={**form, "csrf_token": csrf})).status_code == 403
        assert (
            await api.post("/console/campaigns/spring/cancel", data={"csrf_token": csrf})
        ).status_code == 403

        csrf = await sign_in(api, "operator")
        bad = await api.post(
            "/console/campaigns/", data={**form, "control_percent": "60", "csrf_token": csrf}
        )
        assert bad.status_code == 422 and "data-problem" in bad.text and 'value="winter"' in bad.text
        cents = await api.post(
            "/console/campaigns/", data={**form, "min_paid_yuan": "49.999", "csrf_token": csrf}
        )
        assert cents.status_code == 422 and "最低实付（元）：“49.999”超过两位小数" in cents.text
        cost = await api.post(
            "/console/campaigns/", data={**form, "message_cost_yuan": "0.055", "csrf_token": csrf}
        )
        assert cost.status_code == 422 and "每条短信成本（元）：“0.055”超过两位小数" in cost.text
        made = await api.post(
            "/console/campaigns/", data={**form, "csrf_token": csrf}, follow_redirects=False
        )
        assert made.status_code == 303 and made.headers["location"] == "/console/campaigns/winter?created=1"
        async with api.db.sessions() as session:
            winter = (
                await session.execute(sa.select(Campaign).where(Campaign.name == "winter"))
            ).scalar_one()
        assert winter.response == {"kind": "order", "within_days": 7, "min_paid_fen": 4990}
        assert winter.control_bp == 2000 and winter.message_cost_fen == 5 and winter.status == "draft"
        shown = (await api.get("/console/campaigns/winter")).text  # the amounts typed in yuan, shown in yuan
        assert 'data-value="5">¥0.05<' in shown and "实付满 ¥49.90 才算" in shown

        past = await api.post(
            "/console/campaigns/winter/schedule",
            data={"kind": "once", "at": "2020-01-01T10:00", "csrf_token": csrf},
        )
        assert (
            past.status_code == 422
            and "计划时间已过：2020-01-01 10:00 早于现在" in past.text
            and "in the past" not in past.text
        )
        at = (datetime.now(UTC) + timedelta(days=2)).astimezone(SH).strftime("%Y-%m-%dT10:00")
        done = await api.post(
            "/console/campaigns/winter/schedule", data={"kind": "once", "at": at, "csrf_token": csrf},
            follow_redirects=False,
        )  # fmt: skip
        assert done.status_code == 303, done.text
        page = (await api.get(done.headers["location"])).text
        assert 'data-status="scheduled"' in page and "已排期" in page
        cancelled = await api.post(
            "/console/campaigns/winter/cancel", data={"csrf_token": csrf}, follow_redirects=False
        )
        assert cancelled.status_code == 303
        page = (await api.get(cancelled.headers["location"])).text
        assert (
            'data-status="cancelled"' in page
            and WRITE_MARK not in page.split("<main")[1].split("h-report")[0]
        )
        again = await api.post("/console/campaigns/winter/cancel", data={"csrf_token": csrf})
        assert again.status_code == 409 and "营销活动“winter”已经是“已取消”状态" in again.text
        assert "already cancelled" not in again.text


async def test_an_over_budget_schedule_is_refused_in_chinese_and_keeps_the_campaign_a_draft(
    make_client: Any,
) -> None:
    """The budget refusal carries a code (``campaign.over_budget_messages``) and its figures, so the page says
    it in Chinese instead of the fallback around the English sentence; the API's detail stays English."""
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=6, vip=4)
        csrf = await sign_in(api, "operator")
        form = {
            "name": "tight", "goal": "", "segment": "vip", "template": "promo", "control_percent": "0",
            "response_kind": "order", "within_days": "7", "min_paid_yuan": "", "sku": "", "budget_messages": "1",
            "message_cost_yuan": "0", "csrf_token": csrf,
        }  # fmt: skip
        made = await api.post("/console/campaigns/", data=form, follow_redirects=False)
        assert made.status_code == 303, made.text
        at = (datetime.now(UTC) + timedelta(days=2)).astimezone(SH).strftime("%Y-%m-%dT10:00")
        refused = await api.post(
            "/console/campaigns/tight/schedule", data={"kind": "once", "at": at, "csrf_token": csrf}
        )
        assert refused.status_code == 422
        assert (
            "超出短信预算：这次运行要给 4 位会员发送，预算 1 条只剩 1 条；未排期" in refused.text
            and "budget exceeded" not in refused.text
            and "系统说明" not in refused.text
        )
        assert f'value="{at}"' in refused.text  # the schedule form keeps what was typed
        async with api.db.sessions() as session:
            tight = (await session.execute(sa.select(Campaign).where(Campaign.name == "tight"))).scalar_one()
        assert tight.status == "draft" and tight.next_run_at is None


async def test_a_refused_run_s_reason_is_chinese_on_the_campaign_page_and_english_in_the_api(
    make_client: Any,
) -> None:
    """A run the scheduler refused keeps a reason code and its figures beside the English sentence: the Chinese
    page words each from the code (a run whose segment broke says that refusal in Chinese too), the English page
    and the API show the sentence."""
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host)
        now = datetime.now(UTC)
        budget = "budget exceeded: the run would message 4 members and 1 messages are left of the budget of 9"
        broke = "the run could not start: no field tier_x"
        async with api.db.sessions() as session, session.begin():
            spring = (
                await session.execute(sa.select(Campaign).where(Campaign.name == "spring"))
            ).scalar_one()
            session.add_all([
                CampaignRun(
                    campaign_id=spring.id, scheduled_for=now - timedelta(days=3), started_at=now, segment_version=1,
                    status="refused", reason=budget, reason_code="campaign.over_budget_messages",
                    reason_params={"treated": 4, "left": 1, "budget": 9}, audience=4, control=0,
                ),
                CampaignRun(
                    campaign_id=spring.id, scheduled_for=now - timedelta(days=2), started_at=now, segment_version=1,
                    status="refused", reason=broke, reason_code="campaign_run.could_not_start",
                    reason_params={"code": "segment.unknown_field", "params": {"name": "tier_x"},
                                   "message": "no field tier_x"},
                    audience=0, control=0,
                ),
                CampaignRun(  # refused before the code was kept (revision 0041 set no figures for a budget)
                    campaign_id=spring.id, scheduled_for=now - timedelta(days=1), started_at=now, segment_version=1,
                    status="refused", reason=budget, reason_code="campaign.over_budget_messages",
                    reason_params=None, audience=4, control=0,
                ),
            ])  # fmt: skip
        await sign_in(api, "analyst")
        page = (await api.get("/console/campaigns/spring?lang=zh")).text
        assert "超出短信预算：本次要给 4 位会员发送，预算 9 条只剩 1 条；本次未发送。" in page
        assert "本次运行无法开始，未发送：没有“tier_x”这个字段。" in page
        # the run without figures: the Chinese fallback, the English sentence after it
        assert "本次运行被拒绝，未发送。（系统说明：budget exceeded" in page
        assert "could not start" not in page
        english = (await api.get("/console/campaigns/spring?lang=en")).text
        assert budget in english and broke in english and "超出" not in english
        key = await api.create_key("analyst")
        answer = await api.get("/api/campaigns/spring/runs", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200, answer.text
        assert {r["reason"] for r in answer.json()} >= {budget, broke}


async def test_a_campaign_report_names_the_send_log_s_refusals_in_the_page_s_language(
    make_client: Any,
) -> None:
    """The report's "refused" line counts the send log's refusals by their stored reason code: the Chinese page
    names each reason (``send_refusal.*``), the English one in English, the API keeps the codes; a code the
    catalogue does not know (a later version's) shows as stored."""
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host)
        async with api.db.sessions() as session, session.begin():
            ids = list(
                (
                    await session.execute(
                        sa.select(Message.id)
                        .where(Message.flow == "campaign.autumn", Message.held_out.is_(False))
                        .order_by(Message.id)
                    )
                ).scalars()
            )
            assert len(ids) >= 4
            for message_id, reason in zip(
                ids[:4], ("quiet_hours", "quiet_hours", "opted_out", "later_reason"), strict=True
            ):
                await session.execute(
                    sa.update(Message).where(Message.id == message_id).values(status="refused", reason=reason)
                )
        await sign_in(api, "analyst")
        page = (await api.get("/console/campaigns/autumn?lang=zh")).text
        assert '<span data-refusal="quiet_hours">免打扰时段：2</span>' in page
        assert '<span data-refusal="opted_out">已退订：1</span>' in page
        assert '<span data-refusal="later_reason">later_reason：1</span>' in page
        english = (await api.get("/console/campaigns/autumn?lang=en")).text
        assert '<span data-refusal="quiet_hours">quiet hours: 2</span>' in english
        key = await api.create_key("analyst")
        report = await api.get("/api/campaigns/autumn/report", headers={"Authorization": f"Bearer {key}"})
        assert report.status_code == 200, report.text
        assert report.json()["total"]["refused"] == {"quiet_hours": 2, "opted_out": 1, "later_reason": 1}


def test_every_contact_policy_reason_is_named_in_each_language() -> None:
    for lang in ("zh", "en"):
        missing = [r.value for r in Reason if f"send_refusal.{r.value}" not in CATALOGS[lang]]
        assert missing == [], lang


async def test_calendar_marks_and_clashes(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=6, vip=4)
        csrf = await sign_in(api, "operator")
        # spring goes out the same local day as autumn's planned run, to the same segment: a clash
        run_local = (datetime.now(UTC) + timedelta(days=3)).astimezone(SH)
        at = run_local.strftime("%Y-%m-%dT10:00")
        for name in ("spring",):
            answer = await api.post(
                f"/console/campaigns/{name}/schedule", data={"kind": "once", "at": at, "csrf_token": csrf},
                follow_redirects=False,
            )  # fmt: skip
            assert answer.status_code == 303, answer.text
        made = await api.post("/console/campaigns/", data={
            "name": "winter", "segment": "vip", "template": "promo", "control_percent": "10",
            "response_kind": "store_visit", "within_days": "14", "csrf_token": csrf}, follow_redirects=False)  # fmt: skip
        assert made.status_code == 303
        answer = await api.post(
            "/console/campaigns/winter/schedule", data={"kind": "once", "at": at, "csrf_token": csrf},
            follow_redirects=False,
        )  # fmt: skip
        assert answer.status_code == 303
        month = run_local.strftime("%Y-%m")
        cal = (await api.get(f"/console/calendar?month={month}")).text
        assert f'data-clash="{run_local.date().isoformat()}"' in cal and "spring, winter" in cal

        day = run_local.date().isoformat()
        added = await api.post(
            "/console/calendar/marks", data={"on": day, "name": "双11大促", "kind": "platform_event", "csrf_token": csrf},
            follow_redirects=False,
        )  # fmt: skip
        assert added.status_code == 303 and added.headers["location"] == f"/console/calendar?month={month}"
        cal = (await api.get(added.headers["location"])).text
        assert "★ 双11大促" in cal and "平台大促" in cal
        wrong = await api.post(
            "/console/calendar/marks", data={"on": day, "name": "x", "kind": "party", "csrf_token": csrf}
        )
        assert wrong.status_code == 422
        async with api.db.sessions() as session:
            mark_id = (
                await session.execute(sa.select(CalendarMark.id).where(CalendarMark.name == "双11大促"))
            ).scalar_one()

        analyst_csrf = await sign_in(api, "analyst")
        cal = (await api.get(f"/console/calendar?month={month}")).text
        assert "/remove" not in cal and "h-mark" not in cal
        assert (
            await api.post(f"/console/calendar/marks/{mark_id}/remove", data={"csrf_token": analyst_csrf})
        ).status_code == 403

        csrf = await sign_in(api, "operator")
        removed = await api.post(
            f"/console/calendar/marks/{mark_id}/remove",
            data={"month": month, "csrf_token": csrf},
            follow_redirects=False,
        )
        assert removed.status_code == 303
        assert "双11大促" not in (await api.get(removed.headers["location"])).text
        bad_month = await api.get("/console/calendar?month=2026-13")
        assert bad_month.status_code == 422


async def test_backtest_and_tier_previews(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=6, vip=4)
        csrf = await sign_in(api, "analyst")
        page = (await api.get("/console/points/rules")).text
        assert "<textarea" in page and "&#34;base&#34;" in page and WRITE_MARK not in page
        double = '{"rules": [{"type": "spend", "code": "base", "priority": 100, "points_per_yuan": "2", "release": "paid"}]}'
        since = (datetime.now(UTC) - timedelta(days=90)).date().isoformat()
        answer = await api.post(
            "/console/points/rules/backtest", data={"document": double, "since": since, "csrf_token": csrf}
        )
        assert answer.status_code == 200, answer.text
        found = re.search(r"data-backtest>\s*<p[^>]*>([^<]*)</p>", answer.text)
        assert found is not None and "5 笔订单" in found.group(1) and "草稿规则 1290 分" in found.group(1)
        broken = await api.post(
            "/console/points/rules/backtest", data={"document": "{", "since": since, "csrf_token": csrf}
        )
        assert (
            broken.status_code == 400 and "草稿不是合法的 JSON：第 1 行" in broken.text and "{" in broken.text
        )
        wrong = await api.post(
            "/console/points/rules/backtest",
            data={"document": '{"rules": 1}', "since": since, "csrf_token": csrf},
        )
        assert wrong.status_code == 422
        forged = await api.post("/console/points/rules/backtest", data={"document": double, "since": since})
        assert forged.status_code == 403

        ladder = (
            '{"window_months": 12, "review": {"mode": "anniversary", "one_step": false}, "tiers": ['
            '{"code": "member", "name": "会员"}, {"code": "silver", "name": "银卡", '
            '"rule": {"metric": "spend_fen", "min": 10000}}]}'
        )
        preview = await api.post("/console/tiers/preview", data={"ladder": ladder, "csrf_token": csrf})
        assert preview.status_code == 200, preview.text
        body = preview.text[preview.text.find("data-draft-preview") :]
        assert "data-draft-preview" in preview.text and 'data-move="member>silver"' in body
        assert 'data-moves-up="5"' in preview.text
        unfair = await api.post(
            "/console/tiers/preview", data={"ladder": '{"tiers": []}', "csrf_token": csrf}
        )
        assert unfair.status_code == 422 and "data-problem" in unfair.text


async def test_english_labels(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        ops = await seed(api.db, host, members=4, vip=2)
        await sign_in(api, "operator")
        english = {
            "/console/segments?lang=en": "Saved segments",
            f"/console/segments/{ops.segment_id}": "Members per day",
            "/console/segments/new": "Add condition",
            "/console/campaigns": "New campaign (draft)",
            "/console/campaigns/autumn": "Sample too small",
            "/console/calendar": "Mark a day",
            "/console/care-flows": "Care-flow reports",
            "/console/points/rules": "Backtest a draft",
            "/console/tiers": "Review preview: who moves",
            "/console/channels": "Channels &amp; stores",
        }
        for path, label in english.items():
            page = await api.get(path)  # the language cookie set by ?lang=en carries on
            assert page.status_code == 200 and label in page.text, path
        chinese = await api.get("/console/tiers?lang=zh")
        assert "复核预览" in chinese.text


def test_daily_counts_chart_escapes_its_label_and_draws_each_day() -> None:
    today = datetime(2026, 11, 11, tzinfo=UTC).date()
    svg = str(
        daily_counts(
            [DailyPoint(today - timedelta(days=2 - i), v) for i, v in enumerate((3, 7, 5))], label="<b>&"
        )
    )
    assert "<b>" not in svg and "&lt;b&gt;&amp;" in svg
    assert svg.count("<circle") == 3 and "2026-11-09" in svg and "2026-11-11" in svg
    assert "<circle" not in str(daily_counts([], label="empty"))


def test_form_values_become_exact_documents() -> None:
    assert (
        yuan_to_fen("49.90", "x") == 4990
        and yuan_to_fen(" 50 ", "x") == 5000
        and yuan_to_fen("", "x") is None
    )
    # as people write amounts
    assert yuan_to_fen("¥1,299.50", "x") == 129950 and yuan_to_fen("99元", "x") == 9900
    assert yuan_to_fen("￥ 5", "x") == 500
    for bad, says in [
        ("1.234", "more than 2 decimals"),
        ("-1", "is negative"),
        ("abc", "not an amount"),
        ("Infinity", "not an amount"),
        ("NaN", "not an amount"),
        ("1e30", "more than the most"),
        ("99999999999999999999", "more than the most"),
        ("1000000000.01", "more than the most an amount may be"),
    ]:
        with pytest.raises(Unprocessable, match=says):
            yuan_to_fen(bad, "x")
    assert yuan_to_fen("1000000000", "x") == 100_000_000_000  # 10 亿元, the most, still taken
    once = schedule_from_form({"kind": ["once"], "at": ["2026-11-11T00:30"]}, SH)
    assert once == {"kind": "once", "at": "2026-11-11T00:30:00+08:00"}
    weekly = schedule_from_form(
        {"kind": ["weekly"], "time": ["20:00"], "weekdays": ["1", "5"], "until": ["2026-12-31"]}, SH
    )
    assert weekly == {"kind": "weekly", "time": "20:00", "weekdays": [1, 5], "until": "2026-12-31"}
    with pytest.raises(Unprocessable):
        schedule_from_form({"kind": ["hourly"]}, SH)
    with pytest.raises(Unprocessable):
        schedule_from_form({"kind": ["monthly"], "time": ["10:00"], "day": [str(10**30)]}, SH)
