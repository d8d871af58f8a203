"""The console's programme write pages over HTTP (no browser), on each backend: a points rule set stored as a
draft, backtested on its page and activated; a tier ladder previewed and then applied; the care flows' settings;
a channel account re-authorised through its plugin's declared settings; and the segment editor's field
descriptions in Chinese. Roles exactly as the API's (a POST without the role is refused), CSRF on every POST,
and the audit entries the API writes for the same changes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.audit.models import AuditEntry
from tongcrm.channels import service as channels
from tongcrm.channels.models import ChannelAccount, SyncState
from tongcrm.config import Settings
from tongcrm.console.segment_fields_zh import FIELDS_ZH, PARAMS_ZH
from tongcrm.messaging.models import CareFlowConfig
from tongcrm.plugin.settings import SETTING_VALUE_MAX
from tongcrm.plugin.types import ChannelSpec, SettingField
from tongcrm.segments.schema import catalogue
from tongcrm_jd import plugin as jd_plugin
from tongcrm_offline_pos import plugin as pos_plugin
from tongcrm_sms_gateway.plugin import ALIYUN_SMS
from tongcrm_taobao import plugin as taobao_plugin

from .conftest import sign_in
from .ops_kit import SECRET_KEY, ops_host, seed

WRITE_MARK = "data-write"
DOUBLE = '{"rules": [{"type": "spend", "code": "base", "priority": 100, "points_per_yuan": "2", "release": "paid"}]}'
LADDER = (
    '{"window_months": 12, "review": {"mode": "anniversary", "one_step": false}, "tiers": ['
    '{"code": "member", "name": "会员"}, {"code": "silver", "name": "银卡", '
    '"rule": {"metric": "spend_fen", "min": 10000}}]}'
)


async def _audits(api: Any, action: str) -> list[AuditEntry]:
    """What API keys did (the seed's own changes are the system's)."""
    async with api.db.sessions() as session:
        rows = await session.execute(
            sa.select(AuditEntry)
            .where(AuditEntry.action == action, AuditEntry.actor != "system")
            .order_by(AuditEntry.id)
        )
        return list(rows.scalars())


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_draft_rule_set_is_backtested_on_its_page_then_activated_by_an_admin(
    make_client: Any,
) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=6, vip=4)

        operator = await sign_in(api, "operator")
        listing = (await api.get("/console/points/rules")).text
        assert WRITE_MARK not in listing and "查看并启用" not in listing
        refused = await api.post("/console/points/rules", data={"document": DOUBLE, "csrf_token": operator})
        assert refused.status_code == 403  # storing a rule set is admin-only, as POST /api/points/rules

        admin = await sign_in(api, "admin")
        assert WRITE_MARK in (await api.get("/console/points/rules")).text
        broken = await api.post("/console/points/rules", data={"document": "{", "csrf_token": admin})
        assert broken.status_code == 400 and "data-problem" in broken.text
        stored = await api.post(
            "/console/points/rules",
            data={"document": DOUBLE, "note": "双倍积分", "csrf_token": admin},
            follow_redirects=False,
        )
        assert stored.status_code == 303 and stored.headers["location"] == "/console/points/rules/2"

        review = await api.get("/console/points/rules/2")
        assert review.status_code == 200
        assert 'data-rule-version="2" data-status="draft"' in review.text
        found = re.search(r"data-backtest>\s*<p[^>]*>([^<]*)</p>", review.text)
        assert found is not None and "5 笔订单" in found.group(1) and "草稿规则 1290 分" in found.group(1)
        assert "启用第 2 版" in review.text and WRITE_MARK in review.text
        assert 'action="/console/points/rules/2/activate"' in review.text
        bad_since = await api.get("/console/points/rules/2?since=yesterday")
        assert bad_since.status_code == 422 and "data-problem" in bad_since.text
        assert (await api.get("/console/points/rules/9")).status_code == 404

        forged = await api.post("/console/points/rules/2/activate", follow_redirects=False)
        assert forged.status_code == 403  # no CSRF token

        analyst = await sign_in(api, "analyst")
        seen = await api.get("/console/points/rules/2")
        assert seen.status_code == 200 and "data-backtest" in seen.text and WRITE_MARK not in seen.text
        denied = await api.post("/console/points/rules/2/activate", data={"csrf_token": analyst})
        assert denied.status_code == 403
        operator = await sign_in(api, "operator")
        denied = await api.post("/console/points/rules/2/activate", data={"csrf_token": operator})
        assert denied.status_code == 403
        assert await _audits(api, "points.rules.activate") == []

        admin = await sign_in(api, "admin")
        done = await api.post(
            "/console/points/rules/2/activate", data={"csrf_token": admin}, follow_redirects=False
        )
        assert done.status_code == 303 and done.headers["location"] == "/console/points/rules"
        listing = (await api.get("/console/points/rules")).text
        assert 'data-rule-version="2" data-status="active"' in listing
        assert 'data-rule-version="1" data-status="retired"' in listing
        active = await api.get("/console/points/rules/2")
        assert "/activate" not in active.text  # nothing to activate any more

        # the API's activation of version 1 (a roll-back) writes the same audit entry
        key = await api.create_key("admin")
        back = await api.post("/api/points/rules/1/activate", headers=_bearer(key))
        assert back.status_code == 201, back.text
        console_entry, api_entry = await _audits(api, "points.rules.activate")
        for entry, before, after in ((console_entry, 1, 2), (api_entry, 2, 1)):
            assert entry.role == "admin" and entry.actor == f"key:{entry.actor_key_id}"
            assert entry.object_type == "points_rule_set" and entry.object_id == str(after)
            assert entry.before == {"active_version": before}
            assert entry.after is not None and entry.after["active_version"] == after
        assert console_entry.after is not None and console_entry.after["note"] == "双倍积分"
        assert console_entry.actor_key_id != api_entry.actor_key_id


async def test_a_ladder_is_applied_from_its_preview_by_an_admin(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=6, vip=4)

        analyst = await sign_in(api, "analyst")
        preview = await api.post("/console/tiers/preview", data={"ladder": LADDER, "csrf_token": analyst})
        assert preview.status_code == 200 and "data-draft-preview" in preview.text
        assert WRITE_MARK not in preview.text and "/console/tiers/apply" not in preview.text
        denied = await api.post(
            "/console/tiers/apply", data={"ladder": LADDER, "reason": "x", "csrf_token": analyst}
        )
        assert denied.status_code == 403
        operator = await sign_in(api, "operator")
        denied = await api.post(
            "/console/tiers/apply", data={"ladder": LADDER, "reason": "x", "csrf_token": operator}
        )
        assert denied.status_code == 403  # PUT /api/tiers/ladder is admin-only

        admin = await sign_in(api, "admin")
        assert "/console/tiers/apply" not in (await api.get("/console/tiers")).text  # only under a preview
        preview = await api.post("/console/tiers/preview", data={"ladder": LADDER, "csrf_token": admin})
        form = preview.text[preview.text.find('action="/console/tiers/apply"') :]
        assert 'action="/console/tiers/apply"' in preview.text and WRITE_MARK in preview.text
        assert "5 人立即升级" in form
        hidden = re.search(r'name="ladder" value="([^"]*)"', form)
        assert hidden is not None
        carried = hidden.group(1).replace("&#34;", '"').replace("&quot;", '"')
        assert json.loads(carried) == json.loads(LADDER)  # the previewed document, unchanged

        unexplained = await api.post("/console/tiers/apply", data={"ladder": LADDER, "csrf_token": admin})
        assert unexplained.status_code == 422 and "data-problem" in unexplained.text
        assert 'action="/console/tiers/apply"' in unexplained.text  # the preview and its form again
        forged = await api.post("/console/tiers/apply", data={"ladder": LADDER, "reason": "x"})
        assert forged.status_code == 403

        applied = await api.post(
            "/console/tiers/apply",
            data={"ladder": LADDER, "reason": "简化为两级", "csrf_token": admin},
            follow_redirects=False,
        )
        assert applied.status_code == 303 and applied.headers["location"] == "/console/tiers"
        page = (await api.get("/console/tiers")).text
        assert "当前等级体系（第 2 版）" in page and 'data-tier-code="silver"' in page
        assert 'data-tier-code="gold"' not in page[: page.find('id="h-review"')]
        api_ladder = (
            await api.get("/api/tiers/ladder", headers=_bearer(await api.create_key("analyst")))
        ).json()
        assert api_ladder["version"] == 2 and api_ladder["reason"] == "简化为两级"
        (entry,) = [e for e in await _audits(api, "tiers.ladder.apply") if e.object_id == "2"]
        assert entry.role == "admin" and entry.actor == f"key:{entry.actor_key_id}"
        assert entry.after is not None and entry.after["reason"] == "简化为两级"


async def test_care_flow_delays_are_entered_and_shown_with_a_unit(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=2, vip=1)
        operator = await sign_in(api, "operator")
        # delays are entered with a unit and shown back the same way (the API and data-delay keep seconds)
        for number, unit, seconds, shown in (
            ("2", "hours", 7200, "2 hours"),
            ("1.5", "hours", 5400, "90 minutes"),
            ("3", "days", 259200, "3 days"),
        ):
            again = await api.post(
                "/console/care-flows/settings/delivery_care",
                data={
                    "template": "promo",
                    "enabled": "on",
                    "delay": number,
                    "delay_unit": unit,
                    "csrf_token": operator,
                },
            )
            assert again.status_code == 200, again.text
            assert f'data-config="delivery_care:*" data-enabled="true" data-delay="{seconds}"' in again.text
            assert f'data-delay-shown="{shown}"' in again.text
        form = re.search(r'id="cf-delivery_care-delay"[^>]*value="(\w*)"', again.text)
        assert form is not None and form.group(1) == "3"
        assert re.search(r'<option value="days" selected>天</option>', again.text)
        en = (await api.get("/console/care-flows/settings?lang=en")).text
        assert 'data-delay-shown="3 days">3 days<' in en
        # a delay set through the API that is no whole number of minutes is shown in seconds
        await api.post(
            "/console/care-flows/settings/delivery_care",
            data={"template": "promo", "enabled": "on", "delay_seconds": "90", "csrf_token": operator},
        )
        shown = (await api.get("/console/care-flows/settings?lang=zh")).text
        assert 'data-delay-shown="90 seconds">90 秒<' in shown

        key = await api.create_key("operator")
        (config,) = [
            c
            for c in (await api.get("/api/care-flows/configs", headers=_bearer(key))).json()
            if c["flow"] == "delivery_care"
        ]
        assert config["delay_seconds"] == 90  # the API's unit stays the second


async def test_care_flow_settings_are_changed_by_writers_and_audited_as_the_api(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=6, vip=4)

        analyst = await sign_in(api, "analyst")
        page = await api.get("/console/care-flows/settings")
        assert page.status_code == 200 and WRITE_MARK not in page.text
        for flow in (
            "payment_reminder",
            "shipping_notice",
            "delivery_care",
            "review_request",
            "refund_notice",
        ):
            assert f'data-flow="{flow}"' in page.text
        assert "催付" in page.text and "未配置：此流程不发送。" in page.text
        denied = await api.post(
            "/console/care-flows/settings/shipping_notice",
            data={"template": "promo", "enabled": "on", "csrf_token": analyst},
        )
        assert denied.status_code == 403

        operator = await sign_in(api, "operator")
        page = await api.get("/console/care-flows/settings")
        assert page.text.count(WRITE_MARK) == 5  # one form per flow
        saved = await api.post(
            "/console/care-flows/settings/shipping_notice",
            data={
                "template": "promo",
                "enabled": "on",
                "delay": "1",
                "delay_unit": "minutes",
                "csrf_token": operator,
            },
            follow_redirects=False,
        )
        assert saved.status_code == 303
        per_store = await api.post(
            "/console/care-flows/settings/shipping_notice",
            data={
                "template": "promo",
                "channel_account": "SH001",
                "delay_seconds": "",
                "csrf_token": operator,
            },
            follow_redirects=False,
        )
        assert per_store.status_code == 303
        page = (await api.get("/console/care-flows/settings")).text
        assert 'data-config="shipping_notice:*" data-enabled="true" data-delay="60"' in page
        assert 'data-config="shipping_notice:SH001" data-enabled="false" data-delay="0"' in page
        assert 'data-delay-shown="1 minutes">1 分钟<' in page
        for data, status in (
            ({"template": "promo", "delay_seconds": "soon"}, 422),
            ({"template": "promo", "delay_seconds": "-5"}, 422),
            ({"template": "promo", "delay": "soon", "delay_unit": "hours"}, 422),
            ({"template": "promo", "delay": "-1", "delay_unit": "hours"}, 422),
            ({"template": "promo", "delay": "366", "delay_unit": "days"}, 422),
            ({"template": "promo", "delay": "0.001", "delay_unit": "minutes"}, 422),
            ({"template": "promo", "delay": "nan", "delay_unit": "minutes"}, 422),
            ({"template": "promo", "delay": "1", "delay_unit": "weeks"}, 422),
            ({"template": "nope"}, 404),
            ({"template": "promo", "channel_account": "nowhere"}, 404),
        ):
            answer = await api.post(
                "/console/care-flows/settings/shipping_notice", data={**data, "csrf_token": operator}
            )
            assert answer.status_code == status and "data-problem" in answer.text, (data, answer.status_code)
        unknown = await api.post(
            "/console/care-flows/settings/birthday", data={"template": "promo", "csrf_token": operator}
        )
        assert unknown.status_code == 404
        forged = await api.post("/console/care-flows/settings/shipping_notice", data={"template": "promo"})
        assert forged.status_code == 403

        # the API answers what the page shows, and its change is audited the same way
        key = await api.create_key("operator")
        configs = (await api.get("/api/care-flows/configs", headers=_bearer(key))).json()
        assert sorted(
            (c["channel_account_id"] is None, c["enabled"], c["delay_seconds"]) for c in configs
        ) == [
            (False, False, 0),
            (True, True, 60),
        ]
        put = await api.put(
            "/api/care-flows/shipping_notice",
            json={"template": "promo", "enabled": False},
            headers=_bearer(key),
        )
        assert put.status_code == 200, put.text
        entries = await _audits(api, "care_flow.configure")
        assert entries[0].object_id == "shipping_notice"
        assert len(entries) == 3 and all(
            e.role == "operator" and e.object_type == "care_flow" for e in entries
        )
        first, store, by_api = entries
        assert first.before is None and first.after is not None and first.after["delay_seconds"] == 60
        assert store.object_id.startswith("shipping_notice:") and store.after is not None
        assert by_api.before == first.after and by_api.after is not None and by_api.after["enabled"] is False
        async with api.db.sessions() as session:
            assert (
                await session.execute(sa.select(sa.func.count()).select_from(CareFlowConfig))
            ).scalar_one() == 2


async def test_the_reauthorise_form_applies_the_settings_bounds_of_the_api(make_client: Any) -> None:
    """A value past ``SETTING_VALUE_MAX`` or holding a NUL is refused by the console's form as by the HTTP API
    (one definition, :mod:`tongcrm.plugin.settings`), in Chinese, and nothing is stored."""
    host = ops_host()
    host.register(taobao_plugin, "taobao")
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=2, vip=1)
        vault = Settings(database_url=api.db.url, secret_key=SECRET_KEY).vault()
        async with api.db.sessions() as session, session.begin():
            await channels.create_account(
                session, host, vault, "taobao", "tmall-flagship",
                {"app_key": "12345678", "app_secret": "app-s3cret", "session": "old-token"},
            )  # fmt: skip
        path = "/console/channels/tmall-flagship/reauthorise"
        operator = await sign_in(api, "operator")
        long = await api.post(path, data={"session": "k" * (SETTING_VALUE_MAX + 1), "csrf_token": operator})
        assert long.status_code == 400 and "data-problem" in long.text
        assert (
            "设置项“卖家授权码（SessionKey）”最多 4,096 个字符，现在是 4,097 个。" in long.text
            and "系统说明" not in long.text
        )
        nul = await api.post(path, data={"session": "fresh\x00token", "csrf_token": operator})
        # the setting named by its label, as the form names it
        assert nul.status_code == 400 and "设置项“卖家授权码（SessionKey）”含有空字符（NUL）" in nul.text
        fits = await api.post(
            path, data={"session": "k" * SETTING_VALUE_MAX, "csrf_token": operator}, follow_redirects=False
        )
        assert fits.status_code == 303  # the bound itself is allowed, as in the API
        async with api.db.sessions() as session:
            account = await channels.get_account(session, "tmall-flagship")
            secrets = json.loads(vault.decrypt(account.secrets or b"", context=channels.SECRETS_CONTEXT))
        assert secrets["session"] == "k" * SETTING_VALUE_MAX
        assert len(await _audits(api, "channel_account.reauthorise")) == 1  # the refused ones stored nothing
        key = await api.create_key("operator")
        put = await api.put(
            "/api/channel-accounts/tmall-flagship/credentials",
            json={"settings": {"session": "k" * (SETTING_VALUE_MAX + 1)}},
            headers=_bearer(key),
        )
        assert put.status_code == 400  # the API's request type: the same number


async def test_an_account_is_reauthorised_with_what_its_channel_plugin_asks_for(make_client: Any) -> None:
    host = ops_host()
    host.register(taobao_plugin, "taobao")
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=4, vip=2)
        vault = Settings(database_url=api.db.url, secret_key=SECRET_KEY).vault()
        async with api.db.sessions() as session, session.begin():
            await channels.create_account(
                session, host, vault, "taobao", "tmall-flagship",
                {"app_key": "12345678", "app_secret": "app-s3cret", "session": "expired-token"},
            )  # fmt: skip
            await channels.mark_status(session, (await channels.get_account(session, "tmall-flagship")).id,
                                       "needs_reauth", "Invalid session:session-expired")  # fmt: skip
        path = "/console/channels/tmall-flagship/reauthorise"

        analyst = await sign_in(api, "analyst")
        dashboard = (await api.get("/console/dashboard")).text
        assert (
            f'<a href="{path}" data-reauth-link>' in dashboard
        )  # the dashboard leads to the account's state
        listing = (await api.get("/console/channels")).text
        assert f'href="{path}"' in listing and WRITE_MARK not in listing
        state = await api.get(path)
        assert state.status_code == 200 and 'data-needs-reauth="true"' in state.text
        assert (
            "Invalid session:session-expired" in state.text and 'reauthorise" class="card"' not in state.text
        )
        denied = await api.post(path, data={"session": "stolen", "csrf_token": analyst})
        assert denied.status_code == 403

        operator = await sign_in(api, "operator")
        form = (await api.get(path)).text
        assert WRITE_MARK in form and 'name="session" type="password"' in form
        # the plugin's help in the console's language: Chinese on the zh console, its English text on the en one
        assert "本店铺的卖家授权 SessionKey" in form and "OAuth session key" not in form
        # the setting's label too (the plugin's ``labels``); the English console names it as the API does
        assert '<label for="ra-session">卖家授权码（SessionKey）</label>' in form
        english = (await api.get(path, params={"lang": "en"})).text
        assert "The seller&#39;s OAuth session key" in english or "The seller's OAuth session key" in english
        assert '<label for="ra-session">session</label>' in english
        await api.get(path, params={"lang": "zh"})
        assert 'name="app_secret"' not in form and 'name="app_key"' not in form  # the app's key stays
        assert "expired-token" not in form and "app-s3cret" not in form
        empty = await api.post(path, data={"session": "  ", "csrf_token": operator})
        assert empty.status_code == 422 and "data-problem" in empty.text
        forged = await api.post(path, data={"session": "fresh-token"})
        assert forged.status_code == 403
        done = await api.post(
            path, data={"session": "fresh-token", "csrf_token": operator}, follow_redirects=False
        )
        assert done.status_code == 303
        listing = (await api.get(done.headers["location"])).text
        assert (
            'data-account="tmall-flagship" data-needs-reauth="false"' in listing
            and "data-reauthorised" in listing
        )

        async with api.db.sessions() as session:
            account = await channels.get_account(session, "tmall-flagship")
            secrets = json.loads(vault.decrypt(account.secrets or b"", context=channels.SECRETS_CONTEXT))
        assert account.status == "active" and secrets == {
            "app_secret": "app-s3cret",
            "session": "fresh-token",
        }
        (entry,) = await _audits(api, "channel_account.reauthorise")
        assert entry.role == "operator" and entry.object_id == "tmall-flagship"
        assert entry.before == {"status": "needs_reauth", "status_detail": "Invalid session:session-expired"}
        assert entry.after == {"status": "active", "settings_given": ["session"]}
        assert "fresh-token" not in json.dumps([entry.before, entry.after])

        # the API's re-authorisation is audited the same way
        key = await api.create_key("operator")
        put = await api.put(
            "/api/channel-accounts/tmall-flagship/credentials",
            json={"settings": {"session": "newer-token"}},
            headers=_bearer(key),
        )
        assert put.status_code == 200, put.text
        assert [e.after for e in await _audits(api, "channel_account.reauthorise")][1] == entry.after

        # an account whose channel plugin is not installed shows its state and says why it cannot be renewed
        orphan = await api.get("/console/channels/tmall-shop/reauthorise")
        assert orphan.status_code == 200 and "data-no-plugin" in orphan.text and WRITE_MARK not in orphan.text
        refused = await api.post(
            "/console/channels/tmall-shop/reauthorise", data={"app_secret": "x", "csrf_token": operator}
        )
        assert refused.status_code == 422 and "data-problem" in refused.text
        async with api.db.sessions() as session:
            orphan_row = await session.scalar(
                sa.select(ChannelAccount).where(ChannelAccount.name == "tmall-shop")
            )
        assert orphan_row is not None and orphan_row.status == "needs_reauth"
        assert (await api.get("/console/channels/nowhere/reauthorise")).status_code == 404


async def test_a_sync_error_is_said_in_chinese_from_its_code_and_kept_in_english_for_the_api(
    make_client: Any,
) -> None:
    host = ops_host()
    host.register(taobao_plugin, "taobao")
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=4, vip=2)
        vault = Settings(database_url=api.db.url, secret_key=SECRET_KEY).vault()
        english = "authorisation failed: invalid session"
        async with api.db.sessions() as session, session.begin():
            account = await channels.create_account(
                session, host, vault, "taobao", "tmall-flagship",
                {"app_key": "12345678", "app_secret": "app-s3cret", "session": "expired-token"},
            )  # fmt: skip
            await channels.mark_status(session, account.id, "needs_reauth", "invalid session")
            await session.execute(
                sa.update(SyncState)
                .where(SyncState.account_id == account.id)
                .values(
                    last_error=english, last_error_code="sync.auth_failed", last_error_at=datetime.now(UTC)
                )
            )
        await sign_in(api, "analyst")
        said = (
            f'<span class="bad" data-sync-error="{english}">授权失效，同步已停止：请重新授权此账户。</span>'
        )
        # the headline from the code, then the stored sentence: what the platform itself said
        platform = f'<span class="platform-said" data-platform-message>（平台原话：{english}）</span>'
        for path in ("/console/channels?lang=zh", "/console/channels/tmall-flagship/reauthorise"):
            page = (await api.get(path)).text
            assert said + " " + platform in page, path
            # the secrets set, named by the plugin's labels in the page's language, not by their keys
            assert (
                '<span data-secret="app_secret">应用密钥（AppSecret）</span>、'
                '<span data-secret="session">卖家授权码（SessionKey）</span>'
            ) in page, path
        assert (
            '<span class="word bad" data-status="needs_reauth">需要重新授权</span>'
            in (await api.get("/console/channels")).text
        )
        assert (
            f'data-value="{english}">授权失效，同步已停止：请重新授权此账户。</span> {platform}'
            in (await api.get("/console/dashboard")).text
        )
        for path in ("/console/channels?lang=en", "/console/channels/tmall-flagship/reauthorise"):
            page = (await api.get(path)).text
            assert f'data-sync-error="{english}">{english}</span>' in page  # said once: no platform line
            assert "data-platform-message" not in page
            assert '<span data-secret="app_secret">app_secret</span>, <span data-secret="session">' in page
        await api.get("/console/channels?lang=zh")
        # an error recorded without a code (before revision 0042) shows its sentence as stored
        async with api.db.sessions() as session, session.begin():
            await session.execute(
                sa.update(SyncState).where(SyncState.account_id == account.id).values(last_error_code=None)
            )
        assert f'data-sync-error="{english}">{english}</span>' in (await api.get("/console/channels")).text
        key = await api.create_key("analyst")
        answer = await api.get("/api/channel-accounts/tmall-flagship", headers=_bearer(key))
        assert answer.status_code == 200 and answer.json()["last_error"] == english
        # the platform's words are its own: escaped, whatever they hold (a Taobao sub_msg here)
        raw = "taobao error 27: Invalid session (isv.invalid-session: 卖家<b>授权</b>已过期 & 请重新授权)"
        async with api.db.sessions() as session, session.begin():
            await session.execute(
                sa.update(SyncState)
                .where(SyncState.account_id == account.id)
                .values(last_error=raw, last_error_code="sync.auth_failed")
            )
        page = (await api.get("/console/channels")).text
        assert (
            "（平台原话：taobao error 27: Invalid session (isv.invalid-session: 卖家&lt;b&gt;授权&lt;/b&gt;已过期"
            " &amp; 请重新授权)）" in page
        )
        assert "<b>授权</b>" not in page


def test_a_channel_declares_what_a_reauthorisation_renews() -> None:
    fields = (SettingField("app_key", "key"), SettingField("app_secret", "s", secret=True),
              SettingField("token", "t", secret=True))  # fmt: skip
    spec = ChannelSpec("demo", "Demo", fields, factory=lambda ctx: None, reauthorise=("token",))  # type: ignore[arg-type,return-value]
    assert [f.name for f in spec.reauth_settings] == ["token"]
    every_secret = ChannelSpec("demo", "Demo", fields, factory=lambda ctx: None)  # type: ignore[arg-type,return-value]
    assert [f.name for f in every_secret.reauth_settings] == ["app_secret", "token"]
    with pytest.raises(ValueError, match="undeclared settings: session"):
        ChannelSpec("demo", "Demo", fields, factory=lambda ctx: None, reauthorise=("session",))  # type: ignore[arg-type,return-value]
    assert [f.name for f in taobao_plugin.TAOBAO_CHANNEL.reauth_settings] == ["session"]


def test_a_setting_declares_its_help_per_language_and_falls_back_to_english() -> None:
    field = SettingField(
        "token", "The shop's token", help_by_locale={"zh": "店铺令牌", "zh-Hant": "店鋪令牌"}
    )
    assert field.help_for("zh") == "店铺令牌" and field.help_for("zh-CN") == "店铺令牌"
    assert field.help_for("zh-Hant") == "店鋪令牌" and field.help_for("zh-Hant-TW") == "店鋪令牌"
    assert field.help_for("en") == field.help_for("fr") == "The shop's token"
    assert SettingField("token", "The shop's token").help_for("zh") == "The shop's token"
    hash(field)  # still usable in sets: the translations are not part of its identity
    for bad in ({"": "x"}, {"ZH": "x"}, {"zh": " "}):
        with pytest.raises(ValueError, match="language code"):
            SettingField("token", "t", help_by_locale=bad)
    # a label per language, as a channel's display name: zh-CN falls back to zh, other languages to the name
    named = SettingField("token", "t", labels={"zh": "令牌"})
    assert named.label_in("zh") == named.label_in("zh-CN") == "令牌" and named.label_in("en") == "token"
    with pytest.raises(ValueError, match="label of setting"):
        SettingField("token", "t", labels={"zh": ""})
    # the first-party channels and the SMS messenger give every setting's help and label in Chinese
    specs = (taobao_plugin.TAOBAO_CHANNEL, jd_plugin.JD_CHANNEL, pos_plugin.STORE_CHANNEL, ALIYUN_SMS)
    for spec in specs:
        missing = [s.name for s in spec.settings if "zh" not in s.help_by_locale or "zh" not in s.labels]
        assert missing == [], spec.name


async def test_the_segment_editor_describes_fields_in_the_consoles_language(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await sign_in(api, "analyst")
        zh = (await api.get("/console/segments/new")).text
        en = (await api.get("/console/segments/new?lang=en")).text

    def config(html: str) -> dict[str, Any]:
        found = re.search(r'id="segment-editor-config">(.*?)</script>', html, re.S)
        assert found is not None
        return json.loads(found.group(1).replace("<\\/", "</"))  # type: ignore[no-any-return]

    zh_fields = {f["field"]: f for f in config(zh)["fields"]}
    en_fields = {f["field"]: f for f in config(en)["fields"]}
    # money is typed in yuan in the console (tongcrm.console.money); the API's catalogue keeps "in fen"
    assert zh_fields["orders.spend"]["description"] == "消费金额（元，扣除退款）"
    assert en_fields["orders.spend"]["description"] == "spend in yuan, net of refunds"
    window = next(p for p in zh_fields["orders.count"]["parameters"] if p["name"] == "window_days")
    assert window["description"].startswith("只算最近 N 天")
    assert zh_fields.keys() == en_fields.keys()
    assert zh_fields["orders.spend"]["operators"] == en_fields["orders.spend"]["operators"]


def test_every_catalogue_field_and_parameter_has_a_chinese_description() -> None:
    fields = catalogue().fields
    assert {f["field"] for f in fields} <= FIELDS_ZH.keys()
    assert {p["name"] for f in fields for p in f["parameters"]} <= PARAMS_ZH.keys()


async def test_the_programme_write_pages_in_english(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=4, vip=2)
        await sign_in(api, "admin")
        for path, label in (
            ("/console/points/rules?lang=en", "Store draft"),
            ("/console/points/rules/1", "Rule-set version"),
            ("/console/care-flows/settings", "Care-flow settings"),
            ("/console/channels/tmall-shop/reauthorise", "is not installed"),
        ):
            page = await api.get(path)
            assert page.status_code == 200 and label in page.text, path
            assert '<html lang="en">' in page.text
