"""An operator's walk through every console page in a real browser (Debian's headless Chromium through
Playwright, the framework's fixtures from ``test_browser``): each menu entry opens; every form on the pages
that write is sent with an empty field, a huge number, a NUL and Chinese text in every text field (a form folded
in ``<details>`` too, with two of them), and none of them answers a 500 or the bare English error page; then each
kind of action the hostile walk leaves alone (cancel, remove a mark, revoke a key, undo, discard) is sent once as
it stands, and signing out ends the session; an analyst opens every page and finds no write control."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from . import test_browser as framework
from .ops_kit import ops_host, seed_marketing
from .test_browser import Served, _shot, _sign_in

served = framework.served
browser = framework.browser
pytestmark = framework.pytestmark

MENU = ("概览", "会员", "人群", "营销活动", "营销日历", "关怀流程", "积分规则", "等级体系", "渠道与门店", "隔离数据", "数据导入", "审计日志", "API 密钥")  # fmt: skip
#: What each form is sent with in every text field (a number field gets the huge number or nothing).
HOSTILE = {"empty": "", "huge": "9" * 30, "nul": "ab\x00cd", "chinese": "测试中文，全角１２３"}
#: Forms the walk leaves alone: they end the session or make the rest of the walk moot.
SKIP_ACTIONS = ("/console/sign-out", "/revoke", "/cancel", "/undo", "/discard", "/remove")

#: What a form folded in ``<details>`` is sent with (the walk opens every ``<details>`` first).
FOLDED_VARIANTS = ("huge", "chinese")
#: The forms of the actions :data:`SKIP_ACTIONS` names, sign-out aside, and no admin's key.
_ACTION_FORMS = (
    ", ".join(f'main form[method=post][action*="{s}"]' for s in SKIP_ACTIONS[1:] if s != "/revoke")
    + ', main tr:not(:has-text("管理员")) form[method=post][action$="/revoke"]'
)


async def _unfold(page: Any) -> None:
    """Open every ``<details>`` of the page, so the forms folded in them are walked too."""
    await page.evaluate("document.querySelectorAll('main details').forEach(d => { d.open = true; })")


_FILL = """([form, value]) => {
  for (const el of form.querySelectorAll('input, textarea')) {
    const type = (el.getAttribute('type') || 'text').toLowerCase();
    if (['hidden', 'checkbox', 'radio', 'file', 'submit', 'button'].includes(type)) continue;
    if (type === 'number') { el.value = /^[0-9]+$/.test(value) ? value : ''; continue; }
    if (['date', 'time', 'datetime-local'].includes(type)) { el.value = ''; continue; }
    el.value = value;
  }
  HTMLFormElement.prototype.submit.call(form);
}"""


async def _english(page: Any) -> list[str]:
    """Runs of English words in the page's visible text (for the walk's log; codes and data are English too)."""
    text: str = await page.locator("main").inner_text()
    return re.findall(r"[A-Za-z][A-Za-z ,'’:;-]{11,}[A-Za-z]", text)


@pytest.mark.slow(seconds=55)
async def test_an_operator_walks_every_page_and_no_form_answers_500(served: Served, browser: Any) -> None:
    ops = await seed_marketing(served.db, ops_host(), members=8, vip=5, mobile_prefix="+86137")
    page = await (await browser.new_context(locale="zh-CN")).new_page()
    answers: list[tuple[str, int]] = []
    page.on(
        "response",
        lambda r: answers.append((r.url, r.status)) if r.request.resource_type == "document" else None,
    )
    await _sign_in(page, served, "admin")
    log: dict[str, Any] = {}
    urls: list[str] = []
    for entry in MENU:
        await page.locator("header nav").get_by_role("link", name=entry, exact=True).click()
        await page.wait_for_load_state()
        urls.append(page.url)
        log[entry] = await _english(page)
        await _shot(page, served, "walk-" + page.url.removeprefix(served.url + "/console/").replace("/", "-"))
    urls += [served.url + p for p in ("/console/campaigns/spring", "/console/campaigns/autumn", f"/console/segments/{ops.segment_id}", "/console/segments/new", f"/console/members/{served.seeded.shopper}", f"/console/members/{served.seeded.shopper}/points/adjust", "/console/care-flows", "/console/channels/tmall-flagship/reauthorise", "/console/channels/tmall-flagship/backfill")]  # fmt: skip
    for url in urls:
        for variant, value in HOSTILE.items():
            await page.goto(url)
            await _unfold(page)
            forms = await page.locator("main form[method=post]").count()
            for i in range(forms):
                if i:
                    await page.goto(url)
                    await _unfold(page)
                if i >= await page.locator("main form[method=post]").count():
                    break  # the form before removed this one (a calendar mark)
                form = page.locator("main form[method=post]").nth(i)
                action = await form.get_attribute("action") or ""
                if any(s in action for s in SKIP_ACTIONS) or not await form.is_visible():
                    continue
                if variant not in FOLDED_VARIANTS and await form.evaluate("f => !!f.closest('details')"):
                    continue  # a folded form (an advanced JSON view, a schedule) gets two of the four: cheaper
                before = len(answers)
                async with page.expect_navigation():
                    await page.evaluate(_FILL, [await form.element_handle(), value])
                status = answers[before][1] if len(answers) > before else -1
                key = f"{url.removeprefix(served.url)} #{i} {action} {variant}"
                problems = await page.locator("main [role=alert], main .error").all_inner_texts()
                log[key] = [status, *await _english(page), *problems]
                if status >= 500 or status == -1:
                    await _shot(page, served, "walk-500-" + re.sub(r"\W+", "-", key)[:80])
    # the actions the hostile walk leaves alone, each sent once as it stands: cancelling a campaign, removing a
    # calendar mark, revoking a key (not an admin's: the walk's own session stands on one), undoing a merge,
    # discarding an import — whichever the seeded pages show; then signing out
    acted: dict[str, list[Any]] = {}
    await page.goto(served.url + "/console/keys")  # an operator's key to revoke
    await page.select_option("#k-role", "operator")
    await page.fill("#k-label", "revoked by the walk")
    async with page.expect_navigation():
        await page.get_by_role("button", name="创建密钥").click()
    for url in [*urls, served.url + "/console/keys", served.url + "/console/calendar"]:
        await page.goto(url)
        await _unfold(page)
        actions = await page.locator(_ACTION_FORMS).evaluate_all(
            "fs => fs.map(f => f.getAttribute('action'))"
        )
        for action in dict.fromkeys(a for a in actions if a and a not in acted):
            kind = next(s for s in SKIP_ACTIONS if s in action)
            if any(kind in done for done in acted):
                continue  # one of each kind keeps the walk short
            await page.goto(url)
            await _unfold(page)
            form = page.locator(f'main form[method=post][action="{action}"]').first
            if not await form.count():
                continue
            before = len(answers)
            async with page.expect_navigation():
                await form.evaluate("f => HTMLFormElement.prototype.submit.call(f)")
            status = answers[before][1] if len(answers) > before else -1
            problems = await page.locator("main [role=alert], main .error").all_inner_texts()
            acted[action] = [status, *problems]
            log[f"{url.removeprefix(served.url)} {action} as it stands"] = acted[action]
    assert {k for k in ("/cancel", "/revoke") if any(k in a for a in acted)} == {"/cancel", "/revoke"}, acted
    assert {a: v for a, v in acted.items() if v[0] >= 400 or v[0] == -1 or "系统说明" in str(v)} == {}
    async with page.expect_navigation():
        await page.locator("header form[action='/console/sign-out'] button").click()
    assert "/console/sign-in" in page.url
    await page.goto(served.url + "/console/dashboard")
    assert "/console/sign-in" in page.url  # the session is over: the pages ask for a key again

    out = os.environ.get("TONGCRM_WALK_LOG")  # what the walk met, page by page, for a reader to go through
    if out:
        await asyncio.to_thread(Path(out).write_text, json.dumps(log, ensure_ascii=False, indent=1), "utf-8")
    sent = {k: v for k, v in log.items() if isinstance(v, list) and v and isinstance(v[0], int)}
    assert len(sent) > 40  # every writing page's forms were sent
    assert {k: v for k, v in sent.items() if v[0] >= 500 or v[0] == -1} == {}
    # every refusal read in Chinese: none fell back to the sentence that carries the service's English words
    assert {k: v for k, v in sent.items() if any("系统说明" in str(x) for x in v)} == {}

    # an analyst opens every page of the menu and meets no form that writes (sign-out aside)
    analyst = await (await browser.new_context(locale="zh-CN")).new_page()
    await _sign_in(analyst, served, "analyst")
    for entry in MENU[:-2]:  # the audit log and the keys are the admins'
        await analyst.locator("header nav").get_by_role("link", name=entry, exact=True).click()
        await analyst.wait_for_load_state()
        writes = await analyst.locator("main form[method=post]").evaluate_all(
            "fs => fs.map(f => f.getAttribute('action')).filter(a => !a.endsWith('/preview') && !a.endsWith('/backtest'))"
        )
        assert writes == [], entry
    assert await analyst.locator("header nav").get_by_role("link", name="API 密钥").count() == 0
