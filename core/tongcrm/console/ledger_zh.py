"""The points ledger's explanations in Chinese, for the member 360 and points adjustment pages in zh.

The points service explains every entry in English (``EntryOut.explanation``, what ``GET
/api/members/{id}/points`` answers and the CLI prints). The console writes the same explanation again in Chinese
from the entry's structured fields (its kind, amount, rule, ``detail``, reason, actor and lot), never from the
English sentence; an entry of a kind written here without the detail its sentence needs, or of a kind added
later, is named by its kind in Chinese with the English explanation after it, so nothing is lost. Amounts are
yuan (the detail holds integer fen).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tongcrm.console.money import fen_to_yuan
from tongcrm.points.schemas import EntryOut

#: Ledger entry kinds (:class:`tongcrm.points.models.EntryKind`) in Chinese.
KINDS_ZH: Mapping[str, str] = {
    "earn": "获得",
    "opening": "期初余额",
    "redeem": "兑换",
    "reverse": "退款冲回",
    "clawback": "追扣",
    "expire": "过期",
    "adjust": "人工调整",
    "transfer_out": "转出",
    "transfer_in": "转入",
    "refund": "兑换退回",
    "merge_split": "撤销合并结算",
}
_ROUNDING_ZH: Mapping[str, str] = {"down": "向下取整", "up": "向上取整", "half_up": "四舍五入"}
_RELEASE_ZH: Mapping[str, str] = {"paid": "付款后", "completed": "完成后", "return_window": "退货期结束后"}
_POLICY_SHORT: Mapping[str, str] = {"debt": "记为欠分", "clawback": "从以后获得的积分中追扣"}


def kind_zh(kind: str) -> str:
    return KINDS_ZH.get(kind, kind)


def _actor(actor: str) -> str:
    if actor.startswith("apikey:"):
        return f"API 密钥 {actor.removeprefix('apikey:')}"
    return "系统" if actor == "system" else actor


def _reason(entry: EntryOut) -> str:
    return f"：{entry.reason}" if entry.reason else ""


def explain_zh(entry: EntryOut) -> str:
    """``entry`` explained in Chinese (see the module's docstring for what is kept when a detail is missing)."""
    try:
        return _explain(entry, entry.detail or {})
    except (KeyError, TypeError, ValueError):
        return f"{kind_zh(entry.kind)}（{entry.explanation}）"


def _explain(e: EntryOut, d: Mapping[str, Any]) -> str:
    rule = f"规则“{e.rule_code}”第 {e.rule_version} 版"
    if e.kind == "earn" and "base_fen" in d:
        text = (
            f"按{rule}获得 {e.amount} 积分：{fen_to_yuan(d['base_fen'])} 元 × 每元 {d['points_per_yuan']} 积分"
            f" × 等级倍数 {d['multiplier_pct']}%，{_ROUNDING_ZH.get(str(d['rounding']), str(d['rounding']))}"
        )
        if "capped_from" in d:
            text += f"，受上限限制（原为 {d['capped_from']}，每{d['period']}上限 {d['cap']}）"
        if e.lot is not None and e.lot.status == "pending":
            text += f"；待订单{_RELEASE_ZH.get(e.lot.release_on, e.lot.release_on)}发放"
        return text
    if e.kind == "earn":
        return f"按{rule}获得 {e.amount} 积分（事件：{d.get('event', '—')}）"
    if e.kind == "reverse":
        text = (
            f"订单行 {e.line_id} 退款 {fen_to_yuan(d.get('refunded_fen', 0))} 元（共 {fen_to_yuan(d.get('amount_fen', 0))} 元）："
            f"已获得的 {d.get('earned', 0)} 积分中累计收回 {d.get('target', 0)}"
        )
        if d.get("short"):
            text += f"；其中 {d['short']} 积分已被使用，{_POLICY_SHORT.get(str(d.get('policy')), '从以后获得的积分中追扣')}"
        return text
    if e.kind == "expire":
        return f"第 {e.ref_entry_id} 笔积分中的 {-e.amount} 积分已过期"
    if e.kind == "clawback":
        return f"追扣 {-e.amount} 积分（抵扣此前退款欠下的积分）"
    if e.kind == "redeem":
        return f"兑换 {-e.amount} 积分{_reason(e)}"
    if e.kind == "adjust":
        direction = "增加" if e.amount > 0 else "扣减"
        return f"人工调整，{direction} {abs(e.amount)} 积分（{_actor(e.actor)}）{_reason(e)}"
    if e.kind == "opening":
        return f"从原系统结转期初余额 {e.amount} 积分{_reason(e)}"
    if e.kind == "transfer_out":
        return f"转出 {-e.amount} 积分给会员 {d['to_member_id']}"
    if e.kind == "transfer_in":
        return f"从会员 {d['from_member_id']} 转入 {e.amount} 积分"
    if e.kind == "refund":
        return f"退回已兑换的 {e.amount} 积分（兑换 {e.ref_entry_id}）{_reason(e)}"
    if e.kind == "merge_split":
        other = d["counterpart_id"]
        parts = []
        if e.amount < 0:
            parts.append(f"合并期间本会员的 {-e.amount} 积分归入了会员 {other}")
        elif e.amount > 0:
            parts.append(f"合并期间本会员使用了会员 {other} 的 {e.amount} 积分")
        if e.shortfall > 0:
            parts.append(f"本会员的追扣为会员 {other} 抵了 {e.shortfall} 欠分")
        elif e.shortfall < 0:
            parts.append(f"会员 {other} 的追扣为本会员抵了 {-e.shortfall} 欠分")
        return f"撤销合并 {d['merge_id']}：" + "；".join(parts)
    return f"{kind_zh(e.kind)}（{e.explanation}）"
