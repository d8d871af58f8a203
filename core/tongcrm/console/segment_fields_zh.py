"""The segment language's field and parameter descriptions in Chinese, for the segment editor when the console
is in zh. The catalogue (:func:`tongcrm.segments.schema.catalogue`, ``GET /api/segments/fields``) keeps its
English descriptions: it is the API's contract; these are the console's presentation of it. A test checks that
every field and parameter of the catalogue has a description here, so a new field cannot reach the Chinese
editor undescribed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FIELDS_ZH: Mapping[str, str] = {
    "profile.gender": "性别",
    "profile.birthday_month": "生日月份，1-12",
    "profile.city": "城市",
    "profile.province": "省份",
    "profile.joined_at": "成为会员的时间",
    "profile.source_channel": "会员来源渠道",
    "profile.source_store": "会员来源门店",
    "profile.source_campaign": "会员来源活动",
    "profile.referrer": "推荐此会员的会员 ID",
    "profile.referral_count": "此会员推荐的会员数",
    "identity.has": "有该渠道声明的某种身份",
    "identity.membership_bound": "已绑定平台的品牌会员（如会员通）",
    "tier.code": "当前等级（生效中的特批等级也算）",
    "tier.reached": "曾升入其中某个等级（等级历史）",
    "tags": "会员标签",
    "consent.opted_in": "某用途（及签名）下允许联系",
    "points.balance": "可用积分",
    "points.expiring": "N 天内到期的可用积分",
    "points.earned": "获得的积分",
    "points.redeemed": "使用的积分",
    "orders.count": "购买订单数（已付款且未全额退款）",
    "orders.spend": "消费金额（元，扣除退款）",
    "orders.last_at": "最近一笔订单的下单时间",
    "orders.first_at": "第一笔订单的下单时间",
    "orders.aov": "平均客单价（元，消费 ÷ 订单数，向下取整到分）",
    "orders.refund_rate": "退款金额占已付金额的百分比（向下取整）",
    "orders.bought_sku": "买过其中某个 SKU（未全额退款）",
    "orders.bought_category": "买过其中某个类目编码的商品",
    "rfm.recency": "最近购买分 1-5（5：最近买过）",
    "rfm.frequency": "购买频次分 1-5",
    "rfm.monetary": "消费金额分 1-5",
    "rfm.cell": "八类 RFM 客群之一，如 important_value（重要价值客户）",
    "lifecycle.stage": "推算的生命周期阶段",
    "segment": "属于另一个已保存的人群（其最新版本）",
}

#: Parameters by name; the same parameter means the same on every field that takes it.
PARAMS_ZH: Mapping[str, str] = {
    "window_days": "只算最近 N 天（到现在为止的 N×24 小时）；不填则不限时间",
    "channel": "渠道名（如 taobao、jd、offline_pos）；用于订单字段时只算该渠道的订单",
    "store": "只算该门店编码的订单；'*' 表示任意门店",
    "purpose": "service（服务）或 marketing（营销）",
    "signature": "短信签名；不填则任一签名",
    "within_days": "天数",
}


def in_chinese(field: Mapping[str, Any]) -> dict[str, Any]:
    """A catalogue entry with its descriptions in Chinese (the English one where none is written yet)."""
    return {
        **field,
        "description": FIELDS_ZH.get(field["field"], field["description"]),
        "parameters": [
            {**p, "description": PARAMS_ZH.get(p["name"], p["description"])} for p in field["parameters"]
        ],
    }
