"""The operations pages in a real browser (Debian's headless Chromium through Playwright, the framework's
fixtures from ``test_browser``): an operator builds a segment in the tree editor and watches the live count
follow each edit, then saves it; a campaign report shows its chart and says the sample is too small; an
analyst sees no write control on these pages and a forged POST is refused. Every input has a label. A
screenshot of each page goes to the framework's screenshot folder."""

from __future__ import annotations

from typing import Any

from . import test_browser as framework
from .ops_kit import ops_host, seed_marketing
from .test_browser import Served, _shot, _sign_in, _tab_reaches, _unlabelled_inputs

# the framework's browser fixtures and skip rule (no /usr/bin/chromium: skipped), by name
served = framework.served
browser = framework.browser
pytestmark = framework.pytestmark

PAGES = (
    ("segments", "/console/segments"),
    ("campaigns", "/console/campaigns"),
    ("campaign-report", "/console/campaigns/autumn"),
    ("calendar", "/console/calendar"),
    ("care-flows", "/console/care-flows"),
    ("points-rules", "/console/points/rules"),
    ("tiers", "/console/tiers"),
    ("channels", "/console/channels"),
)


async def _count(page: Any) -> str:
    """The live count once the latest answer arrived (the output carries ``data-count`` when it has one)."""
    output = page.locator("#live-count")
    await page.wait_for_function("() => document.querySelector('#live-count').dataset.count !== ''")
    return str(await output.get_attribute("data-count"))


async def test_an_operator_builds_a_segment_watching_its_count(served: Served, browser: Any) -> None:
    await seed_marketing(served.db, ops_host(), members=12, vip=7, mobile_prefix="+86137")
    page = await (await browser.new_context(locale="zh-CN")).new_page()
    await _sign_in(page, served, "operator")
    await page.get_by_role("link", name="人群").first.click()
    await page.wait_for_url("**/console/segments")
    await _shot(page, served, "segments")
    await page.get_by_role("link", name="新建人群").click()
    await page.wait_for_url("**/console/segments/new")

    # the starter tree: members with an order in the last 90 days (none of the seeded vip members bought)
    assert await page.locator("#tree-editor").is_visible()
    # the keyboard reaches the editor's controls in order
    assert await _tab_reaches(page, ["名称", "条件组", "字段", "添加条件", "计算人数", "保存"], presses=40) == [
        "名称", "条件组", "字段", "添加条件", "计算人数", "保存",
    ]  # fmt: skip
    first = await _count(page)
    field = page.locator("li.leaf select").first
    await field.select_option("tags")
    await page.locator("li.leaf").first.get_by_label("值").fill("vip")
    await page.wait_for_function("() => document.querySelector('#live-count').dataset.count === '7'")
    assert first != "7"
    # a second condition, negated, narrows the count as it is typed
    await page.get_by_role("button", name="添加条件", exact=True).click()
    second = page.locator("li.leaf").nth(1)
    await second.locator("select").first.select_option("profile.city")
    await second.get_by_label("值").fill("上海")
    await page.wait_for_function("() => document.querySelector('#live-count').dataset.count === '0'")
    assert (
        "上海" in await page.locator("#draft-warnings").inner_text()
    )  # no member lives there: a likely typo
    await second.get_by_label("取反（不满足）").check()
    await page.wait_for_function("() => document.querySelector('#live-count').dataset.count === '7'")
    assert "7 位会员" in await page.locator("#live-count").inner_text()
    # a mistake is named with its place in the tree
    await page.locator("li.leaf").first.get_by_label("运算").select_option("has_any")
    await page.locator("li.leaf").first.get_by_label("值").fill("")
    await page.wait_for_function("() => document.querySelector('#draft-problems li') !== null")
    assert "/condition/all/0" in await page.locator("#draft-problems").inner_text()
    await page.locator("li.leaf").first.get_by_label("值").fill("vip, gold")
    await page.wait_for_function("() => document.querySelector('#live-count').dataset.count === '7'")
    assert await _unlabelled_inputs(page) == []
    await _shot(page, served, "segment-editor")

    await page.get_by_label("名称").fill("vip-not-shanghai")
    await page.get_by_role("button", name="保存").click()
    await page.wait_for_url("**/console/segments/*?saved=1")
    assert await page.locator('[data-figure="live-count"]').inner_text() == "7"
    assert await page.locator("svg[role=img]").count() == 1
    await _shot(page, served, "segment")
    await page.get_by_label("会员编号").fill(
        str(await page.locator("[data-member]").first.get_attribute("data-member"))
    )
    await page.get_by_role("button", name="查看原因").click()
    await page.wait_for_url("**/why?member_id=*")
    assert await page.locator('[data-member-in="true"]').count() == 1
    await _shot(page, served, "segment-why")


async def test_a_campaign_report_shows_its_chart(served: Served, browser: Any) -> None:
    await seed_marketing(served.db, ops_host(), members=12, vip=7, mobile_prefix="+86137")
    page = await (await browser.new_context(locale="zh-CN")).new_page()
    await _sign_in(page, served, "operator")
    for name, path in PAGES:
        await page.goto(served.url + path)
        assert await _unlabelled_inputs(page) == [], path
        await _shot(page, served, name)
    await page.goto(served.url + "/console/campaigns/autumn")
    chart = page.locator('[data-chart="campaign-report"] svg')
    assert await chart.is_visible()
    assert (await chart.bounding_box() or {}).get("height", 0) > 100
    assert "样本太小" in await page.locator("[data-too-small]").inner_text()
    channels = await page.goto(served.url + "/console/channels")
    assert channels is not None and channels.ok
    assert await page.locator('[data-store="SH001"]').count() == 1  # the framework's seeded store


async def test_an_analyst_sees_no_write_control_on_the_operations_pages(served: Served, browser: Any) -> None:
    ops = await seed_marketing(served.db, ops_host(), members=12, vip=7, mobile_prefix="+86137")
    context = await browser.new_context(locale="zh-CN")
    page = await context.new_page()
    await _sign_in(page, served, "analyst")
    for _, path in (
        *PAGES,
        ("segment", f"/console/segments/{ops.segment_id}"),
        ("new", "/console/segments/new"),
    ):
        await page.goto(served.url + path)
        assert await page.locator("[data-write]").count() == 0, path
        assert await page.get_by_role("button", name="保存").count() == 0, path
        assert await _unlabelled_inputs(page) == [], path
    await page.goto(f"{served.url}/console/segments/{ops.segment_id}")
    await _shot(page, served, "segment-analyst")
    # the analyst still counts drafts (a preview writes nothing, as in the API)
    await page.goto(served.url + "/console/segments/new")
    assert (await _count(page)).isdigit()
    # but a POST that writes is refused, with or without a token
    token = await page.locator("#segment-form input[name=csrf_token]").get_attribute("value")
    for form in ({}, {"csrf_token": token}):
        answer = await context.request.post(
            f"{served.url}/console/segments/",
            form={**form, "name": "nope", "definition": '{"version": 1, "condition": {"all": []}}'},
            max_redirects=0,
        )
        assert answer.status == 403
    cancel = await context.request.post(
        f"{served.url}/console/campaigns/spring/cancel", form={"csrf_token": token}, max_redirects=0
    )
    assert cancel.status == 403


async def test_segment_money_is_typed_in_yuan_and_operators_read_in_chinese(
    served: Served, browser: Any
) -> None:
    await seed_marketing(served.db, ops_host(), members=12, vip=7, mobile_prefix="+86137")
    page = await (await browser.new_context(locale="zh-CN")).new_page()
    await _sign_in(page, served, "operator")
    await page.goto(served.url + "/console/segments/new")
    leaf = page.locator("li.leaf").first
    operator = leaf.get_by_label("运算")
    # the operators by their Chinese names (the value sent stays the language's: gte)
    assert await operator.locator("option:checked").inner_text() == "大于等于"
    await leaf.locator("select").first.select_option("orders.spend")
    await operator.select_option("gte")
    amount = leaf.get_by_label("值")
    assert (
        await amount.get_attribute("type") == "text" and await amount.get_attribute("inputmode") == "decimal"
    )
    assert "金额按元填写" in await leaf.inner_text()
    # an amount finer than a fen is named, in Chinese, at its place in the tree
    await amount.fill("12.345")
    await page.wait_for_function("() => document.querySelector('#draft-problems li') !== null")
    problems = await page.locator("#draft-problems").inner_text()
    assert "/condition/all/0/value" in problems and "“12.345”超过两位小数" in problems
    # yuan as typed goes into the draft as text, and "at least ¥0.00" counts every member with a spend
    await amount.fill("0.00")
    assert int(await _count(page)) >= 12
    assert '"value": "0.00"' in await page.locator("#definition").input_value()
    assert await page.locator("#draft-problems li").count() == 0
    assert await _unlabelled_inputs(page) == []
    await _shot(page, served, "segment-editor-yuan")
