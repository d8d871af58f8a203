"""Refusals in the console's language: the API's problems (English, machine-readable) as a sentence an operator
of a Chinese page reads.

The domain raises :class:`tongcrm.errors.TongcrmError` with an English ``message`` that the API's problem
response carries as it is. A refusal the console shows often may also carry a ``code`` and ``params``
(``points.insufficient`` with ``available`` and ``requested``); this module keys its sentences by that code,
never by the English sentence, so rewording an English message changes no Chinese one. A refusal without a code
(a new one, or one no page met yet) still gets Chinese: the field it names (the ``field: …`` prefix every form
check and the API's validation use, or a segment's JSON pointer) in Chinese and the bound it states (``at most
500 characters``, ``length <= 500``, ``from 1 to 3650``) rewritten by :data:`BOUNDS`, with the English detail
after it so nothing the service said is lost. In English the message is shown as the API wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tongcrm.console.labels_ops import ZH_OPS
from tongcrm.errors import TongcrmError

#: Sentences by the refusal's ``code``; ``{name}`` placeholders come from the error's ``params``.
MESSAGES_ZH: Mapping[str, str] = {
    # points (tongcrm.points.service and the adjustment form)
    "points.insufficient": "可用积分不足：该会员现有 {available} 可用积分，本次要扣减 {requested} 积分。",
    "points.entry_too_large": "一次最多调整 {max:,} 积分。",
    "points.not_whole": "积分：“{value}”不是整数，请填写不带小数的积分数。",
    "points.not_positive": "积分：请填写大于 0 的数（增加还是扣减由上面的选项决定）。",
    "points.zero": "调整的积分不能为 0。",
    "points.reason_required": "原因：请填写调整原因（会记在积分明细上）。",
    "points.reason_too_long": "原因：最多 {max} 个字符，现在是 {length} 个。",
    "points.direction": "方向：请选择增加或扣减。",
    "points.expiry_on_deduct": "有效期至：扣减用的是已有积分，只有增加积分才能设有效期。",
    "points.expiry_not_date": "有效期至：“{value}”不是日期，请按 2027-01-31 的格式填写。",
    "points.expiry_past": "有效期至：必须是将来的日期，已过期的积分不可用。",
    "points.expiry_naive": "有效期至：需要带时区的时间。",
    "points.key_reused": "这张表单已经用其他内容提交过一次调整；表单已换新，确认后可再次提交。",
    "points.no_key": "表单缺少防重复提交的编号，请检查后再提交一次。",
    # imports (tongcrm.bulk.kept: resuming or discarding a stopped import)
    "import.finished": "导入 #{id} 已完成，没有可继续导入的内容。",
    "import.running": "导入 #{id} 正在进行中，请等它停止后再操作。",
    "import.no_file": "导入 #{id} 没有保留上传的文件（已放弃，或不是通过网页或 API 上传的）：请重新上传同一个文件，将从断点继续。",
    "import.file_missing": "导入 #{id} 保留的文件已不在数据目录中：请重新上传同一个文件，将从断点继续。",
    "member.merged": "会员 {member_id} 已合并到会员 {merged_into_id}。",
    # mobiles (tongcrm.members.phone): ``{shown}`` is what the message shows of the input, never the whole number
    "mobile.not_phone": "手机号：{shown}不是电话号码，请填写手机号，如 13800138000。",
    "mobile.invalid": "手机号：{shown}不是有效的号码。中国大陆手机号是以 1 开头的 11 位数字（如 13800138000），请检查是否多打、少打或打错了数字；其他国家和地区的号码请以 + 和国家代码开头。",
    "mobile.not_mobile": "手机号：{shown}不是手机号（像是固定电话），请填写手机号。",
    "mobile.masked_form": "手机号：打码的手机号是前 3 位、星号和后 4 位，如 138****8000。",
    "mobile.masked_stars": "手机号：中国大陆手机号打码时正好隐去中间 4 位（138****8000），这里有 {stars} 个星号。",
    # segments (tongcrm.segments.service and schema)
    "segment.name_invalid": "人群名称“{name}”不可用：1 到 64 个小写字母、数字、“-”或“_”，以字母或数字开头，且不能全是数字。",
    "segment.exists": "人群“{name}”已存在，请在它的页面保存新版本。",
    "segment.too_long": "{field}：最多 {max} 个字符。",
    "segment.breaks": "人群“{other}”引用了“{name}”，这样保存会使它失效：{reason}",
    "segment.not_json": "条件不是合法的 JSON：第 {line} 行第 {column} 列附近有误。",
    "segment.unknown_field": "没有“{name}”这个字段。",
    "segment.unknown_field_suggest": "没有“{name}”这个字段，是不是“{suggestion}”？",
    "segment.bad_op": "字段“{name}”的运算符只能是：{ops}；现在是“{op}”。",
    "segment.needs_value": "字段“{name}”需要填写取值。",
    "segment.needs_param": "字段“{name}”需要填写参数“{param}”。",
    "segment.whole_numbers": "字段“{name}”只接受整数，现在是 {value}。",
    "segment.range": "字段“{name}”的取值范围是 {low} 到 {high}。",
    "segment.days": "“{name}”是 1 到 {max} 之间的整数天数。",
    "segment.op_days": "运算符“{op}”需要 0 到 {max} 之间的整数天数。",
    "segment.list": "运算符“{op}”需要 1 到 {max} 个值。",
    "segment.between": "“介于”需要两个值 [下限, 上限]（都包含在内）。",
    "segment.between_order": "“介于”的下限不能大于上限：{low} > {high}。",
    "segment.string": "字段“{name}”的取值是 1 到 100 个字符的文字。",
    "segment.choice": "“{value}”不在可选值中：{choices}。",
    "segment.no_match": "没有会员的“{name}”是“{value}”（可能写错了）。",
    "segment.datetime": "字段“{name}”需要带时区的时间，如 2026-11-11T00:00:00+08:00。",
    "segment.bool": "运算符“{op}”的取值是“是”或“否”。",
    # campaigns (tongcrm.campaigns.service)
    "campaign.no_opt_out": "模板“{template}”缺少营销短信必须带的退订说明（如“拒收请回复R”）。",
    "campaign.exists": "已有名为“{name}”的营销活动。",
    "campaign.schedule_past": "计划时间已过：{at} 早于现在 {now}（{zone}）。",
    "campaign.no_run_left": "按这个计划，从现在起不会再运行一次，请调整计划。",
    "campaign.audience_empty": "受众为空：这个活动的人群现在没有会员，未排期。",
    "campaign.over_budget_messages": "超出短信预算：这次运行要给 {treated:,} 位会员发送，预算 {budget:,} 条只剩 {left:,} 条；未排期，请提高预算或缩小人群。",
    "campaign.over_budget_points": "超出积分预算：这次运行要给 {treated:,} 位会员各发 {each:,} 积分，共 {needed:,} 积分，预算 {budget:,} 积分只剩 {left:,}；未排期。",
    "campaign.over_budget_entitlements": "超出权益预算：这次运行要发放 {treated:,} 份权益，预算 {budget:,} 份只剩 {left:,} 份；未排期。",
    "campaign.name_invalid": "名称“{name}”不可用：1 到 64 个小写字母、数字、“-”或“_”，且不能全是数字。",
    "campaign.not_open": "营销活动“{name}”已经是“{status}”状态，无需再取消。",
    "campaign.not_schedulable": "营销活动“{name}”的状态是“{status}”，只有草稿或已排期的活动可以（重新）排期。",
    # care-flow settings and channel re-authorisation (tongcrm.console.care_flow_settings, channel_pages)
    "care_flow.delay_not_whole": "延迟：“{value}”换算后不是整秒数，请换个单位或数值。",
    "care_flow.delay_range": "延迟：必须在 0 到 {days} 天（一年）之间。",
    "channel.no_plugin": "这个渠道的插件没有安装，无法重新授权。",
    "channel.nothing_renewed": "请至少填写一项新的授权信息：{fields}。",
    "backfill.window_not_positive": "每个窗口的时长必须大于 0 小时。",
    "backfill.since_not_before_until": "补拉的开始时间必须早于结束时间：现在填的是从 {since} 到 {until}。",
    "backfill.too_many_windows": "按每个窗口 {hours} 小时，这段时间要切成 {count:,} 个窗口，一次补拉最多 {max:,} 个：请把窗口调长，或缩短时间段。",
    "backfill.cannot_fetch": "这个渠道的订单由门店收银推送，不从平台拉取，无法补拉。",
    # API keys (tongcrm.auth.service)
    "apikey.store_not_pos": "只有收银台（pos）密钥才能限定门店：其他角色请把门店留空。",
    "apikey.unknown_store": "没有门店“{store}”：门店是门店渠道的账号，请先添加门店。已有的门店：{known}。",
    "apikey.pos_needs_store": "收银台（pos）密钥必须限定一个门店，请选择门店。",
    "apikey.last_admin": "密钥 #{key_id} 是最后一个有效的管理员密钥，不能吊销：请先创建另一个管理员密钥。",
    # channel and messenger settings, whichever door they came through (tongcrm.plugin.settings)
    "settings.too_many": "设置项最多 {max} 个，现在是 {count} 个。",
    "settings.name_length": "设置项名称“{name}”不可用：须为 1 到 {max} 个字符，且不含空字符（NUL）。",
    "settings.value_too_long": "设置项“{name}”最多 {max:,} 个字符，现在是 {length:,} 个。",
    "settings.nul": "设置项“{name}”含有空字符（NUL），无法保存；请重新复制粘贴。",
    # identity claims: class-level codes of tongcrm.identity.service's ClaimError and its subclasses (no dot)
    "invalid_claim": "身份信息无效：至少需要一项身份信息（手机号或渠道账号），且每项格式正确。",
    "unknown_identity_kind": "没有“{kind}”这种身份类型；可用的类型：{known}。",
    "invalid_claim_value": "身份“{kind}”的取值不可用：手机号须是有效的中国大陆手机号，其他身份最多 200 个字符。",
    "policy_error": "身份解析策略选中了会员 {member_id}，但没有任何身份信息指向这个会员（请检查插件的解析策略）。",
    # the programme pages' forms and drafts (tongcrm.console.programme_pages, tongcrm.console.ladder_form)
    "form.required": "{field}：请填写。",
    "form.not_whole": "{field}：“{value}”不是整数，请填写不带小数的数。",
    "form.not_date": "{field}：“{value}”不是日期，请按 2026-01-31 的格式填写。",
    "form.too_long": "{field}：最多 {max} 个字符。",
    "form.too_large": "{field}：“{value}”超过了上限 {max:,}。",
    "form.not_number": "{field}：“{value}”不是数字。",
    "form.not_datetime": "{field}：“{value}”不是日期和时间，请按 2026-11-11 10:00 的格式填写。",
    "draft.not_json": "草稿不是合法的 JSON：第 {line} 行第 {column} 列附近有误。",
    # tier ladders (tongcrm.tiers.ladder, tongcrm.tiers.service, tongcrm.entitlements.catalogue)
    "ladder.not_integer": "等级体系：“{name}”必须是整数。",
    "ladder.too_deep": "等级条件最多嵌套 4 层。",
    "ladder.not_object": "等级体系：{part_zh}必须是 JSON 对象（用 {{ }} 括起的“名称: 值”），不能是数字、文字或列表。",
    "ladder.empty_rules": "等级条件的组合里至少要有一个条件。",
    "ladder.metric": "“{metric}”不是可用的指标；可用：消费金额、获得积分、订单数。",
    "ladder.min_positive": "门槛必须大于 0。",
    "ladder.months": "统计月数必须在 1 到 {max} 之间。",
    "ladder.window_months": "统计周期必须在 1 到 {max} 个月之间。",
    "ladder.review_mode": "复核方式只能是“每年同一天”或“等级变动周年日”。",
    "ladder.review_date": "复核日期 {month} 月 {day} 日不存在。",
    "ladder.no_tiers": "等级体系至少要有一个等级（从低到高排列）。",
    "ladder.tier_code": "第 {n} 级的等级代码“{code}”不可用：须以小写字母开头，只含小写字母、数字和“_”，最多 32 个字符。",
    "ladder.tier_twice": "等级代码“{code}”重复了，每个等级的代码必须不同。",
    "ladder.tier_name": "等级“{code}”需要填写名称。",
    "ladder.base_rule": "“{code}”是基础等级（所有会员至少是这一级），不能设门槛条件。",
    "ladder.needs_rule": "等级“{code}”需要至少一个门槛条件（只有第一级基础等级没有）。",
    "ladder.entitlement_twice": "等级“{code}”重复列出了同一项权益“{kind}”。",
    "ladder.entitlement_min": "等级“{tier}”的权益“{kind}”数值至少为 {min}（单位：{unit}）。",
    "ladder.entitlement_max": "等级“{tier}”的权益“{kind}”数值最多为 {max}（单位：{unit}）。",
    "ladder.validity_days": "等级“{tier}”的权益“{kind}”的有效天数必须是正整数。",
    "ladder.unknown_entitlement": "没有“{kind}”这种权益；可用的权益：{known}。",
    "ladder.unfair_lacks": "等级体系不公平：较高的等级“{tier}”缺少较低等级“{lower_tier}”已有的权益“{entitlement}”；高等级必须保留低等级的全部权益。",
    "ladder.unfair_smaller": "等级体系不公平：较高的等级“{tier}”的权益“{entitlement}”（{higher_value}）少于较低等级“{lower_tier}”的（{lower_value}）。",
    "ladder.unfair_price": "等级体系不公平：较高的等级“{tier}”的会员价（标价的 {higher_value}%）高于较低等级“{lower_tier}”的（{lower_value}%）。",
    "ladder.reason_required": "变更原因：请填写为什么调整等级体系（记入审计）。",
    # points rule sets (tongcrm.points.rules)
    "rules.invalid": "规则集不符合格式：{detail}",
    "rules.code": "规则代码“{code}”不可用：只能含小写字母、数字、“.”、“_”或“-”，以字母或数字开头。",
    "rules.code_twice": "规则代码“{code}”重复了，每条规则的代码必须不同。",
    "rules.priority_twice": "规则“{other}”和“{code}”的优先级都是 {priority}：优先级必须不同，计算顺序才明确。",
    "rules.cap_negative": "规则“{code}”：上限不能为负数。",
    "rules.return_window": "规则“{code}”：退货期天数必须在 0 到 {max} 之间。",
    "rules.event_points": "规则“{code}”：事件积分必须在 0 到 {max:,} 之间（扣减请用积分调整）。",
    "rules.expiry_range": "规则“{code}”：有效期最多 {days:,} 天或 {months:,} 个月，且不能为负数。",
    "rules.expiry_days": "规则“{code}”：按天数过期时，天数至少为 1。",
    "rules.rate": "规则“{code}”：每元积分“{value}”必须是 0 到 {max:,} 之间的数。",
    # money as the console takes it (tongcrm.console.money)
    "money.not_amount": "{field}：“{value}”不是金额，请填写元，如 299 或 299.50。",
    "money.too_precise": "{field}：“{value}”超过两位小数；金额精确到分（0.01 元）。",
    "money.negative": "{field}：金额不能为负数。",
    "money.too_large": "{field}：“{value}”超过了金额上限 {max} 元（10 亿元），请检查是否多打了 0。",
}

#: Field names the English messages use (the ``field:`` prefix, a JSON pointer's last key, a form control).
FIELDS_ZH: Mapping[str, str] = {
    "points": "积分",
    "reason": "原因",
    "direction": "方向",
    "expires on": "有效期至",
    "expires_at": "有效期至",
    "name": "名称",
    "description": "说明",
    "note": "备注",
    "definition": "条件",
    "value": "取值",
    "op": "运算符",
    "field": "字段",
    "condition": "条件",
    "version": "版本",
    "window_days": "天数范围",
    "channel": "渠道",
    "store": "门店",
    "min_paid": "最低实付",
    "min_paid_fen": "最低实付",
    "min_paid_yuan": "最低实付（元）",
    "message_cost_yuan": "每条短信成本（元）",
    "budget": "预算",
    "budget_fen": "预算",
    "cost_per_message": "每条消息成本",
    "cost_per_message_fen": "每条消息成本",
    "budget_messages": "短信预算（条）",
    "within_days": "响应窗口（天）",
    "control_percent": "对照组比例",
    "segment": "人群",
    "template": "模板",
    "control_share": "对照组比例",
    "schedule": "计划",
    "at": "时间",
    "on": "日期",
    "kind": "类型",
    "format": "格式",
    "mapping": "列映射",
    "file": "文件",
    "since": "起始日期",
    "until": "截止时间",
    "window_hours": "每个窗口（小时）",
    "delay": "延迟",
    "flow": "流程",
    "goal": "目标",
    "control_seed": "对照组随机种子",
    "sku": "商品编码",
    "response": "响应定义",
    "message_cost_fen": "每条短信成本",
    "threshold": "门槛",
    "entitlement_value": "权益数值",
    "validity_days": "有效天数",
    "months": "统计月数",
    "window_months": "统计周期（月）",
    "review_month": "复核月份",
    "review_day": "复核日",
    # the points-rule form's fields (tongcrm.console.rules_form): its mistakes name them
    "priority": "优先级",
    "expiry_days": "有效天数",
    "expiry_months": "有效月数",
    "return_window_days": "退货期（天）",
    "cap_points": "上限积分",
    "points_per_yuan": "每元积分",
}

#: English bounds and what they say in Chinese; the first that matches the detail is used (so the fallback
#: keeps the number the service stated).
BOUNDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"length <= ([\d,]+)"), "最多 {0} 个字符"),
    (re.compile(r"length >= ([\d,]+)"), "至少 {0} 个字符"),
    (re.compile(r"(?:at most|longer than) ([\d,]+) characters?"), "最多 {0} 个字符"),
    (re.compile(r"from (-?[\d,]+) to (-?[\d,]+)"), "范围是 {0} 到 {1}"),
    (re.compile(r"between (-?[\d,]+) and (-?[\d,]+)"), "范围是 {0} 到 {1}"),
    (re.compile(r"(?:<=|at most) (-?[\d,]+)"), "不能大于 {0}"),
    (re.compile(r"(?:>=|at least) (-?[\d,]+)"), "不能小于 {0}"),
    (re.compile(r"< (-?[\d,]+)"), "必须小于 {0}"),
    (re.compile(r"> (-?[\d,]+)"), "必须大于 {0}"),
)

_PREFIX = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_ .]{0,30}?)\s*:\s+(.+)$", re.S)


def explain(lang: str, exc: TongcrmError) -> str:
    """What the console shows for a refused request, in ``lang``. Without a code, the field comes from the
    message's ``field:`` prefix or else from the JSON pointer the error carries (``extra["pointer"]``)."""
    if lang == "zh" and (exc.code is None or exc.code not in MESSAGES_ZH) and not _PREFIX.match(exc.message):
        pointer = exc.extra.get("pointer")
        if isinstance(pointer, str) and pointer_field(pointer):
            return fallback_zh(exc.message, pointer_field(pointer))
    return explain_text(lang, exc.message, exc.code, exc.params)


def explain_text(
    lang: str, message: str, code: str | None = None, params: Mapping[str, Any] | None = None
) -> str:
    """A refusal's sentence in ``lang``: the catalogue's by ``code``, else the Chinese fallback that keeps the
    field and the bound (English: ``message`` itself)."""
    if lang != "zh":
        return message
    if code is not None and code in MESSAGES_ZH:
        values = dict(params or {})
        if isinstance(
            values.get("field"), str
        ):  # the field a sentence names is a field of the API: in Chinese
            values["field"] = field_zh(values["field"])
        if code == "ladder.not_object":
            values["part_zh"] = _LADDER_PARTS_ZH.get(str(values.get("part")), "这一项").format(**values)
        if code.startswith("mobile."):
            values["shown"] = _shown_zh(values)
        if code.startswith("campaign.") and isinstance(values.get("status"), str):
            values["status"] = ZH_OPS.get(f"camp.status.{values['status']}", values["status"])  # 已取消
        try:
            return MESSAGES_ZH[code].format(**values)
        except (KeyError, IndexError, ValueError):
            pass  # a code raised without the params its sentence needs: the fallback still says it
    return fallback_zh(message)


#: A refused campaign run's reason by its ``reason_code`` (:data:`tongcrm.campaigns.models.RUN_REASONS`): the
#: scheduler refused this run, so each says nothing was sent this time (the schedule goes on).
RUN_REASONS_ZH: Mapping[str, str] = {
    "campaign_run.empty_audience": "受众为空：运行时人群中没有会员，本次未发送。",
    "campaign.over_budget_messages": "超出短信预算：本次要给 {treated:,} 位会员发送，预算 {budget:,} 条只剩 {left:,} 条；本次未发送。",
    "campaign.over_budget_points": "超出积分预算：本次要给 {treated:,} 位会员各发 {each:,} 积分，共 {needed:,} 积分，预算 {budget:,} 积分只剩 {left:,}；本次未发送。",
    "campaign.over_budget_entitlements": "超出权益预算：本次要发放 {treated:,} 份权益，预算 {budget:,} 份只剩 {left:,} 份；本次未发送。",
    "campaign_run.could_not_start": "本次运行无法开始，未发送：{why}",
    # a run refused before its code and figures were kept (revision 0041), or with a code this page lacks
    "": "本次运行被拒绝，未发送。（系统说明：{reason}）",
}  # fmt: skip


def run_reason(lang: str, reason: str, code: str, params: Mapping[str, Any] | None) -> str:
    """A refused run's reason in ``lang``: in Chinese the sentence of its code (a run refused because its segment
    broke says that refusal in Chinese too), else the fallback around the English ``reason``."""
    if lang != "zh" or not reason:
        return reason
    values = dict(params or {})
    if code == "campaign_run.could_not_start":
        inner = values.get("params")
        message = values.get("message")
        if not isinstance(message, str):
            return RUN_REASONS_ZH[""].format(reason=reason)
        inner_code = values.get("code")
        return RUN_REASONS_ZH[code].format(
            why=explain_text(
                lang,
                message,
                inner_code if isinstance(inner_code, str) else None,
                inner if isinstance(inner, dict) else None,
            )
        )
    if code and code in RUN_REASONS_ZH:
        try:
            return RUN_REASONS_ZH[code].format(**values)
        except (KeyError, IndexError, ValueError):
            pass  # a run refused before its figures were kept: the fallback keeps the English sentence
    return RUN_REASONS_ZH[""].format(reason=reason)


#: The parts of a ladder document ``ladder.not_object`` names.
_LADDER_PARTS_ZH: Mapping[str, str] = {
    "ladder": "整个等级体系",
    "review": "复核设置（review）",
    "tier": "第 {n} 个等级",
    "rule": "等级条件（rule）",
    "entitlement": "等级“{tier}”的权益",
    "params": "权益参数（params）",
}


def _shown_zh(params: Mapping[str, Any]) -> str:
    """What a mobile's refusal shows of the input (:func:`tongcrm.members.phone._hint_params`), in Chinese."""
    if params.get("last") is not None:
        return f"尾号为 {params['last']} 的 {params.get('digits', '?')} 位号码"
    if params.get("typed"):
        return f"“{params['typed']}”"
    return "所填内容"


def field_zh(name: str) -> str:
    """A field's Chinese name (the name itself where none is written: it is what the API calls it)."""
    return FIELDS_ZH.get(name.strip().lower(), name.strip())


def bound_zh(detail: str) -> str | None:
    """The bound ``detail`` states, in Chinese, or None."""
    for pattern, sentence in BOUNDS:
        found = pattern.search(detail)
        if found:
            return sentence.format(*found.groups())
    return None


def fallback_zh(message: str, field: str | None = None) -> str:
    """A Chinese sentence for a refusal the catalogue has no code for: the field (the ``field:`` prefix of the
    message, or ``field`` as given), the bound in Chinese where the message states one, and the service's own
    words after them."""
    detail = message
    if field is None:
        found = _PREFIX.match(message)
        if found:
            field, detail = found.group(1), found.group(2)
    bound = bound_zh(detail)
    head = f"{field_zh(field)}：" if field else ""
    said = f"{bound}。" if bound else "未被接受。"
    return f"{head}{said}（系统说明：{detail}）"


def pointer_field(pointer: str) -> str | None:
    """The last key of a JSON pointer that names a field (``/condition/all/0/value`` → ``value``)."""
    for part in reversed(pointer.split("/")):
        if part and not part.isdigit() and part not in ("all", "any", "not"):
            return part.replace("~1", "/").replace("~0", "~")
    return None


def segment_problem(lang: str, problem: Mapping[str, Any]) -> dict[str, str]:
    """A segment mistake (``{"pointer", "detail"}`` with the schema's ``code`` and ``params`` when it has them)
    as the editor shows it: the pointer as it is (it says where), the detail in ``lang``."""
    pointer = str(problem.get("pointer", ""))
    detail = str(problem.get("detail", ""))
    if lang == "zh":
        code = problem.get("code")
        params = problem.get("params") or {}
        if isinstance(code, str) and code in MESSAGES_ZH:
            detail = explain_text(lang, detail, code, params)
        else:
            detail = fallback_zh(detail, pointer_field(pointer))
    return {"pointer": pointer, "detail": detail}
