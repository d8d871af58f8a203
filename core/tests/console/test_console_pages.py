"""The console's pages over HTTP on each backend: the dashboard equals the API's figures, member search and
the 360 page of a shopper who bought on Tmall and in a store, undoing a merge (the ledger splits back), masking
and roles (analysts see no write control and cannot post one), the audit log and API keys."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.audit.models import AuditEntry
from tongcrm.auth.models import ApiKey
from tongcrm.channels.models import ChannelAccount, QuarantinedRecord, SyncState
from tongcrm.config import Settings
from tongcrm.console import testing as seed
from tongcrm.db.base import utcnow
from tongcrm.identity.models import Merge
from tongcrm.messaging.models import Message, MessageTemplate, MessengerAccount
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import IdentityClaim
from tongcrm.privacy.sealed import QUARANTINE_PAYLOAD, seal

from .conftest import csrf_of, sign_in


@pytest.fixture
def host() -> PluginHost:
    return PluginHost(autoload=True, disabled=set())


async def _seeded(api: Any, host: PluginHost, settings: Settings) -> seed.Seeded:
    return await seed.seed_shoppers(api.db.sessions, host, settings.vault())


async def _audited(api: Any, action: str) -> list[Any]:
    """What the audit records of ``action`` hold after the change, oldest first."""
    async with api.db.sessions() as session:
        rows = await session.execute(
            sa.select(AuditEntry.after).where(AuditEntry.action == action).order_by(AuditEntry.id)
        )
        return list(rows.scalars())


def _figure(html: str, name: str) -> int:
    found = re.search(rf'data-figure="{re.escape(name)}">(-?\d+)<', html)
    assert found is not None, name
    return int(found.group(1))


async def _operations(api: Any, s: seed.Seeded) -> None:
    """A shop that needs re-authorising after a failed sync, a quarantined record, and messages: sent and
    refused in the last week, sent three weeks ago, and one too old to count."""
    now = utcnow()
    async with api.db.sessions() as session, session.begin():
        await session.execute(
            sa.update(ChannelAccount)
            .where(ChannelAccount.id == s.tmall_account)
            .values(status="needs_reauth")
        )
        await session.execute(
            sa.update(SyncState)
            .where(SyncState.account_id == s.tmall_account)
            .values(last_error="session expired", last_error_code="sync.auth_failed", last_error_at=now)
        )
        session.add(
            QuarantinedRecord(account_id=s.store_account, reason="bad", payload="{}", fingerprint="f" * 64)
        )
        account = MessengerAccount(messenger="sms", name="sms-main")
        session.add(account)
        await session.flush()
        template = MessageTemplate(
            name="care",
            account_id=account.id,
            purpose="service",
            signature="通",
            template_code="T1",
            text="hi",
        )
        session.add(template)
        await session.flush()
        for i, (status, days) in enumerate(
            [("sent", 1), ("delivered", 2), ("refused", 3), ("sent", 20), ("refused", 25), ("sent", 40)]
        ):
            session.add(
                Message(
                    dedupe_key=f"care:{s.shopper}:{i}",
                    flow="flow.care",
                    member_id=s.shopper,
                    template_id=template.id,
                    account_id=account.id,
                    purpose="service",
                    status=status,
                    created_at=now - timedelta(days=days),
                )
            )


_STAGE_ZH = {"prospect": "潜客", "new": "新客", "repeat": "复购", "dormant": "沉睡", "churned": "流失"}


async def test_the_dashboard_shows_the_apis_figures(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role="analyst") as api:
        s = await _seeded(api, host, tongcrm_settings)
        await _operations(api, s)
        figures = (await api.get("/api/dashboard")).json()
        await sign_in(api, "analyst")
        html = (await api.get("/console/dashboard")).text
    assert figures["members"] == 1  # the merged buyer is a tombstone
    assert figures["overlap"] == [{"channels": ["offline_pos", "taobao"], "members": 1}]
    assert figures["points_liability"] == 988  # 588 + 300 + the merged buyer's 100
    assert sum(t["members"] for t in figures["tiers"]) == 1
    assert {a["name"]: a["needs_reauth"] for a in figures["accounts"]} == {
        seed.TMALL: True,
        seed.STORE: False,
    }
    assert [(m["days"], m["sent"], m["refused"], m["total"]) for m in figures["messages"]] == [
        (7, 2, 1, 3),
        (30, 3, 2, 5),
    ]
    assert figures["quarantine"] == 1
    # the sync error in Chinese from its code; the figure's value is the API's English sentence
    assert 'last_error" data-value="session expired">授权失效，同步已停止：请重新授权此账户。</span>' in html
    assert 'class="bad">是 · <a href="/console/channels/tmall-flagship/reauthorise"' in html
    for name in ("members", "points_liability", "points_pending", "points_expiring_30d", "quarantine"):
        assert _figure(html, name) == figures[name], name
    for o in figures["overlap"]:
        assert _figure(html, f"overlap.{'+'.join(o['channels'])}") == o["members"]
    # channels by their plugins' names in the page's language (data-overlap and data-value keep the codes)
    assert "<td>线下门店（POS） + 淘宝 / 天猫</td>" in html
    assert 'channel" data-value="taobao">淘宝 / 天猫</td>' in html
    for c in figures["lifecycle"]:
        # the stage in the page's language (新客, not the stored "new"); data-stage keeps the code
        assert f'data-stage="{c["key"]}"><td>{_STAGE_ZH[c["key"]]}</td>' in html
        assert _figure(html, f"stage.{c['key']}") == c["members"]
    for t in figures["tiers"]:  # tiers by the ladder's names, as the member pages show them
        name = {"regular": "普卡", "gold": "金卡"}.get(t["key"], "未定级")
        assert f'data-tier="{t["key"] or ""}"><td>{name}</td>' in html, t
    for m in figures["messages"]:
        assert _figure(html, f"messages.{m['days']}.sent") == m["sent"]
        assert _figure(html, f"messages.{m['days']}.refused") == m["refused"]


async def test_search_and_the_360_page_of_a_tmall_and_store_shopper(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role=None) as api:
        s = await _seeded(api, host, tongcrm_settings)
        await sign_in(api, "operator")
        by_name = (await api.get("/console/members", params={"name": "李"})).text
        assert (
            f'data-member="{s.shopper}"' in by_name
            and "138****8000" in by_name
            and "13800138000" not in by_name
        )
        by_identity = (await api.get("/console/members", params={"identity": "pos.card:CARD0001"})).text
        assert f'data-member="{s.shopper}"' in by_identity
        by_mobile = (await api.get("/console/members", params={"mobile": "13800138000"})).text
        assert f'data-member="{s.shopper}"' in by_mobile
        # the masked form a platform shows (typed with spaces or full-width asterisks) finds the same member
        for pattern in ("138****8000", "138 **** 8000", "138＊＊＊＊8000"):
            by_pattern = (await api.get("/console/members", params={"mobile": pattern})).text
            assert f'data-member="{s.shopper}"' in by_pattern and "13800138000" not in by_pattern, pattern
        assert (
            'data-member="' not in (await api.get("/console/members", params={"mobile": "139****8000"})).text
        )
        malformed = await api.get("/console/members", params={"mobile": "138***8000"})
        assert (
            malformed.status_code == 422
            and "正好隐去中间 4 位（138****8000），这里有 3 个星号" in malformed.text
        )
        # the search page again, not the bare error page: the form keeps what was typed, the reason beside it
        assert "data-problem" in malformed.text and "无法按此条件搜索" in malformed.text
        assert 'id="q-mobile" name="mobile" inputmode="tel" value="138***8000"' in malformed.text
        assert "未搜索" in malformed.text and "没有找到会员" not in malformed.text
        # a malformed number says what is wrong with it in Chinese, not the fallback around the English sentence
        for bad, said in (
            ("abc", "手机号：“abc”不是电话号码"),
            (
                "1390100004",
                "手机号：尾号为 04 的 10 位号码不是有效的号码。中国大陆手机号是以 1 开头的 11 位数字",
            ),
            ("010-12345678", "手机号：尾号为 78 的 11 位号码不是手机号（像是固定电话）"),
            ("13*8000", "手机号：打码的手机号是前 3 位、星号和后 4 位"),
        ):
            again = await api.get("/console/members", params={"mobile": bad})
            assert again.status_code == 422 and said in again.text and f'value="{bad}"' in again.text, bad
            assert "系统说明" not in again.text and "phone number" not in again.text, bad
        english = await api.get("/console/members", params={"mobile": "1390100004", "lang": "en"})
        assert english.status_code == 422 and "is not a valid phone number" in english.text
        await api.get("/console/members", params={"lang": "zh"})
        # names follow the masking rule too: an operator sees 李* (search by the name still works)
        assert "李*" in by_mobile and "李雷" not in by_mobile
        nobody = (await api.get("/console/members", params={"identity": "pos.card:NOPE0000"})).text
        assert "没有找到会员" in nobody
        page = (await api.get(f"/console/members/{s.shopper}")).text
        assert 'data-order-channel="taobao"' in page and 'data-order-channel="offline_pos"' in page
        # channels by their plugins' names and order statuses in the page's language (the codes ride along)
        assert "<td>T1001</td><td>淘宝 / 天猫</td>" in page and "<td>线下门店（POS）</td>" in page
        assert '<td data-status="paid">已付款</td>' in page and ">taobao<" not in page
        assert '<td data-status="active">已合并</td>' in page
        assert "<td>淘宝 / 天猫</td>" in by_name  # the list's source
        english_page = (await api.get(f"/console/members/{s.shopper}", params={"lang": "en"})).text
        assert (
            "<td>Taobao / Tmall</td>" in english_page and '<td data-status="paid">paid</td>' in english_page
        )
        await api.get("/console/members", params={"lang": "zh"})
        assert 'data-identity="taobao.open_uid"' in page and 'data-identity="pos.card"' in page
        # identity kinds by their plugins' labels in the page's language, the stored kind in English
        assert '<tr data-identity="taobao.open_uid"><td>淘宝买家 open_uid</td>' in page
        assert '<tr data-identity="pos.card"><td>门店会员卡号</td>' in page
        assert '<tr data-identity="pos.card"><td>pos.card</td>' in english_page
        assert _figure(page, "available") == 988
        assert "再消费 ¥12 可升至 金卡" in page  # ¥888 + the merged buyer's ¥100 of ¥1,000
        assert f'action="/console/members/merges/{s.merge_id}/undo"' in page
        assert "138****8000" in page and "13800138000" not in page
        en = (await api.get(f"/console/members/{s.shopper}?lang=en")).text
        assert "¥12 more to 金卡" in en
        # a tombstone's id shows its survivor
        tombstone = (await api.get(f"/console/members/{s.absorbed}")).text
        assert f"(#{s.absorbed} → #{s.shopper})" in tombstone
        assert (await api.get("/console/members/999999")).status_code == 404
        # operators may not reveal the mobile (admins only, as on the API)
        assert (await api.get(f"/console/members/{s.shopper}?reveal=mobile")).status_code == 403
        assert "李雷" not in page and 'data-field="name">李*<' in page
        # an admin sees them masked too, with a link that reveals both, audited
        await sign_in(api, "admin")
        masked = (await api.get(f"/console/members/{s.shopper}")).text
        assert "李雷" not in masked and 'href="?reveal=mobile,name"' in masked
        revealed = (await api.get(f"/console/members/{s.shopper}?reveal=mobile,name")).text
        assert 'data-field="name">李雷<' in revealed and "+8613800138000" in revealed
        reveals = await _audited(api, "member.reveal")
        assert reveals == [{"fields": ["mobile", "name"]}]


async def test_the_360_page_says_whether_the_tier_is_kept_in_the_pages_language(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    """The tier's keep line was the service's English sentence ("will drop to … unless ¥… more") on the Chinese
    page: it is worded from the service's figures (review day, tier, shortfalls) in the page's language."""
    async with make_client(host=host, role=None) as api:
        s = await _seeded(api, host, tongcrm_settings)
        card = IdentityClaim("pos.card", "CARD0001")
        await seed.ingest(
            api.db.sessions,
            host,
            tongcrm_settings.vault(),
            s.store_account,
            "offline_pos",
            [seed.order("S-0002", 20_000, (card,), store_code=seed.STORE)],
        )  # ¥1,188 within 12 months: 金卡, held until its review, when the seed's orders have left the window
        await sign_in(api, "operator")
        page = (await api.get(f"/console/members/{s.shopper}")).text
        assert 'data-figure="tier">金卡<' in page
        keep = page[page.index('data-figure="keep"') :].split("</p>", 1)[0]
        assert "保级" in keep and ("将于" in keep or "将在" in keep), keep
        assert "will drop" not in page and "keeps " not in page and " more" not in keep
        # its history names tiers as the ladder does and says why in Chinese (it showed "regular", "gold",
        # "upgrade"); the stage too
        history = page[page.index("等级历史") :].split("</table>", 1)[0]
        assert "<td>普卡</td><td>金卡</td><td>升级" in history, history
        assert not any(f"<dd>{code}</dd>" in page for code in _STAGE_ZH)
        en = (await api.get(f"/console/members/{s.shopper}?lang=en")).text
        keep_en = en[en.index('data-figure="keep"') :].split("</p>", 1)[0]
        assert "will drop to" in keep_en or "keeps 金卡" in keep_en, keep_en


async def test_the_member_list_reveals_names_and_mobiles_to_admins_only_audited(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role=None) as api:
        s = await _seeded(api, host, tongcrm_settings)
        csrf = await sign_in(api, "operator")
        listed = (await api.get("/console/members", params={"mobile": "138****8000"})).text
        assert f'data-member="{s.shopper}"' in listed and 'action="/console/members/reveal"' not in listed
        # a forged reveal, even with the operator's own CSRF token: refused, nothing shown or audited
        forged = await api.post("/console/members/reveal", data={"csrf_token": csrf, "mobile": "138****8000"})
        assert forged.status_code == 403 and "李雷" not in forged.text and "13800138000" not in forged.text
        csrf = await sign_in(api, "admin")
        masked = (await api.get("/console/members", params={"mobile": "138****8000"})).text
        assert 'action="/console/members/reveal"' in masked and "李雷" not in masked
        assert 'name="mobile" value="138****8000"' in masked  # the reveal repeats the search
        # without the session's CSRF token an admin's browser cannot be made to reveal (and audit)
        no_token = await api.post("/console/members/reveal", data={"mobile": "138****8000"})
        assert no_token.status_code == 403 and "李雷" not in no_token.text
        revealed = await api.post(
            "/console/members/reveal", data={"csrf_token": csrf, "mobile": "138****8000"}
        )
        assert revealed.status_code == 200, revealed.text
        assert 'data-masking="revealed"' in revealed.text
        assert "李雷" in revealed.text and "+8613800138000" in revealed.text
        by_identity = await api.post(
            "/console/members/reveal", data={"csrf_token": csrf, "identity": "pos.card:CARD0001"}
        )
        assert by_identity.status_code == 200 and "李雷" in by_identity.text
        reveals = await _audited(api, "member.reveal")
        assert reveals == [{"fields": ["mobile", "name"], "member_ids": [s.shopper]}] * 2


async def test_undoing_a_merge_splits_the_ledger_back(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role=None) as api:
        s = await _seeded(api, host, tongcrm_settings)
        csrf = await sign_in(api, "operator")
        undone = await api.post(f"/console/members/merges/{s.merge_id}/undo", data={"csrf_token": csrf})
        assert undone.status_code == 200 and f'data-undone="{s.absorbed}"' in undone.text
        assert _figure(undone.text, "available") == 888
        assert "再消费 ¥112 可升至 金卡" in undone.text  # the merged buyer's spend went back with him
        assert _figure((await api.get(f"/console/members/{s.absorbed}")).text, "available") == 100
        async with api.db.sessions() as session:
            assert await session.scalar(sa.select(Merge.status).where(Merge.id == s.merge_id)) == "undone"
            actor = await session.scalar(
                sa.select(AuditEntry.actor).where(AuditEntry.action == "member.merge_undo")
            )
            keys = (await session.execute(sa.select(ApiKey.id))).scalars().all()
        assert actor in {f"key:{k}" for k in keys}  # audited as the operator's key, as the API does
        again = await api.post(f"/console/members/merges/{s.merge_id}/undo", data={"csrf_token": csrf})
        assert again.status_code == 409 and "already undone" in again.text


async def test_an_analyst_sees_no_write_control_and_cannot_post_one(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role=None) as api:
        s = await _seeded(api, host, tongcrm_settings)
        csrf = await sign_in(api, "analyst")
        page = (await api.get(f"/console/members/{s.shopper}")).text
        assert "/undo" not in page and 'class="danger"' not in page
        refused = await api.post(f"/console/members/merges/{s.merge_id}/undo", data={"csrf_token": csrf})
        assert refused.status_code == 403
        assert (await api.get("/console/keys")).status_code == 403
        assert (await api.get("/console/audit")).status_code == 403
        assert "/console/keys" not in page and "/console/audit" not in page  # not in the menu either
        async with api.db.sessions() as session:
            assert await session.scalar(sa.select(Merge.status).where(Merge.id == s.merge_id)) == "active"


async def test_a_forged_undo_without_the_token_is_refused(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role=None) as api:
        s = await _seeded(api, host, tongcrm_settings)
        await sign_in(api, "admin")
        assert (await api.post(f"/console/members/merges/{s.merge_id}/undo", data={})).status_code == 403
        async with api.db.sessions() as session:
            assert await session.scalar(sa.select(Merge.status).where(Merge.id == s.merge_id)) == "active"


async def test_admins_create_and_revoke_keys_audited_and_read_the_audit_log(make_client: Any) -> None:
    async with make_client(role=None) as api:
        csrf = await sign_in(api, "admin")
        created = await api.post(
            "/console/keys", data={"csrf_token": csrf, "role": "analyst", "label": "报表"}
        )
        assert created.status_code == 200
        key = re.search(r"data-created-key>([^<]+)<", created.text)
        assert key is not None and key.group(1).startswith("tck_")
        assert key.group(1) not in (await api.get("/console/keys")).text  # shown once
        bad = await api.post("/console/keys", data={"csrf_token": csrf, "role": "pos", "label": "一号收银台"})
        assert bad.status_code == 400 and "收银台（pos）密钥必须限定一个门店" in bad.text
        # the keys page again, not the bare error page: the reason above the form, the form as typed
        assert "data-problem" in bad.text and 'value="一号收银台"' in bad.text
        assert '<option value="pos" selected>' in bad.text
        scoped = await api.post(
            "/console/keys", data={"csrf_token": csrf, "role": "analyst", "store_code": "SH001"}
        )
        assert scoped.status_code == 400 and "只有收银台（pos）密钥才能限定门店" in scoped.text
        assert 'value="SH001"' in scoped.text and "only pos keys" not in scoped.text
        unknown = await api.post(
            "/console/keys", data={"csrf_token": csrf, "role": "pos", "store_code": "NO\x00PE"}
        )
        assert unknown.status_code == 422 and "没有门店“NO\u2400PE”" in unknown.text  # a NUL shown as ␀
        assert "系统说明" not in unknown.text
        async with api.db.sessions() as session:
            new_id = await session.scalar(sa.select(ApiKey.id).where(ApiKey.label == "报表"))
        revoked = await api.post(f"/console/keys/{new_id}/revoke", data={"csrf_token": csrf})
        assert revoked.status_code == 200
        log = (await api.get("/console/audit", params={"object_type": "api_key"})).text
        assert 'data-action="api_key.create"' in log and 'data-action="api_key.revoke"' in log
        # a record's Chinese reads as Chinese (Jinja's tojson wrote the label as \u62a5\u8868)
        assert "&#34;label&#34;: &#34;报表&#34;" in log and "\\u62a5" not in log
        only = (await api.get("/console/audit", params={"action": "api_key.revoke"})).text
        assert 'data-action="api_key.create"' not in only
        # the admin's own key is the last live admin key: the keys page again with the reason, nothing revoked
        async with api.db.sessions() as session:
            admin_id = await session.scalar(
                sa.select(ApiKey.id).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None))
            )
        last = await api.post(f"/console/keys/{admin_id}/revoke", data={"csrf_token": csrf})
        assert (
            last.status_code == 409
            and "最后一个有效的管理员密钥" in last.text
            and "data-problem" in last.text
        )
        assert (await api.get("/console/keys")).status_code == 200
        # the revoked key can no longer sign in
        form = await api.get("/console/sign-in")
        answer = await api.post(
            "/console/sign-in", data={"key": key.group(1), "csrf_token": csrf_of(form.text)}
        )
        assert answer.status_code == 401


async def test_the_quarantine_page_shows_what_the_api_shows_per_account(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role="analyst") as api:
        s = await _seeded(api, host, tongcrm_settings)
        await _operations(api, s)
        record = {"tid": "T-9", "buyer": "x"}
        async with api.db.sessions() as session, session.begin():
            session.add(
                QuarantinedRecord(
                    account_id=s.tmall_account,
                    external_id="T-9",
                    reason="unknown status TRADE_X",
                    payload=seal(tongcrm_settings.vault(), json.dumps(record), context=QUARANTINE_PAYLOAD),
                    fingerprint="e" * 64,
                )
            )
        listed = (await api.get("/api/ingest/quarantine", params={"account": seed.TMALL})).json()
        everything = (await api.get("/api/ingest/quarantine")).json()
        await sign_in(api, "analyst")  # the API's quarantine routes are open to every read role
        page = await api.get("/console/quarantine")
        tmall = await api.get("/console/quarantine", params={"account": seed.TMALL})
        # the records themselves only for roles that may reveal personal data, as on the API
        assert (await api.get("/console/quarantine", params={"reveal": "payload"})).status_code == 403
        await sign_in(api, "admin")
        admin_page = await api.get("/console/quarantine", params={"account": seed.TMALL})
        revealed = await api.get("/console/quarantine", params={"account": seed.TMALL, "reveal": "payload"})
        reveals = await _audited(api, "quarantine.reveal")
    assert page.status_code == 200 and tmall.status_code == 200
    assert everything["total"] == 2 and listed["total"] == 1
    assert _figure(page.text, "quarantine-total") == 2
    assert _figure(page.text, f"quarantine.{seed.TMALL}") == 1
    assert _figure(page.text, f"quarantine.{seed.STORE}") == 1
    assert _figure(tmall.text, "quarantine-total") == 1
    (item,) = listed["items"]
    row = re.search(rf'data-quarantined="{item["id"]}">(.*?)</tr>', tmall.text, re.S)
    assert row is not None
    assert "unknown status TRADE_X" in row.group(1) and "T-9" in row.group(1)
    # masked: the record's shape, exactly as the API answers it, and no value of it
    assert item["payload"] is None and json.loads(item["payload_shape"]) == {
        "tid": "<text 3>",
        "buyer": "<text 1>",
    }
    assert item["payload_shape"] in html.unescape(row.group(1)) and 'data-field="payload"' not in row.group(1)
    assert (
        'data-masking="masked"' in tmall.text and "reveal=payload" not in tmall.text
    )  # no link for analysts
    assert "reveal=payload" in admin_page.text and 'data-field="payload"' not in admin_page.text
    # an admin's reveal: the record as received, unsealed as the API unseals it, and audited
    assert revealed.status_code == 200 and 'data-masking="revealed"' in revealed.text
    shown = re.search(r'<pre data-field="payload">(.*?)</pre>', revealed.text, re.S)
    assert shown is not None and json.loads(html.unescape(shown.group(1))) == record
    assert reveals == [{"fields": ["payload"], "record_ids": [item["id"]]}]
    assert f'data-quarantined="{everything["items"][1]["id"]}"' not in tmall.text  # the store's record
