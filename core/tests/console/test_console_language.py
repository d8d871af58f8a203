"""The console speaks one language: refusals, segment mistakes, operators, ledger explanations and chart words in
Chinese on Chinese pages (the API keeps its English), and money in yuan wherever the console shows or takes it
(integer fen underneath). HTTP through litestar's test client, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from tongcrm.config import Settings
from tongcrm.console import testing as console_seed
from tongcrm.console.campaign_pages import draft_from_form
from tongcrm.console.ledger_zh import KINDS_ZH, explain_zh
from tongcrm.console.money import (
    MONEY_FIELDS,
    definition_to_fen,
    definition_to_yuan,
    fen_to_yuan,
    yuan_to_fen,
)
from tongcrm.console.problems import MESSAGES_ZH, explain, explain_text, fallback_zh
from tongcrm.errors import Unprocessable
from tongcrm.plugin.host import PluginHost
from tongcrm.points.models import EntryKind
from tongcrm.points.schemas import EntryOut
from tongcrm.segments.models import Segment, SegmentVersion
from tongcrm.segments.schema import InvalidSegment

from .conftest import sign_in
from .ops_kit import ops_host, seed

SPEND_129 = {"version": 1, "condition": {"field": "orders.spend", "op": "gte", "value": "129"}}


@pytest.fixture
def host() -> PluginHost:
    return PluginHost(autoload=True, disabled=set())


def _json_headers(csrf: str) -> dict[str, str]:
    return {"X-CSRF-Token": csrf, "Content-Type": "application/json"}


def _editor_config(html: str) -> dict[str, Any]:
    found = re.search(
        r'<script type="application/json" id="segment-editor-config">(.*?)</script>', html, re.S
    )
    assert found, "the editor's configuration is on the page"
    return json.loads(found.group(1).replace("<\\/", "</"))


# -------------------------------------------------------------------------------------------------------------
# the catalogue and its fallback (no database)


def test_a_coded_refusal_reads_in_chinese_and_an_uncoded_one_keeps_its_field_and_bound() -> None:
    refused = Unprocessable(
        "member 7 has 12 points available; 50 requested",
        code="points.insufficient",
        params={"available": 12, "requested": 50},
    )
    assert explain("zh", refused) == "可用积分不足：该会员现有 12 可用积分，本次要扣减 50 积分。"
    assert explain("en", refused) == refused.message  # English pages show the API's words
    # no code (a refusal no page met before): the field in Chinese, the bound rewritten, the words kept
    for message, field, bound in (
        ("reason: at most 500 characters", "原因：", "最多 500 个字符"),
        ("note: Expected `str` of length <= 500", "备注：", "最多 500 个字符"),
        ("window_days: a whole number of days from 1 to 3650", "天数范围：", "范围是 1 到 3650"),
        ("limit: must be <= 1000", "limit：", "不能大于 1000"),
    ):
        shown = explain_text("zh", message)
        assert shown.startswith(field) and bound in shown and message.split(": ", 1)[1] in shown, shown
    assert fallback_zh("something else went wrong").startswith("未被接受")
    # no prefix, but the JSON pointer the service gave names the field
    goal = Unprocessable("goal is longer than 500 characters", extra={"pointer": "/goal"})
    assert explain("zh", goal) == "目标：最多 500 个字符。（系统说明：goal is longer than 500 characters）"
    # a code raised without the values its sentence needs still says something, not a KeyError
    assert explain_text("zh", "x: insufficient", "points.insufficient", {}).startswith("x：")
    # every sentence of the catalogue is Chinese
    assert all(re.search(r"[\u4e00-\u9fff]", text) for text in MESSAGES_ZH.values())


def test_yuan_is_read_exactly_and_an_amount_finer_than_a_fen_is_refused() -> None:
    assert yuan_to_fen("299", "value") == 29_900 and yuan_to_fen("299.5", "value") == 29_950
    assert yuan_to_fen("２９９．０１", "value") == 29_901  # full-width, as an IME types it
    assert yuan_to_fen("0.1", "value") == 10 and yuan_to_fen("¥1,299.99", "value") == 129_999
    assert fen_to_yuan(29_950) == "299.50" and fen_to_yuan(5) == "0.05" and fen_to_yuan(-5) == "-0.05"
    with pytest.raises(Unprocessable) as too_fine:
        yuan_to_fen("12.345", "min_paid_yuan")
    assert too_fine.value.code == "money.too_precise"
    assert explain("zh", too_fine.value) == "最低实付（元）：“12.345”超过两位小数；金额精确到分（0.01 元）。"
    # a ladder's JSON view holding no object where one belongs (the browser walk's "999…"): which part, in Chinese
    from tongcrm.tiers.ladder import parse_ladder

    for document, part in ((int("9" * 30), "整个等级体系"), ({"tiers": [5]}, "第 1 个等级")):
        with pytest.raises(Unprocessable) as not_object:
            parse_ladder(document)
        said = explain("zh", not_object.value)
        assert said.startswith(f"等级体系：{part}必须是 JSON 对象") and "系统说明" not in said, said
    # an amount past the documented most (10 亿元) names that bound, not the 64-bit column's
    with pytest.raises(Unprocessable) as too_large:
        yuan_to_fen("20000000000", "threshold")
    assert too_large.value.code == "money.too_large" and "1,000,000,000.00 yuan" in too_large.value.message
    said = explain("zh", too_large.value)
    assert "超过了金额上限 1,000,000,000.00 元（10 亿元）" in said and "922" not in said, said
    with pytest.raises(Unprocessable) as too_many:
        draft_from_form({"name": "x", "budget_messages": "99999999999999999999"})
    assert too_many.value.code == "form.too_large"
    assert "超过了上限 1,000,000,000。" in explain("zh", too_many.value)
    assert draft_from_form({"name": "x", "budget_messages": "1000000000"}).budget_messages == 1_000_000_000
    assert {"orders.spend", "orders.aov"} == MONEY_FIELDS
    # a document in yuan and back: strings, numbers, lists, the low and high of 'between'; other fields untouched
    console_doc = {
        "version": 1,
        "condition": {
            "all": [
                {"field": "orders.spend", "op": "between", "value": ["99", 299.5], "window_days": 90},
                {"not": {"field": "orders.aov", "op": "in", "value": ["50", "60.10"]}},
                {"field": "orders.count", "op": "gte", "value": 2},
                {"field": "orders.aov", "op": "is_set", "value": True},
            ]
        },
    }
    fen = definition_to_fen(console_doc)
    leaves = fen["condition"]["all"]
    assert leaves[0]["value"] == [9_900, 29_950] and leaves[0]["window_days"] == 90
    assert (
        leaves[1]["not"]["value"] == [5_000, 6_010] and leaves[2]["value"] == 2 and leaves[3]["value"] is True
    )
    assert definition_to_yuan(fen)["condition"]["all"][0]["value"] == ["99.00", "299.50"]
    with pytest.raises(InvalidSegment) as bad:
        definition_to_fen(
            {"version": 1, "condition": {"field": "orders.spend", "op": "gte", "value": "12.345"}}
        )
    assert (
        bad.value.problems[0].pointer == "/condition/value"
        and bad.value.problems[0].code == "money.too_precise"
    )


def test_ledger_entries_are_explained_in_chinese_from_their_fields() -> None:
    at = datetime(2026, 11, 11, tzinfo=UTC)

    def entry(kind: str, amount: int, **fields: Any) -> EntryOut:
        return EntryOut(
            id=1,
            kind=kind,
            amount=amount,
            occurred_at=at,
            explanation="(english)",
            idempotency_key="k",
            **fields,
        )

    earn = entry(
        EntryKind.EARN, 129, rule_code="base", rule_version=1,
        detail={"base_fen": 12_900, "points_per_yuan": "1", "multiplier_pct": 100, "rounding": "down"},
    )  # fmt: skip
    assert (
        explain_zh(earn)
        == "按规则“base”第 1 版获得 129 积分：129.00 元 × 每元 1 积分 × 等级倍数 100%，向下取整"
    )
    adjust = entry(EntryKind.ADJUST, -300, actor="apikey:7", reason="误发")
    assert explain_zh(adjust) == "人工调整，扣减 300 积分（API 密钥 7）：误发"
    assert explain_zh(entry(EntryKind.REDEEM, -50, reason="换购")) == "兑换 50 积分：换购"
    # a kind the console does not know yet, or an entry without the detail its sentence needs: named, not lost
    assert explain_zh(entry("bonus", 5)) == "bonus（(english)）"
    assert explain_zh(entry(EntryKind.TRANSFER_IN, 5, detail={})) == "转入（(english)）"
    assert set(KINDS_ZH) == {v for k, v in vars(EntryKind).items() if k.isupper()}


# -------------------------------------------------------------------------------------------------------------
# pages


async def test_segment_money_is_typed_and_shown_in_yuan_and_stored_in_fen(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host)  # five members who each spent ¥129.00
        csrf = await sign_in(api, "operator")
        for value, count in (("129", 5), ("129.00", 5), ("¥129", 5), (129, 5), ("129.01", 0), (129.01, 0)):
            draft = {**SPEND_129, "condition": {**SPEND_129["condition"], "value": value}}
            answer = await api.post(
                "/console/segments/preview", json={"definition": draft}, headers=_json_headers(csrf)
            )
            assert answer.status_code == 200 and answer.json()["count"] == count, (value, answer.text)
        too_fine = {**SPEND_129, "condition": {**SPEND_129["condition"], "value": "12.345"}}
        refused = await api.post(
            "/console/segments/preview", json={"definition": too_fine}, headers=_json_headers(csrf)
        )
        assert refused.status_code == 422
        [problem] = refused.json()["errors"]
        assert problem["pointer"] == "/condition/value" and "“12.345”超过两位小数" in problem["detail"]

        # the editor's catalogue marks money fields, in Chinese, with the operators' names
        config = _editor_config((await api.get("/console/segments/new")).text)
        spend = next(f for f in config["fields"] if f["field"] == "orders.spend")
        assert spend["unit"] == "yuan" and "元" in spend["description"]
        assert config["operators"]["gte"] == "大于等于" and config["operators"]["between"].startswith("介于")
        assert "金额按元填写" in config["labels"]["seg.ed.yuan_hint"]

        # saved from the JSON text in yuan (a decimal number there is exact too): the version is in fen
        text = json.dumps(
            {"version": 1, "condition": {"field": "orders.spend", "op": "gte", "value": 128.99}}
        )
        saved = await api.post(
            "/console/segments/", data={"name": "spenders", "definition": text, "csrf_token": csrf},
            follow_redirects=False,
        )  # fmt: skip
        assert saved.status_code == 303, saved.text
        async with api.db.sessions() as session:
            segment = (
                await session.execute(sa.select(Segment).where(Segment.name == "spenders"))
            ).scalar_one()
            stored = await session.get(SegmentVersion, (segment.id, 1))
            assert stored is not None and stored.definition["condition"]["value"] == 12_899
        detail = (await api.get(f"/console/segments/{segment.id}")).text
        assert 'data-figure="live-count">5<' in detail and "&#34;128.99&#34;" in detail.replace(
            "&quot;", "&#34;"
        )
        edit = (await api.get(f"/console/segments/{segment.id}/edit")).text
        assert '"value": "128.99"' in edit.replace("&#34;", '"').replace("&quot;", '"')
        async with api.db.sessions() as session:
            member = (
                await session.execute(sa.text("SELECT member_id FROM orders ORDER BY id LIMIT 1"))
            ).scalar_one()
        why = (await api.get(f"/console/segments/{segment.id}/why?member_id={member}")).text
        assert 'data-op="gte">大于等于</span> 128.99' in why and "12899" not in why
        # a draft finer than a fen is refused on save too, with the draft kept and nothing stored
        finer = text.replace("128.99", '"128.999"')
        kept = await api.post(
            f"/console/segments/{segment.id}", data={"definition": finer, "csrf_token": csrf}
        )
        assert kept.status_code == 422 and "超过两位小数" in kept.text and "128.999" in kept.text
        # and without JavaScript, the count form says the same
        checked = await api.post("/console/segments/check", data={"definition": finer, "csrf_token": csrf})
        assert checked.status_code == 200 and "超过两位小数" in checked.text
        async with api.db.sessions() as session:
            assert (await session.get(Segment, segment.id)).version == 1  # type: ignore[union-attr]


async def test_segment_mistakes_read_in_the_pages_language(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host)
        csrf = await sign_in(api, "operator")
        typo = {"version": 1, "condition": {"all": [{"field": "orders.spnd", "op": "gte", "value": 1}]}}
        zh = await api.post(
            "/console/segments/preview", json={"definition": typo}, headers=_json_headers(csrf)
        )
        assert zh.json()["errors"] == [
            {
                "pointer": "/condition/all/0/field",
                "detail": "没有“orders.spnd”这个字段，是不是“orders.spend”？",
            }
        ]
        range_ = {"version": 1, "condition": {"field": "orders.count", "op": "gte", "value": "x"}}
        shown = await api.post(
            "/console/segments/preview", json={"definition": range_}, headers=_json_headers(csrf)
        )
        assert shown.json()["errors"][0]["detail"] == "字段“orders.count”只接受整数，现在是 x。"
        tag = {"version": 1, "condition": {"field": "tags", "op": "has", "value": "vipp"}}
        warned = await api.post(
            "/console/segments/preview", json={"definition": tag}, headers=_json_headers(csrf)
        )
        assert warned.json()["warnings"][0]["detail"] == "没有会员的“tags”是“vipp”（可能写错了）。"
        # a name that is taken, refused in Chinese with the draft kept
        definition = json.dumps(
            {"version": 1, "condition": {"field": "orders.count", "op": "gte", "value": 1}}
        )
        form = {"name": "vip", "definition": definition, "csrf_token": csrf}
        taken = await api.post("/console/segments/", data=form)
        assert (
            taken.status_code == 409 and "人群“vip”已存在" in taken.text and "exists; save" not in taken.text
        )
        broken = await api.post("/console/segments/check", data={"definition": "{nope", "csrf_token": csrf})
        assert "条件不是合法的 JSON：第 1 行第 2 列附近有误" in broken.text
        # in English the API's words, as before
        await api.get("/console/segments/new?lang=en")
        en = await api.post(
            "/console/segments/preview", json={"definition": typo}, headers=_json_headers(csrf)
        )
        assert "unknown field 'orders.spnd'" in en.json()["errors"][0]["detail"]


async def test_the_ledger_and_refusals_on_member_pages_are_chinese(
    make_client: Any, host: PluginHost, tongcrm_settings: Settings
) -> None:
    async with make_client(host=host, role=None) as api:
        s = await console_seed.seed_shoppers(api.db.sessions, host, tongcrm_settings.vault())
        await sign_in(api, "operator")
        page = (await api.get(f"/console/members/{s.shopper}")).text
        assert "按规则“" in page and "元 × 每元" in page  # the earn entries, from their detail
        assert " points under rule " not in page  # the service's English explanation is not on the zh page
        english = (await api.get(f"/console/members/{s.shopper}?lang=en")).text
        assert " points under rule " in english
        await api.get(f"/console/members/{s.shopper}?lang=zh")
        # a member that does not exist: the error page in Chinese, the API's 404 unchanged
        missing = await api.get("/console/members/999999/points/adjust")
        assert missing.status_code == 404 and "找不到该页面或对象" in missing.text
