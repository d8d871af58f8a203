"""The points adjustment page in a real browser (Debian's headless Chromium through Playwright, the framework's
fixtures from ``test_browser``): an operator opens it from the member 360 page, grants points with a reason,
is refused a deduction beyond the balance with the form kept, and the same form sent three times deducts once;
an analyst sees no form and its forged POST is refused. Every input has a label; screenshots go to the
framework's screenshot folder."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from tongcrm.points.models import PointsEntry

from . import test_browser as framework
from .test_browser import Served, _shot, _sign_in, _tab_reaches, _unlabelled_inputs

# the framework's browser fixtures and skip rule (no /usr/bin/chromium: skipped), by name
served = framework.served
browser = framework.browser
pytestmark = framework.pytestmark


async def _adjusted(served: Served) -> list[int]:
    async with served.db.sessions() as session:
        rows = await session.execute(
            sa.select(PointsEntry.amount)
            .where(PointsEntry.member_id == served.seeded.shopper, PointsEntry.kind == "adjust")
            .order_by(PointsEntry.id)
        )
        return list(rows.scalars())


async def test_an_operator_grants_points_from_the_360_page_and_a_form_sent_thrice_deducts_once(
    served: Served, browser: Any
) -> None:
    page = await (await browser.new_context(locale="zh-CN")).new_page()
    await _sign_in(page, served, "operator")
    shopper = served.seeded.shopper
    await page.goto(f"{served.url}/console/members/{shopper}")
    await page.get_by_role("link", name="调整积分").click()
    await page.wait_for_url(f"**/console/members/{shopper}/points/adjust")
    assert await page.locator('[data-figure="available"]').inner_text() == "988"
    assert await _unlabelled_inputs(page) == []
    assert await _tab_reaches(
        page, ["增加", "积分数", "原因（必填，记入积分明细）", "确认调整"], presses=40
    ) == [
        "增加",
        "积分数",
        "原因（必填，记入积分明细）",
        "确认调整",
    ]
    await _shot(page, served, "points-adjust")

    await page.get_by_label("增加", exact=True).check()
    await page.get_by_label("积分数").fill("500")
    await page.get_by_label("原因（必填，记入积分明细）").fill("客诉补偿")
    await page.get_by_role("button", name="确认调整").click()
    await page.wait_for_url(f"**/console/members/{shopper}?adjusted=*")
    assert await page.locator('[data-figure="available"]').inner_text() == "1488"
    row = page.locator("[data-adjusted-entry]")
    assert await row.count() == 1 and "客诉补偿" in await row.inner_text()
    assert "人工调整，增加 500 积分" in await row.inner_text()  # the ledger explained in the page's language
    await _shot(page, served, "member-360-adjusted")

    # more than the balance: refused on the page, the form kept as typed
    await page.get_by_role("link", name="调整积分").click()
    await page.get_by_label("扣减", exact=True).check()
    await page.get_by_label("积分数").fill("9,999")
    await page.get_by_label("原因（必填，记入积分明细）").fill("核销")
    await page.get_by_role("button", name="确认调整").click()
    problem = page.locator("[data-problem]")
    said = await problem.inner_text()
    assert (
        "未调整" in said
        and "该会员现有 1488 可用积分，本次要扣减 9999 积分" in said
        and "available" not in said
    )
    assert await page.get_by_label("积分数").input_value() == "9,999"
    assert await page.get_by_label("原因（必填，记入积分明细）").input_value() == "核销"
    assert await page.get_by_label("扣减", exact=True).is_checked()
    await _shot(page, served, "points-adjust-refused")

    # corrected, then sent three times (the same form twice at once from the page, then its button): the
    # form's key makes it one deduction
    await page.get_by_label("积分数").fill("300")
    sent = await page.evaluate(
        """() => { const f = document.querySelector('form[data-write]');
             const send = () => fetch(f.action, {method: 'POST', body: new URLSearchParams(new FormData(f)),
                                                 redirect: 'manual'}).then(r => r.type);
             return Promise.all([send(), send()]) }"""
    )
    assert sent == ["opaqueredirect", "opaqueredirect"]  # both answered with the 303 to the 360 page
    await page.get_by_role("button", name="确认调整").click()
    await page.wait_for_url(f"**/console/members/{shopper}?adjusted=*")
    assert await page.locator('[data-figure="available"]').inner_text() == "1188"
    assert await _adjusted(served) == [500, -300]


async def test_an_analyst_sees_no_adjustment_form_and_a_forged_post_is_refused(
    served: Served, browser: Any
) -> None:
    context = await browser.new_context(locale="zh-CN")
    page = await context.new_page()
    await _sign_in(page, served, "analyst")
    shopper = served.seeded.shopper
    await page.goto(f"{served.url}/console/members/{shopper}")
    assert await page.get_by_role("link", name="调整积分").count() == 0
    await page.goto(f"{served.url}/console/members/{shopper}/points/adjust")
    assert await page.locator("[data-write]").count() == 0
    assert await page.get_by_role("button", name="确认调整").count() == 0
    assert await page.locator('[data-figure="available"]').inner_text() == "988"
    await _shot(page, served, "points-adjust-analyst")
    token = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    answer = await context.request.post(
        f"{served.url}/console/members/{shopper}/points/adjust",
        form={
            "csrf_token": token or "",
            "idempotency_key": "console-" + "0" * 32,
            "direction": "grant",
            "points": "1000",
            "reason": "x",
        },
        max_redirects=0,
    )
    assert answer.status == 403
    assert await _adjusted(served) == []
