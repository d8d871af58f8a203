"""The programme's documents as forms (console14): the tier ladder in force shown and edited without JSON —
thresholds and coupon values in yuan, rows added and removed by the form's own buttons, mistakes of a field in
Chinese beside it — and the document it builds is the API's (money in fen), applied by the same service; the points
rule set likewise (rates in points per yuan, caps, filters, expiry), stored and backtested from its form. The
ladder and rule-set refusals an operator meets carry codes and read as specific Chinese sentences. HTTP through litestar's test client, on
SQLite and PostgreSQL; the form's arithmetic without a database."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
import tongcrm
from tongcrm.console import ladder_form, rules_form
from tongcrm.console.campaign_pages import draft_from_form
from tongcrm.console.care_flow_settings import delay_of
from tongcrm.console.problems import MESSAGES_ZH, explain
from tongcrm.errors import TongcrmError
from tongcrm.points.rules import parse_document
from tongcrm.tiers.ladder import parse_ladder
from tongcrm.tiers.testing import LADDER

from .conftest import sign_in
from .ops_kit import ops_host, seed


def _fields(form: ladder_form.LadderForm) -> dict[str, str]:
    """What a browser posts for ``form`` (the controls' names as the template writes them)."""
    out = {
        "source": "form",
        "window_months": form.window_months,
        "review_mode": form.review_mode,
        "review_month": form.review_month,
        "review_day": form.review_day,
    }
    if form.one_step:
        out["one_step"] = "on"
    for i, tier in enumerate(form.tiers):
        out |= {f"tiers-{i}-code": tier.code, f"tiers-{i}-name": tier.name, f"tiers-{i}-join": tier.join}
        for j, r in enumerate(tier.rules):
            base = f"tiers-{i}-rule-{j}-"
            out |= {base + "metric": r.metric, base + "min": r.min, base + "months": r.months}
        for k, e in enumerate(tier.entitlements):
            base = f"tiers-{i}-ent-{k}-"
            out |= {base + "kind": e.kind, base + "value": e.value, base + "validity_days": e.validity_days}
            if e.extra:
                out[base + "extra"] = e.extra
    return out


def _form_of(document: Any) -> ladder_form.LadderForm:
    form = ladder_form.from_document(document)
    assert form is not None
    return form


def test_a_ladder_goes_through_the_form_and_back_unchanged() -> None:
    form = _form_of(LADDER)
    silver, gold = form.tiers[1], form.tiers[2]
    assert silver.rules[0].min == "1000.00"  # 100,000 fen, shown in yuan
    assert gold.join == "any" and [(r.metric, r.min, r.months) for r in gold.rules] == [
        ("spend_fen", "5000.00", ""),
        ("order_count", "10", "6"),
    ]
    coupon = gold.entitlements[3]
    assert (coupon.kind, coupon.value) == ("monthly_coupon", "20.00")  # a coupon in fen, shown in yuan
    assert json.loads(coupon.extra) == {"provider": "test_coupons"}  # no control for it, kept
    assert gold.entitlements[2].value == ""  # free shipping: presence, no value to type
    document, mistakes = ladder_form.to_document(ladder_form.from_fields(_fields(form)))
    assert mistakes == {}
    assert parse_ladder(document).as_dict() == parse_ladder(LADDER).as_dict()


def test_yuan_are_exact_and_each_mistake_is_kept_by_its_field() -> None:
    form = _form_of(LADDER)
    form.tiers[1].rules[0].min = "¥1,299.5"
    form.tiers[2].entitlements[3].value = "19.99"
    document, mistakes = ladder_form.to_document(form)
    assert mistakes == {}
    assert document["tiers"][1]["rule"] == {"metric": "spend_fen", "min": 129_950}
    assert document["tiers"][2]["entitlements"][3] == {
        "kind": "monthly_coupon",
        "value": 1999,
        "provider": "test_coupons",
    }

    form.tiers[1].rules[0].min = "12.345"
    form.tiers[2].rules[1].min = "ten"
    form.tiers[2].rules[1].months = "6.5"
    form.tiers[2].entitlements[3].value = ""
    form.window_months = ""
    _, mistakes = ladder_form.to_document(form)
    codes = {name: exc.code for name, exc in mistakes.items()}
    assert codes == {
        "tiers-1-rule-0-min": "money.too_precise",
        "tiers-2-rule-1-min": "form.not_whole",
        "tiers-2-rule-1-months": "form.not_whole",
        "tiers-2-ent-3-value": "form.required",
        "window_months": "form.required",
    }
    said = {name: explain("zh", exc) for name, exc in mistakes.items()}
    assert said["tiers-1-rule-0-min"] == "门槛：“12.345”超过两位小数；金额精确到分（0.01 元）。"
    assert said["tiers-2-rule-1-min"] == "门槛：“ten”不是整数，请填写不带小数的数。"
    assert said["window_months"] == "统计周期（月）：请填写。"
    assert all("系统说明" not in text for text in said.values())


def test_rows_are_added_and_removed_by_the_forms_buttons() -> None:
    form = _form_of(LADDER)
    ladder_form.apply_edit(form, "add-tier")
    assert len(form.tiers) == 4 and len(form.tiers[3].rules) == 1  # a tier above the base needs a rule
    ladder_form.apply_edit(form, "add-rule:3")
    ladder_form.apply_edit(form, "add-ent:3")
    assert (len(form.tiers[3].rules), len(form.tiers[3].entitlements)) == (2, 1)
    ladder_form.apply_edit(form, "remove-rule:2:1")
    assert [r.metric for r in form.tiers[2].rules] == ["spend_fen"]
    ladder_form.apply_edit(form, "remove-ent:2:0")
    assert form.tiers[2].entitlements[0].kind == "birthday_points"
    ladder_form.apply_edit(form, "remove-tier:1")
    assert [t.code for t in form.tiers] == ["member", "gold", ""]
    ladder_form.apply_edit(form, "add-rule:0")  # the base tier has no rule: nothing to add
    ladder_form.apply_edit(form, "remove-tier:9")
    ladder_form.apply_edit(form, "nonsense:1")
    assert [t.code for t in form.tiers] == ["member", "gold", ""] and form.tiers[0].rules == []


def test_a_ladder_the_form_cannot_show_is_left_to_the_json_view() -> None:
    nested = json.loads(json.dumps(LADDER))
    nested["tiers"][2]["rule"] = {
        "any": [{"all": [{"metric": "spend_fen", "min": 1}, {"metric": "order_count", "min": 2}]}]
    }
    assert ladder_form.from_document(nested) is None
    assert ladder_form.from_document({**LADDER, "colour": "gold"}) is None
    assert ladder_form.from_document("not a ladder") is None


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda d: d["tiers"][1].update(code="Silver"), "ladder.tier_code"),
        (lambda d: d["tiers"][2].update(code="silver"), "ladder.tier_twice"),
        (lambda d: d["tiers"][1].update(name=" "), "ladder.tier_name"),
        (lambda d: d["tiers"][1].pop("rule"), "ladder.needs_rule"),
        (lambda d: d["tiers"][0].update(rule={"metric": "spend_fen", "min": 1}), "ladder.base_rule"),
        (lambda d: d["tiers"][1]["rule"].update(min=0), "ladder.min_positive"),
        (lambda d: d["tiers"][1]["rule"].update(months=61), "ladder.months"),
        (lambda d: d.update(window_months=0), "ladder.window_months"),
        (lambda d: d["review"].update(mode="annual", month=2, day=30), "ladder.review_date"),
        (lambda d: d["tiers"][2]["entitlements"].pop(0), "ladder.unfair_lacks"),
        (lambda d: d["tiers"][2]["entitlements"][0].update(value=110), "ladder.unfair_smaller"),
        (lambda d: d["tiers"][1]["entitlements"][0].update(value=1001), "ladder.entitlement_max"),
        (lambda d: d["tiers"][1]["entitlements"].append({"kind": "cashback"}), "ladder.unknown_entitlement"),
        (
            lambda d: d["tiers"][1]["entitlements"].append(dict(d["tiers"][1]["entitlements"][0])),
            "ladder.entitlement_twice",
        ),
    ],
)
def test_the_ladder_refusals_an_operator_meets_read_as_chinese_sentences(change: Any, code: str) -> None:
    document = json.loads(json.dumps(LADDER))
    change(document)
    with pytest.raises(TongcrmError) as refused:
        parse_ladder(document)
    assert refused.value.code == code and code in MESSAGES_ZH
    said = explain("zh", refused.value)
    assert "系统说明" not in said and re.search(r"[\u4e00-\u9fff]", said), said


@pytest.mark.parametrize(
    ("rules", "code"),
    [
        ([{"type": "spend", "code": "Base", "priority": 1}], "rules.code"),
        (
            [{"type": "spend", "code": "a", "priority": 1}, {"type": "spend", "code": "a", "priority": 2}],
            "rules.code_twice",
        ),
        (
            [{"type": "spend", "code": "a", "priority": 1}, {"type": "spend", "code": "b", "priority": 1}],
            "rules.priority_twice",
        ),
        ([{"type": "spend", "code": "a", "priority": 1, "points_per_yuan": "x"}], "rules.rate"),
        (
            [{"type": "spend", "code": "a", "priority": 1, "cap": {"points": -1, "period": "day"}}],
            "rules.cap_negative",
        ),
        (
            [{"type": "event", "code": "b", "priority": 1, "event": "birthday", "points": -5}],
            "rules.event_points",
        ),
        (
            [{"type": "spend", "code": "a", "priority": 1, "expiry": {"kind": "days_after"}}],
            "rules.expiry_days",
        ),
        (
            [{"type": "spend", "code": "a", "priority": 1, "return_window_days": 9999}],
            "rules.return_window",
        ),
        ([{"type": "spend", "code": "a"}], "rules.invalid"),
    ],
)
def test_the_rule_set_refusals_read_as_chinese_sentences(rules: list[Any], code: str) -> None:
    with pytest.raises(TongcrmError) as refused:
        parse_document({"rules": rules})
    assert refused.value.code == code and code in MESSAGES_ZH
    assert "系统说明" not in explain("zh", refused.value)


async def test_an_admin_edits_the_ladder_through_the_form_in_yuan(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=6, vip=4)
        admin = await sign_in(api, "admin")

        page = (await api.get("/console/tiers")).text
        in_force = page[: page.find('id="h-review"')]
        assert "spend_fen" not in in_force and "消费金额（元） ≥ 1000.00" in in_force
        assert "每月专享券（元） 20.00" in in_force
        assert "data-ladder-form" in page and 'value="1000.00"' in page

        form = _form_of(LADDER)
        # one more row through the form's own button: the page comes back with an empty tier, nothing previewed
        added = await api.post(
            "/console/tiers/preview", data={**_fields(form), "edit": "add-tier", "csrf_token": admin}
        )
        assert added.status_code == 200 and 'data-tier-row="3"' in added.text
        assert "data-draft-preview" not in added.text

        ladder_form.apply_edit(form, "add-tier")
        top = form.tiers[3]
        top.code, top.name, top.rules[0].min = "black", "黑卡", "12.345"
        top.entitlements = [ladder_form.EntitlementRow(e.kind, e.value, e.validity_days, e.extra) for e in form.tiers[2].entitlements]  # fmt: skip
        refused = await api.post("/console/tiers/preview", data={**_fields(form), "csrf_token": admin})
        assert refused.status_code == 422 and "data-draft-preview" not in refused.text
        assert "表单有 1 处需要修改" in refused.text
        assert 'data-mistake="tiers-3-rule-0-min"' in refused.text and "超过两位小数" in refused.text
        assert 'value="12.345"' in refused.text  # kept as typed

        top.rules[0].min = "20,000"
        top.entitlements[0].value = "140"  # a smaller multiplier than gold's 150: unfair
        unfair = await api.post("/console/tiers/preview", data={**_fields(form), "csrf_token": admin})
        assert unfair.status_code == 422 and "等级体系不公平" in unfair.text and "系统说明" not in unfair.text

        top.entitlements[0].value = "200"
        preview = await api.post("/console/tiers/preview", data={**_fields(form), "csrf_token": admin})
        assert preview.status_code == 200 and "data-draft-preview" in preview.text
        apply_form = preview.text[preview.text.find('action="/console/tiers/apply"') :]
        hidden = re.search(r'name="ladder" value="([^"]*)"', apply_form)
        assert hidden is not None
        carried = json.loads(html.unescape(hidden.group(1)))
        assert carried["tiers"][3]["rule"] == {"metric": "spend_fen", "min": 2_000_000}  # fen, for the API

        no_reason = await api.post(
            "/console/tiers/apply", data={"ladder": html.unescape(hidden.group(1)), "csrf_token": admin}
        )
        assert no_reason.status_code == 422 and "变更原因：请填写" in no_reason.text
        applied = await api.post(
            "/console/tiers/apply",
            data={"ladder": html.unescape(hidden.group(1)), "reason": "增设黑卡", "csrf_token": admin},
            follow_redirects=False,
        )
        assert applied.status_code == 303
        key = await api.create_key("analyst")
        saved = (await api.get("/api/tiers/ladder", headers={"Authorization": f"Bearer {key}"})).json()
        assert [t["code"] for t in saved["definition"]["tiers"]] == ["member", "silver", "gold", "black"]
        assert saved["definition"]["tiers"][3]["rule"]["min"] == 2_000_000
        page = (await api.get("/console/tiers")).text
        assert 'data-tier-code="black"' in page and "消费金额（元） ≥ 20000.00" in page


async def test_the_ladder_form_in_english_and_the_json_view_still_previews(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=3, vip=1)
        analyst = await sign_in(api, "analyst")
        page = (await api.get("/console/tiers?lang=en")).text
        assert "Spend (yuan) ≥ 1000.00" in page and "Edit the ladder" in page
        bad = await api.post(
            "/console/tiers/preview",
            data={**_fields(_form_of({**LADDER, "window_months": 0})), "csrf_token": analyst},
        )
        assert bad.status_code == 422 and "window_months must be between 1 and 60" in bad.text
        # the JSON view (advanced) previews as before, and a draft that is not JSON reads in Chinese
        previewed = await api.post(
            "/console/tiers/preview?lang=zh", data={"ladder": json.dumps(LADDER), "csrf_token": analyst}
        )
        assert previewed.status_code == 200 and "data-draft-preview" in previewed.text
        broken = await api.post("/console/tiers/preview", data={"ladder": "{", "csrf_token": analyst})
        assert broken.status_code == 400 and "草稿不是合法的 JSON" in broken.text
        assert "data-form-unavailable" in broken.text


#: The rule set of tongcrm.points.rules' docstring: every control of the rules form has a value to carry.
RICH_RULES: dict[str, Any] = {
    "reversal_policy": "clawback",
    "expiry": {"kind": "end_of_year", "months": 12},
    "rules": [
        {"type": "spend", "code": "beauty-x3", "priority": 10, "points_per_yuan": "3", "stacking": "exclusive",
         "categories": ["beauty"]},
        {"type": "spend", "code": "base", "priority": 100, "points_per_yuan": "1.5", "rounding": "half_up",
         "exclude_channels": ["jd"], "release": "return_window", "return_window_days": 7,
         "expiry": {"kind": "days_after", "days": 365}},
        {"type": "event", "code": "birthday", "priority": 10, "event": "birthday", "points": 200,
         "cap": {"points": 200, "period": "year"}},
    ],
}  # fmt: skip


def _rules_fields(form: rules_form.RulesForm) -> dict[str, str]:
    out = {
        "source": "form",
        "reversal_policy": form.reversal_policy,
        "expiry_kind": form.expiry_kind,
        "expiry_days": form.expiry_days,
        "expiry_months": form.expiry_months,
        "since": "2026-01-01",
    }
    for i, r in enumerate(form.rules):
        p = f"rules-{i}-"
        out |= {
            p + "type": r.type,
            p + "code": r.code,
            p + "priority": r.priority,
            p + "stacking": r.stacking,
        }
        out |= {
            p + "points_per_yuan": r.points_per_yuan,
            p + "rounding": r.rounding,
            p + "release": r.release,
        }
        out |= {p + "return_window_days": r.return_window_days, p + "event": r.event, p + "points": r.points}
        out |= {
            p + "cap_points": r.cap_points,
            p + "cap_period": r.cap_period,
            p + "expiry_kind": r.expiry_kind,
        }
        out |= {p + "expiry_days": r.expiry_days, p + "expiry_months": r.expiry_months}
        out |= {p + name: r.lists.get(name, "") for name in rules_form.LISTS}
        if r.tier_multiplier:
            out[p + "tier_multiplier"] = "on"
    return out


def test_a_rule_set_goes_through_the_form_and_back_unchanged() -> None:
    form = rules_form.from_document(RICH_RULES)
    assert form is not None
    base = form.rules[1]
    assert (base.points_per_yuan, base.rounding, base.release, base.return_window_days) == ("1.5", "half_up", "return_window", "7")  # fmt: skip
    assert base.lists["exclude_channels"] == "jd" and (base.expiry_kind, base.expiry_days) == (
        "days_after",
        "365",
    )
    assert (form.rules[2].cap_points, form.rules[2].cap_period) == ("200", "year")
    document, mistakes = rules_form.to_document(rules_form.from_fields(_rules_fields(form)))
    assert mistakes == {}
    assert parse_document(document) == parse_document(RICH_RULES)
    assert rules_form.from_document({**RICH_RULES, "bonus": 1}) is None  # no control for it: JSON only


def test_rules_are_added_and_removed_and_a_mistake_is_kept_by_its_field() -> None:
    form = rules_form.from_document(RICH_RULES)
    assert form is not None
    rules_form.apply_edit(form, "add-event")
    rules_form.apply_edit(form, "add-spend")
    assert [(r.type, r.priority) for r in form.rules[3:]] == [("event", "110"), ("spend", "120")]
    rules_form.apply_edit(form, "remove-rule:0")
    assert [r.code for r in form.rules] == ["base", "birthday", "", ""]
    form.rules[1].points = "两百"
    form.rules[0].cap_points = "1.5"
    _, mistakes = rules_form.to_document(form)
    assert {name: exc.code for name, exc in mistakes.items()} == {
        "rules-1-points": "form.not_whole",
        "rules-0-cap_points": "form.not_whole",
        "rules-2-points": "form.required",
    }
    assert explain("zh", mistakes["rules-1-points"]) == "积分：“两百”不是整数，请填写不带小数的数。"


async def test_an_admin_backtests_and_stores_a_rule_set_from_its_form(make_client: Any) -> None:
    host = ops_host()
    async with make_client(host=host, role=None) as api:
        await seed(api.db, host, members=6, vip=4)
        admin = await sign_in(api, "admin")
        page = (await api.get("/console/points/rules")).text
        assert "data-rules-form" in page and "base：每元 1 积分，向下取整，付款后到账" in page

        active = (await api.get("/console/points/rules")).text
        form = rules_form.from_document({"rules": [{"type": "spend", "code": "base", "priority": 100, "points_per_yuan": "1", "release": "paid"}]})  # fmt: skip
        assert form is not None and 'value="base"' in active
        added = await api.post(
            "/console/points/rules/backtest",
            data={**_rules_fields(form), "edit": "add-event", "csrf_token": admin},
        )
        assert added.status_code == 200 and 'data-rule-type="event"' in added.text
        assert "data-backtest" not in added.text

        form.rules[0].points_per_yuan = "x"
        refused = await api.post(
            "/console/points/rules/backtest", data={**_rules_fields(form), "csrf_token": admin}
        )
        problem = re.search(r"data-problem>([^<]*)<", refused.text)
        assert refused.status_code == 422 and problem is not None, refused.text[-3000:]
        assert "每元积分“x”必须是 0 到 1,000,000 之间的数" in problem.group(1), problem.group(1)
        assert "系统说明" not in refused.text

        form.rules[0].points_per_yuan = "2"
        backtested = await api.post(
            "/console/points/rules/backtest", data={**_rules_fields(form), "csrf_token": admin}
        )
        assert backtested.status_code == 200 and "data-backtest" in backtested.text
        assert 'value="2"' in backtested.text  # the form as typed, under its backtest

        stored = await api.post(
            "/console/points/rules",
            data={**_rules_fields(form), "note": "双倍积分", "csrf_token": admin},
            follow_redirects=False,
        )
        assert stored.status_code == 303 and stored.headers["location"] == "/console/points/rules/2"
        key = await api.create_key("analyst")
        versions = (await api.get("/api/points/rules", headers={"Authorization": f"Bearer {key}"})).json()
        (draft,) = [v for v in versions if v["version"] == 2]
        assert draft["status"] == "draft" and draft["note"] == "双倍积分"
        assert draft["document"]["rules"][0]["points_per_yuan"] == "2"
        review = (await api.get("/console/points/rules/2")).text
        assert (
            "base：每元 2 积分，向下取整，付款后到账" in review
        )  # read as words, the JSON folded under them


def test_every_code_the_core_raises_has_a_chinese_sentence() -> None:
    """A dotted ``code="…"`` written beside a refusal in the core (``ladder.needs_rule``), and a class-level code
    of an error class (``code = "invalid_claim"``: no dot, every raise of the class carries it), names a sentence
    of ``MESSAGES_ZH``: a code without one would fall back to the generic sentence it was given to avoid."""
    root = Path(tongcrm.__file__).parent
    sources = [path.read_text("utf-8") for path in root.rglob("*.py")]
    written = {
        code
        for text in sources
        for code in re.findall(r'\bcode\s*(?::\s*str\s*)?=\s*"([a-z_]+\.[a-z_.]+)"', text)
    }
    assert {"ladder.unfair_lacks", "rules.rate", "campaign.audience_empty", "form.not_whole"} <= written
    assert {"campaign.over_budget_messages", "settings.value_too_long"} <= written
    assert sorted(written - set(MESSAGES_ZH)) == []
    # a class attribute ``code = "…"`` (indented, alone on its line, optionally typed) of an error class
    class_level = {
        code
        for text in sources
        for code in re.findall(
            r'(?m)^[ ]{4}code\s*(?::\s*str(?:\s*\|\s*None)?\s*)?=\s*"([a-z_.]+)"\s*$', text
        )
    }
    assert {"invalid_claim", "unknown_identity_kind", "invalid_claim_value", "policy_error"} <= class_level
    assert sorted(class_level - set(MESSAGES_ZH)) == []


def test_the_identity_claim_codes_read_as_chinese_with_what_each_raise_carries() -> None:
    """Each class-level code's sentence is filled by the params its raisers give (a sentence whose params are
    missing would fall back to the English-bearing generic one)."""
    from tongcrm.identity.service import ClaimError, InvalidClaimValue, PolicyError, UnknownIdentityKind

    kinds = {"mobile": None, "pos.card": None}
    unknown = UnknownIdentityKind(
        "unknown identity kind 'qq'", params={"kind": "qq", "known": "、".join(sorted(kinds))}
    )
    assert explain("zh", unknown) == "没有“qq”这种身份类型；可用的类型：mobile、pos.card。"
    assert explain("zh", ClaimError("a claim set needs at least one identity claim")).startswith(
        "身份信息无效"
    )
    value = InvalidClaimValue("pos.card claim is longer than 200 characters", params={"kind": "pos.card"})
    assert explain("zh", value).startswith("身份“pos.card”的取值不可用")
    policy = PolicyError("the resolution policy named member 7, …", params={"member_id": 7})
    assert "会员 7" in explain("zh", policy) and "系统说明" not in explain("zh", policy)
    assert explain("en", unknown) == "unknown identity kind 'qq'"  # English pages keep the API's words


@pytest.mark.parametrize(
    ("refuse", "said"),
    [
        (lambda: delay_of("1.5", "seconds"), "延迟：“1.5”换算后不是整秒数，请换个单位或数值。"),
        (lambda: delay_of("400", "days"), "延迟：必须在 0 到 365 天（一年）之间。"),
        (lambda: delay_of("soon", "hours"), "延迟：“soon”不是数字。"),
        (
            lambda: draft_from_form({"within_days": "七"}),
            "响应窗口（天）：“七”不是整数，请填写不带小数的数。",
        ),
        (lambda: draft_from_form({"control_percent": "ten"}), "对照组比例：“ten”不是数字。"),
    ],
)
def test_the_console_forms_other_refusals_are_specific_in_chinese(refuse: Any, said: str) -> None:
    with pytest.raises(TongcrmError) as refused:
        refuse()
    assert explain("zh", refused.value) == said
