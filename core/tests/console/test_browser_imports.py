"""The import pages in a real browser (Debian's headless Chromium through Playwright, the framework's fixtures from
``test_browser``): an operator picks a file in the upload form, follows the import to its end, reads its bad row
by line and reason, and uploads the same file again (nothing twice); a refused upload keeps the form; an analyst
sees the imports but no upload form, and its forged POST is refused. Every input has a label; a screenshot of
each page goes to the framework's screenshot folder."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from . import test_browser as framework
from .test_browser import Served, _shot, _sign_in, _unlabelled_inputs

served = framework.served
browser = framework.browser
pytestmark = framework.pytestmark

MEMBERS = "member_id,mobile,name\n" + "".join(f"B{i},1371234{5000 + i},导入{i}号\n" for i in range(1, 7))
BAD = MEMBERS + "B9,12345,坏号码\n"


async def _until_finished(page: Any) -> None:
    deadline = time.monotonic() + 30
    while await page.locator('section[data-status="finished"]').count() == 0:
        assert time.monotonic() < deadline, await page.content()
        await asyncio.sleep(0.3)
        await page.reload()


async def test_an_operator_uploads_a_file_and_reads_its_bad_rows(served: Served, browser: Any) -> None:
    page = await (await browser.new_context(locale="zh-CN")).new_page()
    await _sign_in(page, served, "operator")
    await page.get_by_role("link", name="数据导入").first.click()
    await page.wait_for_url("**/console/imports")
    assert await _unlabelled_inputs(page) == []
    await _shot(page, served, "imports-empty")

    # a refusal keeps what was typed and says why
    await page.get_by_label("文件", exact=True).set_input_files(
        {"name": "wrong.csv", "mimeType": "text/csv", "buffer": b"id,phone\n1,2\n"}
    )
    await page.get_by_label("来源", exact=True).fill("youzan")
    await page.get_by_role("button", name="上传并导入").click()
    alert = page.get_by_role("alert")
    assert "未导入" in await alert.inner_text() and "member_id" in await alert.inner_text()
    assert await page.get_by_label("来源", exact=True).input_value() == "youzan"

    await page.get_by_label("文件", exact=True).set_input_files(
        {"name": "members.csv", "mimeType": "text/csv", "buffer": BAD.encode()}
    )
    await page.get_by_label("类型", exact=True).select_option("members")
    await page.get_by_role("button", name="上传并导入").click()
    await page.wait_for_url("**/console/imports/*")
    await _until_finished(page)
    assert await page.locator('[data-figure="imported"]').inner_text() == "6"
    assert await page.locator('[data-figure="failed"]').inner_text() == "1"
    bad = page.locator('[data-error-line="8"]')
    assert "phone number" in await bad.locator('[data-field="reason"]').inner_text()
    assert await _unlabelled_inputs(page) == []
    await _shot(page, served, "import-detail")

    # the same file again: the same import, nothing twice
    await page.get_by_label("文件", exact=True).set_input_files(
        {"name": "members-copy.csv", "mimeType": "text/csv", "buffer": BAD.encode()}
    )
    await page.get_by_label("来源", exact=True).fill("youzan")
    await page.get_by_role("button", name="上传并重新导入").click()
    await page.wait_for_url("**/console/imports/*?again=finished")
    assert "没有重复导入" in await page.get_by_role("status").inner_text()
    assert await page.locator('[data-figure="imported"]').inner_text() == "6"

    await page.get_by_role("link", name="数据导入").first.click()
    row = page.locator("tr[data-import]")
    assert await row.count() == 1 and "已完成" in await row.inner_text()
    await _shot(page, served, "imports")
    await page.goto(served.url + "/console/imports?lang=en")
    assert "Average rate (rows/s)" in await page.content()


async def test_an_analyst_sees_imports_but_cannot_upload(served: Served, browser: Any) -> None:
    context = await browser.new_context(locale="zh-CN")
    page = await context.new_page()
    await _sign_in(page, served, "analyst")
    await page.get_by_role("link", name="数据导入").first.click()
    await page.wait_for_url("**/console/imports")
    assert await page.locator("[data-upload]").count() == 0
    assert await page.get_by_role("button", name="上传并导入").count() == 0
    token = await page.locator("header input[name=csrf_token]").get_attribute("value")
    forged = await context.request.post(
        f"{served.url}/console/imports",
        multipart={
            "csrf_token": token,
            "kind": "members",
            "file": {"name": "m.csv", "mimeType": "text/csv", "buffer": MEMBERS.encode()},
        },
        max_redirects=0,
    )
    assert forged.status == 403
    await page.reload()
    assert await page.locator("tr[data-import]").count() == 0
