"""The programme's write pages in a real browser (Debian's headless Chromium through Playwright, the framework's
fixtures from ``test_browser``): an admin stores a draft rule set, reads its backtest and activates it, previews a
ladder and applies it; an operator changes a care flow's settings and re-authorises a Tmall shop whose session
expired with what the Taobao plugin asks for; an analyst sees none of these controls and its forged POSTs are
refused. Every input has a label; a screenshot of each page goes to the framework's screenshot folder."""

from __future__ import annotations

import json
from typing import Any

from tongcrm.channels import service as channels
from tongcrm.console.testing import LADDER, RULES, TMALL
from tongcrm.tiers import service as tiers

from . import test_browser as framework
from .ops_kit import ops_host, seed_marketing
from .test_browser import Served, _shot, _sign_in, _tab_reaches, _unlabelled_inputs

# the framework's browser fixtures and skip rule (no /usr/bin/chromium: skipped), by name
served = framework.served
browser = framework.browser
pytestmark = framework.pytestmark

DOUBLE = {"rules": [{**RULES["rules"][0], "points_per_yuan": "2"}]}
THREE_TIERS = {**LADDER, "tiers": [*LADDER["tiers"], {"code": "silver", "name": "银卡", "rule": {"metric": "spend_fen", "min": 50_000}}]}  # fmt: skip


async def test_an_admin_activates_a_backtested_rule_set_and_applies_a_previewed_ladder(
    served: Served, browser: Any
) -> None:
    page = await (await browser.new_context(locale="zh-CN")).new_page()
    await _sign_in(page, served, "admin")
    await page.get_by_role("link", name="积分规则").first.click()
    await page.wait_for_url("**/console/points/rules")
    advanced = page.locator("[data-rules-json]")
    await advanced.get_by_text("以 JSON 查看或编辑").click()  # the advanced view, folded under the form
    await advanced.get_by_label("草稿规则集（JSON）").fill(json.dumps(DOUBLE))
    await advanced.get_by_label("备注").fill("双倍积分")
    await advanced.get_by_role("button", name="按 JSON 保存草稿").click()
    await page.wait_for_url("**/console/points/rules/2")
    backtest = await page.locator("[data-backtest] p").first.inner_text()
    assert "草稿规则" in backtest and "差额 +" in backtest
    assert await _unlabelled_inputs(page) == []
    await _shot(page, served, "rule-version")
    await page.get_by_role("button", name="启用第 2 版").click()
    await page.wait_for_url("**/console/points/rules")
    assert await page.locator('[data-rule-version="2"][data-status="active"]').count() == 1
    assert await page.locator('[data-rule-version="1"][data-status="retired"]').count() == 1
    await _shot(page, served, "points-rules-activated")

    await page.get_by_role("link", name="等级体系").first.click()
    await page.wait_for_url("**/console/tiers")
    assert await page.get_by_role("button", name="应用此等级体系").count() == 0  # only under a preview
    await page.get_by_text("以 JSON 查看或编辑").click()  # the advanced view, folded under the form
    await page.get_by_label("草稿等级体系（JSON）").fill(json.dumps(THREE_TIERS, ensure_ascii=False))
    await page.get_by_role("button", name="按 JSON 预览").click()
    await page.wait_for_url("**/console/tiers/preview")
    assert await page.locator("[data-draft-preview]").is_visible()
    assert await _unlabelled_inputs(page) == []
    await _shot(page, served, "tier-apply")
    await page.get_by_label("变更原因（必填，记入审计）").fill("增设银卡")
    await page.get_by_role("button", name="应用此等级体系").click()
    await page.wait_for_url("**/console/tiers")
    assert "第 2 版" in await page.locator("#h-ladder").inner_text()
    assert await page.locator('[data-tier-code="silver"]').count() == 1


async def test_an_admin_adds_a_tier_through_the_ladder_form_and_sees_it_saved(
    served: Served, browser: Any
) -> None:
    page = await (await browser.new_context(locale="zh-CN")).new_page()
    await _sign_in(page, served, "admin")
    await page.get_by_role("link", name="等级体系").first.click()
    await page.wait_for_url("**/console/tiers")
    # the ladder in force reads in yuan, and the form starts from it
    assert "消费金额（元） ≥ 1000.00" in await page.locator('[data-tier-code="gold"]').inner_text()
    gold = page.locator('[data-tier-row="1"]')
    assert await gold.get_by_label("门槛").input_value() == "1000.00"
    assert await page.locator("[data-ladder-json]").get_attribute("open") is None  # JSON only on request
    assert await _unlabelled_inputs(page) == []

    await page.get_by_role("button", name="添加等级").click()
    await page.wait_for_url("**/console/tiers/preview")
    top = page.locator('[data-tier-row="2"]')
    await top.get_by_label("等级代码").fill("platinum")
    await top.get_by_label("等级名称").fill("白金卡")
    await top.get_by_label("门槛").fill("2,000.505")
    await top.get_by_role("button", name="为第 3 级添加权益").click()
    await page.wait_for_url("**/console/tiers/preview")
    top = page.locator('[data-tier-row="2"]')
    assert await top.get_by_label("门槛").input_value() == "2,000.505"  # kept across the edit
    await top.get_by_label("权益", exact=True).select_option("birthday_coupon")
    await top.get_by_label("数值").fill("88")
    await page.get_by_role("button", name="预览", exact=True).click()
    await page.wait_for_url("**/console/tiers/preview")
    mistake = page.locator('[data-mistake="tiers-2-rule-0-min"]')
    assert "超过两位小数" in await mistake.inner_text()  # refused, beside its field
    assert await page.locator("[data-draft-preview]").count() == 0
    await _shot(page, served, "tier-form-mistake")

    await page.locator('[data-tier-row="2"]').get_by_label("门槛").fill("2,000.50")
    await page.get_by_role("button", name="预览", exact=True).click()
    await page.wait_for_url("**/console/tiers/preview")
    assert await page.locator("[data-draft-preview]").is_visible()
    assert await _unlabelled_inputs(page) == []
    await _shot(page, served, "tier-form-preview")
    await page.get_by_label("变更原因（必填，记入审计）").fill("增设白金卡")
    await page.get_by_role("button", name="应用此等级体系").click()
    await page.wait_for_url("**/console/tiers")
    assert "第 2 版" in await page.locator("#h-ladder").inner_text()
    saved = await page.locator('[data-tier-code="platinum"]').inner_text()
    assert "白金卡" in saved and "≥ 2000.50" in saved and "生日礼券（元） 88.00" in saved
    async with served.db.sessions() as session:
        ladder = await tiers.active_ladder(session)
    assert ladder is not None
    platinum = ladder.tier("platinum")
    assert platinum is not None and platinum.rule is not None
    assert platinum.rule.as_dict()["min"] == 200_050 and platinum.entitlement("birthday_coupon") is not None


async def _beside(page: Any, label: str, *, exact: bool = True) -> tuple[float, float]:
    """(how far the control's vertical centre is from its label's, the gap from the label's right edge to the
    control's left edge) for the control labelled ``label``: a label on the control's line reads beside it."""
    control = page.get_by_label(label, exact=exact).first
    box = await control.bounding_box()
    ident = await control.get_attribute("id")
    lbox = await page.locator(f'label[for="{ident}"]').bounding_box()
    assert box is not None and lbox is not None
    return abs((box["y"] + box["height"] / 2) - (lbox["y"] + lbox["height"] / 2)), box["x"] - (
        lbox["x"] + lbox["width"]
    )


async def test_the_ladder_form_reads_as_rows_with_each_label_beside_its_field(
    served: Served, browser: Any
) -> None:
    """Labels sit on their field's line (a check box before its label), the rows wrap on a narrow window
    without parting a label from its field, and the check box still travels through the form's POST."""
    page = await (
        await browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    ).new_page()
    await _sign_in(page, served, "admin")
    await page.goto(served.url + "/console/tiers")
    off, gap = await _beside(page, "复核日（每年同一天时）")
    assert off < 4 and 0 <= gap < 24  # the label left of its field, on its line
    box = await page.get_by_label("复核时最多降一级").bounding_box()
    label = await page.locator('label[for="tf-one-step"]').bounding_box()
    assert box is not None and label is not None
    assert abs((box["y"] + box["height"] / 2) - (label["y"] + label["height"] / 2)) < 4
    assert 0 <= label["x"] - (box["x"] + box["width"]) < 16  # the box, then its label, on one line
    day = await page.get_by_label("复核日（每年同一天时）").bounding_box()
    assert day is not None and abs(day["y"] - box["y"]) < 12  # and in the review day's row, not under it
    await _shot(page, served, "tier-form-rows")

    await page.set_viewport_size({"width": 420, "height": 900})
    for name in ("复核日（每年同一天时）", "统计周期（月）", "门槛"):
        off, gap = await _beside(page, name)
        assert off < 4 and 0 <= gap < 24, name  # wrapped as whole pairs
    await _shot(page, served, "tier-form-rows-narrow")

    await page.set_viewport_size({"width": 1280, "height": 900})
    await page.get_by_label("复核时最多降一级").check()
    await page.get_by_role("button", name="预览", exact=True).click()
    await page.wait_for_url("**/console/tiers/preview")
    assert await page.get_by_label("复核时最多降一级").is_checked()  # kept by the server, no script
    assert await page.locator("[data-draft-preview]").is_visible()
    draft = json.loads(
        await page.locator('form[action="/console/tiers/apply"] input[name="ladder"]').input_value()
    )
    assert draft["review"]["one_step"] is True


async def test_an_operator_changes_a_care_flow_and_reauthorises_a_shop(served: Served, browser: Any) -> None:
    await seed_marketing(served.db, ops_host(), members=2, vip=1, mobile_prefix="+86136")  # a template: promo
    async with served.db.sessions() as session, session.begin():
        await channels.mark_status(session, served.seeded.tmall_account, "needs_reauth", "session-expired")
    page = await (await browser.new_context(locale="zh-CN")).new_page()
    await _sign_in(page, served, "operator")

    await page.get_by_role("link", name="关怀流程").first.click()
    await page.wait_for_url("**/console/care-flows/settings")
    flow = page.locator('[data-flow="shipping_notice"]')
    assert await flow.locator("text=未配置").count() == 1
    assert await _unlabelled_inputs(page) == []
    await flow.get_by_label("消息模板").select_option("promo")
    await flow.get_by_label("延迟", exact=True).fill("2")
    await flow.get_by_label("单位", exact=True).select_option("hours")
    await flow.get_by_role("button", name="保存").click()
    await page.wait_for_url("**/console/care-flows/settings#flow-shipping_notice")
    saved = page.locator('[data-config="shipping_notice:*"]')
    assert (
        await saved.get_attribute("data-enabled") == "true"
        and await saved.get_attribute("data-delay") == "7200"
    )
    # shown back as entered: in the table and in the form
    assert "2 小时" in await saved.inner_text()
    assert await flow.get_by_label("延迟", exact=True).input_value() == "2"
    assert await flow.get_by_label("单位", exact=True).input_value() == "hours"
    await _shot(page, served, "care-flow-settings")

    await page.get_by_role("link", name="渠道与门店").first.click()
    await page.wait_for_url("**/console/channels")
    row = page.locator(f'[data-account="{TMALL}"]')
    assert await row.get_attribute("data-needs-reauth") == "true"
    await row.get_by_role("link", name="重新授权").click()
    await page.wait_for_url(f"**/console/channels/{TMALL}/reauthorise")
    # the Taobao plugin renews the session key only (the app's key and secret stay)
    assert await page.locator("input[type=password]").count() == 1
    assert await _unlabelled_inputs(page) == []
    # the setting named by the plugin's Chinese label (SettingField.labels), not its code
    assert await _tab_reaches(page, ["卖家授权码（SessionKey）", "保存并恢复同步"], presses=40) == [
        "卖家授权码（SessionKey）",
        "保存并恢复同步",
    ]
    await _shot(page, served, "channel-reauthorise")
    await page.get_by_label("卖家授权码（SessionKey）", exact=True).fill("fresh-session-key")
    await page.get_by_role("button", name="保存并恢复同步").click()
    await page.wait_for_url("**/console/channels?reauthorised=*")
    assert await page.locator(f'[data-account="{TMALL}"]').get_attribute("data-needs-reauth") == "false"
    assert "fresh-session-key" not in await page.content()


async def test_an_analyst_sees_no_programme_write_control_and_cannot_post_one(
    served: Served, browser: Any
) -> None:
    context = await browser.new_context(locale="zh-CN")
    page = await context.new_page()
    await _sign_in(page, served, "analyst")
    for path in (
        "/console/points/rules",
        "/console/points/rules/1",
        "/console/tiers",
        "/console/care-flows/settings",
        "/console/channels",
        f"/console/channels/{TMALL}/reauthorise",
    ):
        await page.goto(served.url + path)
        assert await page.locator("[data-write]").count() == 0, path
        assert await _unlabelled_inputs(page) == [], path
    await _shot(page, served, "channel-reauthorise-analyst")
    token = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    for path, form in (
        ("/console/points/rules/1/activate", {}),
        ("/console/tiers/apply", {"ladder": json.dumps(LADDER), "reason": "x"}),
        ("/console/care-flows/settings/shipping_notice", {"template": "x"}),
        (f"/console/channels/{TMALL}/reauthorise", {"session": "stolen"}),
    ):
        answer = await context.request.post(
            served.url + path, form={**form, "csrf_token": token or ""}, max_redirects=0
        )
        assert answer.status == 403, path
