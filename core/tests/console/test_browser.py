"""The console in a real browser: Debian's headless Chromium (``/usr/bin/chromium``) driven by Playwright
against the app served by uvicorn on 127.0.0.1, over the test database of each backend.

Operators sign in, find a shopper who bought on Tmall and in a store, open the 360 page and undo a merge (the
ledger splits back); an analyst sees no write control and a forged POST is refused; every input has a label and
the keyboard reaches the main controls. Screenshots of each page go to ``$TONGCRM_SCREENSHOT_DIR`` (default
``.ci-artifacts/screenshots``), which CI keeps.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from tongcrm.app import create_app
from tongcrm.auth.service import create_key
from tongcrm.config import Settings
from tongcrm.console import testing as seed
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium chromium-driver)",
)
SHOTS = Path(
    os.environ.get("TONGCRM_SCREENSHOT_DIR") or Path(__file__).parents[3] / ".ci-artifacts" / "screenshots"
)


@dataclass
class Served:
    url: str
    db: TestDatabase
    seeded: seed.Seeded
    backend: str

    async def key(self, role: str) -> str:
        async with self.db.sessions() as session, session.begin():
            return (await create_key(session, role)).key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def served(
    tongcrm_settings: Settings, tongcrm_db: TestDatabase, tongcrm_backend: str
) -> AsyncIterator[Served]:
    """The app on a free loopback port (uvicorn in a thread, with its own event loop) over the test database,
    seeded with the console's shoppers."""
    host = PluginHost(autoload=True, disabled=set())
    seeded = await seed.seed_shoppers(tongcrm_db.sessions, host, tongcrm_settings.vault())
    app = create_app(tongcrm_settings, host, run_jobs=False, configure_logs=False)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        await asyncio.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", tongcrm_db, seeded, tongcrm_backend)
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


async def _shot(page: Any, served: Served, name: str) -> None:
    # playwright creates the folder
    await page.screenshot(path=str(SHOTS / f"{name}-{served.backend}.png"), full_page=True)


async def _sign_in(page: Any, served: Served, role: str) -> None:
    await page.goto(served.url + "/")  # the root sends a browser to the console, which asks for a key
    assert page.url.startswith(served.url + "/console/sign-in")
    await page.get_by_label("API 密钥").fill(await served.key(role))
    await page.get_by_role("button", name="登录").click()
    await page.wait_for_url("**/console/dashboard")


async def _unlabelled_inputs(page: Any) -> list[str]:
    found: list[str] = await page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter(e => e.type !== 'hidden')
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
            .map(e => e.outerHTML)"""
    )
    return found


async def _tab_reaches(page: Any, wanted: list[str], presses: int = 25) -> list[str]:
    """Press Tab from the top of the page; which of ``wanted`` (accessible names) got focus, in order."""
    await page.locator("body").focus()
    reached: list[str] = []
    for _ in range(presses):
        await page.keyboard.press("Tab")
        name = await page.evaluate(
            """() => { const e = document.activeElement;
                 return (e.labels && e.labels.length ? e.labels[0].textContent : e.textContent || e.value || '').trim() }"""
        )
        if name in wanted and name not in reached:
            reached.append(name)
    return reached


async def test_an_operator_finds_a_shopper_opens_the_360_page_and_undoes_a_merge(
    served: Served, browser: Any
) -> None:
    page = await (await browser.new_context(locale="zh-CN")).new_page()
    await _sign_in(page, served, "operator")
    assert await page.locator('[data-overlap="offline_pos+taobao"]').count() == 1
    assert await _unlabelled_inputs(page) == []
    await _shot(page, served, "dashboard")

    await page.get_by_role("link", name="会员").click()
    assert await _tab_reaches(
        page, ["跳到主要内容", "概览", "会员", "手机号", "渠道身份（类型:值）", "姓名", "搜索"]
    ) == [
        "跳到主要内容",
        "概览",
        "会员",
        "手机号",
        "渠道身份（类型:值）",
        "姓名",
        "搜索",
    ]
    # the masked mobile a platform shows, typed with full-width asterisks, finds the shopper
    await page.get_by_label("手机号").fill("138＊＊＊＊8000")
    async with page.expect_navigation(url="**/console/members?mobile=*"):
        await page.keyboard.press("Enter")
    shopper_row = page.locator(f'[data-member="{served.seeded.shopper}"]')
    assert await shopper_row.count() == 1
    assert "138****8000" in await shopper_row.inner_text()
    await _shot(page, served, "members-by-masked-mobile")
    await page.get_by_label("手机号").fill("")
    await page.get_by_label("渠道身份（类型:值）").fill("pos.card:CARD0001")
    async with page.expect_navigation(url="**/console/members?*identity=pos.card*"):
        await page.keyboard.press("Enter")  # the form submits from the keyboard
    assert await _unlabelled_inputs(page) == []
    await _shot(page, served, "members")
    await page.get_by_role("link", name="李*").click()  # an operator sees the name masked

    shopper = served.seeded.shopper
    await page.wait_for_url(f"**/console/members/{shopper}")
    channels = await page.locator("[data-order-channel]").evaluate_all(
        "rows => rows.map(r => r.dataset.orderChannel)"
    )
    assert {"taobao", "offline_pos"} <= set(channels)
    assert await page.locator('[data-figure="available"]').inner_text() == "988"
    assert "138****8000" in await page.locator('[data-field="mobile"]').inner_text()
    # the 360 page's controls are labelled and reachable from the keyboard, the merge's undo button included
    assert await _unlabelled_inputs(page) == []
    undo = f"撤销合并 #{served.seeded.merge_id}"
    assert await _tab_reaches(page, ["跳到主要内容", "会员", undo], presses=80) == [
        "跳到主要内容",
        "会员",
        undo,
    ]
    await _shot(page, served, "member-360")

    await page.get_by_role("button", name=f"撤销合并 #{served.seeded.merge_id}").click()
    await page.wait_for_url(f"**/console/members/{shopper}?undone={served.seeded.absorbed}")
    assert await page.locator('[data-figure="available"]').inner_text() == "888"
    assert "¥112" in await page.locator('[data-figure="projection"]').inner_text()
    await _shot(page, served, "member-360-after-undo")
    await page.locator(f'[data-undone] a[href="/console/members/{served.seeded.absorbed}"]').click()
    assert await page.locator('[data-figure="available"]').inner_text() == "100"

    await page.get_by_role("link", name="English").click()
    assert (
        await page.get_by_role("heading", level=1).inner_text() == f"Member 360 · #{served.seeded.absorbed}"
    )


async def test_an_analyst_sees_no_write_control_and_a_forged_post_is_refused(
    served: Served, browser: Any
) -> None:
    context = await browser.new_context(locale="zh-CN")
    page = await context.new_page()
    await _sign_in(page, served, "analyst")
    assert await page.get_by_role("link", name="API 密钥").count() == 0
    await page.goto(f"{served.url}/console/members/{served.seeded.shopper}")
    assert await page.locator("form[method=post] button.danger").count() == 0
    assert await page.get_by_role("button", name="撤销合并").count() == 0
    await _shot(page, served, "member-360-analyst")
    # the browser's own session cookie, no CSRF token: refused, and nothing changed
    forged = await context.request.post(
        f"{served.url}/console/members/merges/{served.seeded.merge_id}/undo", form={}, max_redirects=0
    )
    assert forged.status == 403
    await page.reload()
    assert await page.locator('[data-figure="available"]').inner_text() == "988"

    admin = await (await browser.new_context(locale="zh-CN")).new_page()
    await _sign_in(admin, served, "admin")
    token = await admin.locator("header input[name=csrf_token]").get_attribute("value")
    # the admin's token in the analyst's session is still not the analyst's: refused too
    stolen = await context.request.post(
        f"{served.url}/console/members/merges/{served.seeded.merge_id}/undo",
        form={"csrf_token": token},
        max_redirects=0,
    )
    assert stolen.status == 403
    await admin.get_by_role("link", name="API 密钥").click()
    assert await _unlabelled_inputs(admin) == []
    await _shot(admin, served, "keys")
    await admin.get_by_role("link", name="审计日志").click()
    await _shot(admin, served, "audit")


@pytest.mark.parametrize("width", [1280, 390])
async def test_the_search_hint_sits_under_the_mobile_input(served: Served, browser: Any, width: int) -> None:
    """The hint under its input at a desktop and a phone width; the fields still line up by their labels."""
    page = await (
        await browser.new_context(locale="zh-CN", viewport={"width": width, "height": 800})
    ).new_page()
    await _sign_in(page, served, "admin")
    await page.goto(f"{served.url}/console/members")
    field = await page.locator("#q-mobile").bounding_box()
    hint = await page.locator("#q-mobile-hint").bounding_box()
    wrapper = await page.locator("#q-mobile").locator("xpath=..").bounding_box()
    assert field is not None and hint is not None and wrapper is not None
    assert hint["y"] >= field["y"] + field["height"] - 1  # under the input, not beside it
    assert (
        abs(hint["x"] - field["x"]) <= 1 and hint["x"] + hint["width"] <= wrapper["x"] + wrapper["width"] + 1
    )
    assert wrapper["x"] + wrapper["width"] <= width  # nothing runs off a phone's screen
    name = await page.locator("#q-name").bounding_box()
    button = await page.get_by_role("button", name="搜索").bounding_box()
    assert name is not None and button is not None
    if width >= 1280:  # one row: the inputs and the button at one height
        assert abs(name["y"] - field["y"]) <= 1 and abs(button["y"] - field["y"]) <= 2
    else:  # a column: each field under the one before
        assert name["y"] > hint["y"] + hint["height"]
    await _shot(page, served, f"members-search-{width}")


async def test_the_key_form_lines_its_labels_and_fields_up(served: Served, browser: Any) -> None:
    """On the API-keys page the role's drop-down is as tall as the text inputs beside it, so "角色" sits on the
    line of the other labels (the form lines its fields up by their bottoms)."""
    page = await (
        await browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 800})
    ).new_page()
    await _sign_in(page, served, "admin")
    await page.goto(f"{served.url}/console/keys")
    boxes = {}
    for ident in ("k-role", "k-store", "k-label"):
        label = await page.locator(f'label[for="{ident}"]').bounding_box()
        field = await page.locator(f"#{ident}").bounding_box()
        assert label is not None and field is not None
        boxes[ident] = (label["y"], field["y"], field["height"])
    role, store, note = boxes["k-role"], boxes["k-store"], boxes["k-label"]
    assert abs(role[0] - store[0]) <= 1 and abs(role[0] - note[0]) <= 1, boxes  # the labels on one line
    assert abs(role[2] - store[2]) <= 1 and abs(role[1] - store[1]) <= 1, boxes  # the fields alike
    await _shot(page, served, "keys-form")


@pytest.mark.parametrize("width", [1280, 1024])
async def test_the_admins_menu_wraps_inside_the_header_beside_the_tools(
    served: Served, browser: Any, width: int
) -> None:
    """An admin's menu (the longest) wraps within its own box: the language switch, the role and 退出登录 stay
    on the header's first line at the right, where an operator's are, not pushed under the menu."""
    page = await (
        await browser.new_context(locale="zh-CN", viewport={"width": width, "height": 800})
    ).new_page()
    await _sign_in(page, served, "admin")
    brand = await page.locator("header.top .brand").bounding_box()
    nav = await page.locator("header.top nav").bounding_box()
    tools = await page.locator("header.top .tools").bounding_box()
    assert brand is not None and nav is not None and tools is not None
    assert tools["x"] >= nav["x"] + nav["width"] - 1, (nav, tools)  # beside the menu, not under it
    assert tools["y"] < brand["y"] + brand["height"], (brand, tools)  # on the first line
    assert await page.locator("header.top").evaluate("h => h.scrollWidth <= h.clientWidth")
    await _shot(page, served, f"header-admin-{width}")


async def test_an_admin_reveals_from_the_console_but_not_through_a_link_elsewhere(
    served: Served, browser: Any
) -> None:
    """A real browser names where a navigation came from: the console's own reveal link and button work, the
    same reveal link opened from another site is refused (it would carry the SameSite=Lax session cookie)."""
    page = await (await browser.new_context(locale="zh-CN")).new_page()
    await _sign_in(page, served, "admin")
    shopper = served.seeded.shopper
    await page.goto(f"{served.url}/console/members/{shopper}")
    await page.get_by_role("link", name="显示完整姓名和号码（记入审计）").click()
    await page.wait_for_url(f"**/console/members/{shopper}?reveal=mobile,name")
    assert await page.locator('[data-field="name"]').inner_text() == "李雷"
    await page.goto(f"{served.url}/console/members?mobile=138****8000")
    await page.get_by_role("button", name="显示本页完整姓名和号码（记入审计）").click()
    await page.wait_for_url("**/console/members/reveal")
    assert "李雷" in await page.locator(f'[data-member="{shopper}"]').inner_text()
    # the same link on another site's page (a data: URL is another origin)
    link = f"{served.url}/console/members/{shopper}?reveal=mobile,name"
    await page.goto(f'data:text/html,<a id="x" href="{link}">x</a>')
    await page.click("#x")
    await page.wait_for_url(link)
    assert "李雷" not in await page.content()


@pytest.mark.parametrize("width", [1280, 1024])
async def test_the_channels_page_keeps_status_words_whole_and_names_secrets_by_label(
    served: Served, browser: Any, width: int
) -> None:
    """At the console's usual widths a status word (正常, 需要重新授权) stays on one line in the crowded accounts
    table, the secrets set are named by the plugin's labels, and a sync error shows its Chinese headline and the
    platform's own words."""
    import sqlalchemy as sa
    from tongcrm.channels import service as channels
    from tongcrm.channels.models import SyncState

    said = "taobao error 27: Invalid session (isv.invalid-session: 卖家授权已过期，请卖家重新授权应用)"
    async with served.db.sessions() as session, session.begin():
        await channels.mark_status(session, served.seeded.tmall_account, "needs_reauth", "invalid session")
        await session.execute(
            sa.update(SyncState)
            .where(SyncState.account_id == served.seeded.tmall_account)
            .values(last_error=said, last_error_code="sync.auth_failed")
        )
    page = await (
        await browser.new_context(locale="zh-CN", viewport={"width": width, "height": 800})
    ).new_page()
    await _sign_in(page, served, "operator")
    await page.goto(f"{served.url}/console/channels")
    lines: dict[str, int] = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('td [data-status]')]
            .map(e => [e.closest('tr').dataset.account || e.closest('tr').dataset.store + ':store',
                       e.getClientRects().length]))"""
    )
    assert lines and set(lines.values()) == {1}, lines  # each word one box: not broken over two lines
    # and the accounts table fits the page: its last column (re-authorise, backfill) needs no sideways scroll
    wide = await page.locator("#h-accounts + .table-wrap").evaluate("w => w.scrollWidth - w.clientWidth")
    assert wide <= 0, wide
    words = await page.locator("[data-account] [data-status]").all_inner_texts()
    assert "正常" in words and "需要重新授权" in words
    secrets = await page.locator("[data-account] [data-secret]").all_inner_texts()
    assert secrets == ["应用密钥（AppSecret）", "卖家授权码（SessionKey）"]
    assert await page.locator("[data-platform-message]").inner_text() == f"（平台原话：{said}）"
    await _shot(page, served, f"channels-{width}")


async def test_an_operator_backfills_a_shop_from_the_channels_page(served: Served, browser: Any) -> None:
    """补拉订单 from the shop's row: a stretch typed backwards is refused in Chinese with the form kept, then the
    corrected one starts and its windows show on the page."""
    page = await (
        await browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 800})
    ).new_page()
    await _sign_in(page, served, "operator")
    await page.goto(f"{served.url}/console/channels")
    assert await page.locator(f'[data-account="{seed.STORE}"] [data-backfill-link]').count() == 0
    await page.locator(f'[data-account="{seed.TMALL}"] [data-backfill-link]').click()
    await page.wait_for_url(f"**/console/channels/{seed.TMALL}/backfill")
    assert await _unlabelled_inputs(page) == []
    await page.get_by_label("从（Asia/Shanghai）").fill("2026-11-03T00:00")
    await page.get_by_label("到（留空：到现在）").fill("2026-11-01T00:00")
    await page.get_by_label("每个窗口（小时）").fill("24")
    await page.get_by_role("button", name="开始补拉").click()
    alert = await page.locator("[data-problem]").inner_text()
    assert alert == "补拉的开始时间必须早于结束时间：现在填的是从 2026-11-03 00:00 到 2026-11-01 00:00。"
    assert await page.get_by_label("从（Asia/Shanghai）").input_value() == "2026-11-03T00:00"  # kept
    await _shot(page, served, "backfill-refused")
    await page.get_by_label("从（Asia/Shanghai）").fill("2026-10-30T00:00")
    await page.get_by_role("button", name="开始补拉").click()
    await page.wait_for_selector("[data-started]")
    assert await page.locator("[data-backfill] [data-windows]").inner_text() == "0 / 2"
    await _shot(page, served, "backfill-started")
