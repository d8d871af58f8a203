"""The data behind the fake TOP gateway: one deterministic, generated Taobao shop, plus its TMC queue.

A shop of 100,000 trades must answer window queries quickly, so generation is split in two:

* a *skeleton* per trade (created/modified second, status, type, buyer, line count) is drawn up front from one
  random stream (cheap) and indexed by modified time in a sorted list, so a window query is two bisects;
* the trade's *details* (lines, prices, refunds, receiver) are generated on demand from a per-trade seed, so
  the same trade always looks the same, and only trades that were asked for cost anything.

Mutations (pay, ship, refund…) materialise the trade, move it in the index to its new modified time, and
publish the TMC messages the platform would publish. Time comes from an injectable ``clock``, so tests
can move it.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tongcrm_taobao.timefmt import format_top_time

__all__ = [
    "DEFAULT_TYPES",
    "FakeShop",
    "ShopConfig",
    "TmcQueue",
    "TradeStatus",
]

#: the trade types the list APIs return when the caller does not pass ``type`` (protocols.md §1.4)
DEFAULT_TYPES = frozenset({"guarantee_trade", "auto_delivery", "ec", "cod", "step"})

TID_BASE = 1_900_000_000_000_000_000  # real tids are 19 digits today, far beyond 2^53
TID_STRIDE = 1_000


class TradeStatus:
    """Names of TOP trade statuses used by the generator and the mutations."""

    NO_CREATE_PAY = "TRADE_NO_CREATE_PAY"
    WAIT_BUYER_PAY = "WAIT_BUYER_PAY"
    PAY_PENDING = "PAY_PENDING"
    WAIT_PRE_AUTH_CONFIRM = "WAIT_PRE_AUTH_CONFIRM"
    WAIT_SELLER_SEND_GOODS = "WAIT_SELLER_SEND_GOODS"
    PAID_FORBID_CONSIGN = "PAID_FORBID_CONSIGN"
    SELLER_CONSIGNED_PART = "SELLER_CONSIGNED_PART"
    WAIT_BUYER_CONFIRM_GOODS = "WAIT_BUYER_CONFIRM_GOODS"
    TRADE_BUYER_SIGNED = "TRADE_BUYER_SIGNED"
    TRADE_FINISHED = "TRADE_FINISHED"
    TRADE_CLOSED = "TRADE_CLOSED"
    TRADE_CLOSED_BY_TAOBAO = "TRADE_CLOSED_BY_TAOBAO"


UNPAID = frozenset(
    {
        TradeStatus.NO_CREATE_PAY,
        TradeStatus.WAIT_BUYER_PAY,
        TradeStatus.PAY_PENDING,
        TradeStatus.WAIT_PRE_AUTH_CONFIRM,
    }
)
SHIPPED = frozenset(
    {
        TradeStatus.SELLER_CONSIGNED_PART,
        TradeStatus.WAIT_BUYER_CONFIRM_GOODS,
        TradeStatus.TRADE_BUYER_SIGNED,
        TradeStatus.TRADE_FINISHED,
    }
)

_STATUS_WEIGHTS: tuple[tuple[str, float], ...] = (
    (TradeStatus.TRADE_FINISHED, 40),
    (TradeStatus.WAIT_BUYER_CONFIRM_GOODS, 12),
    (TradeStatus.WAIT_SELLER_SEND_GOODS, 8),
    (TradeStatus.SELLER_CONSIGNED_PART, 2),
    (TradeStatus.TRADE_BUYER_SIGNED, 2),
    (TradeStatus.PAID_FORBID_CONSIGN, 1),
    (TradeStatus.TRADE_CLOSED, 6),
    (TradeStatus.TRADE_CLOSED_BY_TAOBAO, 12),
    (TradeStatus.WAIT_BUYER_PAY, 12),
    (TradeStatus.NO_CREATE_PAY, 2),
    (TradeStatus.PAY_PENDING, 1),
    (TradeStatus.WAIT_PRE_AUTH_CONFIRM, 2),
)
# how long after creation a trade in this status was last modified (seconds, lower and upper bound)
_AGE: dict[str, tuple[int, int]] = {
    TradeStatus.TRADE_FINISHED: (5 * 86400, 12 * 86400),
    TradeStatus.TRADE_CLOSED: (2 * 86400, 8 * 86400),
    TradeStatus.TRADE_BUYER_SIGNED: (2 * 86400, 4 * 86400),
    TradeStatus.WAIT_BUYER_CONFIRM_GOODS: (6 * 3600, 3 * 86400),
    TradeStatus.SELLER_CONSIGNED_PART: (6 * 3600, 2 * 86400),
}
_TYPES: tuple[tuple[str, float], ...] = (
    ("fixed", 80),
    ("step", 8),
    ("guarantee_trade", 6),
    ("tmall_i18n", 6),
)
_CATALOGUE: tuple[tuple[str, int], ...] = (
    ("玻尿酸补水面膜 10片装", 9900),
    ("氨基酸洁面乳 120g", 6800),
    ("烟酰胺精华液 30ml", 25900),
    ("防晒乳 SPF50+ 50ml", 15800),
    ("保湿喷雾 150ml", 4500),
    ("眼霜 15g", 32000),
    ("卸妆油 200ml", 12900),
    ("护手霜礼盒", 8800),
    ("口红 #999", 32000),
    ("试用装小样", 100),
)
#: Carriers a shop ships with, and the prefix of their waybill numbers in the generated data.
_CARRIERS: tuple[tuple[str, str], ...] = (
    ("圆通速递", "YT"),
    ("中通快递", "ZT"),
    ("韵达快递", "YD"),
    ("顺丰速运", "SF"),
    ("申通快递", "ST"),
)
_CITIES = (
    ("浙江省", "杭州市"),
    ("上海", "上海市"),
    ("广东省", "深圳市"),
    ("北京", "北京市"),
    ("四川省", "成都市"),
)


@dataclass(frozen=True, slots=True)
class ShopConfig:
    """What to generate. ``anchor`` is the shop's "now" at generation time: every generated trade was last
    modified at or before it, and created within ``days`` before it."""

    seed: int = 1
    trades: int = 1_000
    buyers: int = 300
    days: int = 30
    anchor: datetime = datetime(2024, 6, 18, 12, 0, tzinfo=UTC)
    seller_nick: str = "通达旗舰店"
    user_id: int = 2_200_000_001
    burst: int = 0  # this many shipped trades share one modified second (a batch shipment)
    ouid_share: float = 0.6
    omid_share: float = 0.2

    def __post_init__(self) -> None:
        if self.anchor.tzinfo is None:
            raise ValueError("anchor must be timezone-aware")
        if self.trades < 0 or self.buyers < 1 or self.days < 1 or not 0 <= self.burst <= self.trades:
            raise ValueError("invalid shop configuration")


@dataclass(slots=True)
class _Skeleton:
    created: int
    modified: int
    status: str
    type: str
    buyer: int
    lines: int


@dataclass(slots=True)
class TmcEntry:
    message: dict[str, Any]
    visible_at: float = 0.0
    deliveries: int = 0


@dataclass(slots=True)
class TmcQueue:
    """At-least-once delivery: consumed messages come back after ``visibility_timeout`` until confirmed."""

    clock: Callable[[], datetime]
    visibility_timeout: float = 300.0
    _next_id: int = 7_100_000_000_000_000_001
    _pending: dict[int, TmcEntry] = field(default_factory=dict)

    def publish(
        self, topic: str, content: dict[str, Any], *, user_id: int, user_nick: str, app_key: str
    ) -> int:
        message_id = self._next_id
        self._next_id += 1
        self._pending[message_id] = TmcEntry(
            {
                "id": message_id,
                "topic": topic,
                "content": json.dumps(content, ensure_ascii=False),
                "pub_time": format_top_time(self.clock()),
                "pub_app_key": app_key,
                "user_id": user_id,
                "user_nick": user_nick,
            }
        )
        return message_id

    def consume(self, quantity: int) -> list[dict[str, Any]]:
        now = self.clock().timestamp()
        out: list[dict[str, Any]] = []
        for entry in self._pending.values():
            if len(out) >= quantity:
                break
            if entry.visible_at <= now:
                entry.visible_at = now + self.visibility_timeout
                entry.deliveries += 1
                out.append(dict(entry.message))
        return out

    def confirm(self, ids: Iterable[int]) -> None:
        for message_id in ids:
            self._pending.pop(message_id, None)

    def pending(self) -> int:
        return len(self._pending)


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _digest(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def _parcel(tid: int, n: int) -> tuple[str, str]:
    """Carrier name and waybill of the trade's ``n``-th parcel: derived from the tid alone, so adding
    logistics data draws nothing from the generator's random streams (every other field stays as it was)."""
    digest = _digest(tid, "parcel", n)
    company, prefix = _CARRIERS[int(digest[:4], 16) % len(_CARRIERS)]
    return company, f"{prefix}{int(digest[4:20], 16) % 10**13:013d}"


def _consign_lines(trade: dict[str, Any], consign_time: str) -> None:
    """Put the lines that have shipped and carry no waybill yet into one new parcel, as TOP reports it on
    each line (``logistics_company``, ``invoice_no``, ``consign_time``)."""
    lines = trade["orders"]["order"]
    waiting = [
        line
        for line in lines
        if not line.get("invoice_no")
        and line["status"] not in (TradeStatus.WAIT_SELLER_SEND_GOODS, *UNPAID)
        and line["refund_status"] != "SUCCESS"
    ]
    if not waiting:
        return
    parcels = len({line["invoice_no"] for line in lines if line.get("invoice_no")})
    company, number = _parcel(trade["tid"], parcels)
    for line in waiting:
        line.update(logistics_company=company, invoice_no=number, consign_time=consign_time)


class FakeShop:
    """A generated shop whose trades can be queried by modified window and mutated like the real thing."""

    def __init__(
        self,
        config: ShopConfig | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        app_key: str = "12345678",
    ) -> None:
        self.config = config or ShopConfig()
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.app_key = app_key
        self.tmc = TmcQueue(clock=self.clock)
        self._skeletons: dict[int, _Skeleton] = {}
        self._materialised: dict[int, dict[str, Any]] = {}
        self._index: list[tuple[int, int]] = []
        self._generate()

    # -------------------------------------------------------------------------------------------- generation

    def _generate(self) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed)
        anchor = int(cfg.anchor.timestamp())
        start = anchor - cfg.days * 86400
        step = (cfg.days * 86400) / max(cfg.trades, 1)
        statuses, status_weights = zip(*_STATUS_WEIGHTS, strict=True)
        types, type_weights = zip(*_TYPES, strict=True)
        burst_second = anchor - 2 * 3600
        for i in range(cfg.trades):
            created = start + int((i + rng.random()) * step)
            status = rng.choices(statuses, status_weights)[0]
            low, high = _AGE.get(status, (60, 3 * 3600))
            modified = created + rng.randint(low, high)
            if modified > anchor:  # not that old yet: it reached its status some time before the anchor
                modified = created + int(rng.random() * (anchor - created))
            if i < cfg.burst:
                status, created = TradeStatus.WAIT_BUYER_CONFIRM_GOODS, min(created, burst_second - 3600)
                modified = burst_second
            buyer = int(cfg.buyers * rng.random() ** 2)  # skewed: a few buyers come back often
            lines = rng.choices((1, 2, 3, 4), (60, 25, 10, 5))[0]
            tid = TID_BASE + i * TID_STRIDE + rng.randrange(TID_STRIDE)
            self._skeletons[tid] = _Skeleton(
                created, modified, status, rng.choices(types, type_weights)[0], buyer, lines
            )
        self._index = sorted((sk.modified, tid) for tid, sk in self._skeletons.items())

    def buyer(self, index: int) -> dict[str, str]:
        """The identifiers of generated buyer ``index`` (stable for a seed)."""
        cfg = self.config
        digest = _digest(cfg.seed, "buyer", index)
        out = {
            "buyer_open_uid": "AAF" + digest[:21],
            "buyer_nick": f"t**{digest[21]}",
        }
        if int(digest[30:34], 16) / 0xFFFF < cfg.ouid_share:
            out["ouid"] = "ou" + digest[34:50]
        if int(digest[50:54], 16) / 0xFFFF < cfg.omid_share:
            out["omid"] = "om" + digest[40:60]
        return out

    def _build(self, tid: int) -> dict[str, Any]:
        sk = self._skeletons[tid]
        rng = random.Random(tid ^ (self.config.seed << 64))
        buyer = self.buyer(sk.buyer)
        province, city = _CITIES[sk.buyer % len(_CITIES)]
        paid = sk.status not in UNPAID and sk.status != TradeStatus.TRADE_CLOSED_BY_TAOBAO
        lines: list[dict[str, Any]] = []
        for k in range(sk.lines):
            title, price = _CATALOGUE[rng.randrange(len(_CATALOGUE))]
            num = rng.choice((1, 1, 1, 2, 3))
            line_discount = rng.choice((0, 0, price * num // 10))
            oid = tid if sk.lines == 1 else tid + k + 1
            lines.append(
                {
                    "oid": oid,
                    "oid_str": str(oid),
                    "num_iid": 600_000_000_000 + _CATALOGUE.index((title, price)),
                    "sku_id": str(5_000_000_000 + rng.randrange(10_000)),
                    "outer_iid": f"SKU{_CATALOGUE.index((title, price)):04d}",
                    "title": title,
                    "price": _yuan(price),
                    "num": num,
                    "total_fee": _yuan(price * num),
                    "discount_fee": _yuan(line_discount),
                    "_net": price * num - line_discount,
                    "status": sk.status,
                    "refund_status": "NO_REFUND",
                }
            )
        coupon = rng.choice((0, 0, 0, 500, 1000)) if sum(line["_net"] for line in lines) > 5000 else 0
        remaining = coupon
        net_total = sum(line["_net"] for line in lines)
        for k, line in enumerate(lines):
            share = remaining if k == len(lines) - 1 else coupon * line["_net"] // net_total
            remaining -= share
            line["payment"] = _yuan(line["_net"])
            line["divide_order_fee"] = _yuan(line.pop("_net") - share)
        post_fee = rng.choice((0, 0, 0, 600, 1000))
        total_fee = sum(int(line["price"].replace(".", "")) * line["num"] for line in lines)
        line_discounts = sum(int(line["discount_fee"].replace(".", "")) for line in lines)
        payment = total_fee - line_discounts - coupon + post_fee
        trade: dict[str, Any] = {
            "tid": tid,
            "tid_str": str(tid),
            "type": sk.type,
            "status": sk.status,
            "seller_nick": self.config.seller_nick,
            **buyer,
            "oaid": "1"
            + _digest(tid, "oaid")[:30],  # a receiver id: per receiver and week, never a buyer key
            "receiver_name": "~" + _digest(tid, "name")[:16] + "~",
            "receiver_mobile": "$" + _digest(tid, "mobile")[:16] + "$",
            "receiver_state": province,
            "receiver_city": city,
            "created": self._fmt(sk.created),
            "modified": self._fmt(sk.modified),
            "total_fee": _yuan(total_fee),
            "discount_fee": _yuan(line_discounts + coupon),
            "post_fee": _yuan(post_fee),
            "payment": _yuan(payment),
            "orders": {"order": lines},
        }
        span = max(sk.modified - sk.created, 3)
        if paid:
            trade["pay_time"] = self._fmt(sk.created + span // 3 if sk.status in SHIPPED else sk.created + 1)
        if sk.status in SHIPPED or sk.status == TradeStatus.TRADE_CLOSED:
            trade["consign_time"] = self._fmt(sk.created + span // 2)
        if sk.status in (
            TradeStatus.TRADE_FINISHED,
            TradeStatus.TRADE_CLOSED,
            TradeStatus.TRADE_CLOSED_BY_TAOBAO,
        ):
            trade["end_time"] = self._fmt(sk.modified)
        if sk.status == TradeStatus.SELLER_CONSIGNED_PART and len(lines) > 1:
            lines[-1]["status"] = TradeStatus.WAIT_SELLER_SEND_GOODS
        if "consign_time" in trade:
            _consign_lines(trade, trade["consign_time"])
        self._refunds(trade, sk, rng)
        if sk.type == "step":
            self._presale(trade, sk, payment)
        if paid:
            refunded = sum(
                int(line["divide_order_fee"].replace(".", ""))
                for line in lines
                if line["refund_status"] == "SUCCESS"
            )
            trade["received_payment"] = _yuan(max(payment - refunded, 0))
        return trade

    @staticmethod
    def _refunds(trade: dict[str, Any], sk: _Skeleton, rng: random.Random) -> None:
        lines = trade["orders"]["order"]
        if sk.status == TradeStatus.TRADE_CLOSED:  # closed because everything was refunded
            for k, line in enumerate(lines):
                line.update(refund_status="SUCCESS", refund_id=str(trade["tid"] // 10 + k), status=sk.status)
            return
        if sk.status not in SHIPPED and sk.status != TradeStatus.WAIT_SELLER_SEND_GOODS:
            return
        roll = rng.random()
        if len(lines) > 1 and roll < 0.2:  # a partial refund: one line refunded, the rest kept
            lines[0].update(refund_status="SUCCESS", refund_id=str(trade["tid"] // 10), status="TRADE_CLOSED")
        elif roll < 0.26:
            state = rng.choice(
                ("WAIT_SELLER_AGREE", "SELLER_REFUSE_BUYER", "CLOSED", "WAIT_BUYER_RETURN_GOODS")
            )
            lines[-1].update(refund_status=state, refund_id=str(trade["tid"] // 10 + 7))

    @staticmethod
    def _presale(trade: dict[str, Any], sk: _Skeleton, payment: int) -> None:
        if sk.status == TradeStatus.WAIT_BUYER_PAY:
            trade.update(step_trade_status="FRONT_PAID_FINAL_NOPAID", step_paid_fee=_yuan(payment // 5))
        elif sk.status in UNPAID or sk.status == TradeStatus.TRADE_CLOSED_BY_TAOBAO:
            trade.update(step_trade_status="FRONT_NOPAID_FINAL_NOPAID", step_paid_fee="0.00")
        else:
            trade.update(step_trade_status="FRONT_PAID_FINAL_PAID", step_paid_fee=_yuan(payment))

    @staticmethod
    def _fmt(epoch: int) -> str:
        return format_top_time(datetime.fromtimestamp(epoch, UTC))

    # ----------------------------------------------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self._skeletons)

    def tids(self) -> list[int]:
        return list(self._skeletons)

    def trade(self, tid: int) -> dict[str, Any]:
        """The full trade as ``taobao.trade.fullinfo.get`` returns it (a copy; mutate through methods)."""
        if tid not in self._skeletons:
            raise KeyError(tid)
        found = self._materialised.get(tid)
        return copy.deepcopy(found) if found is not None else self._build(tid)

    def trade_type(self, tid: int) -> str:
        return self._skeletons[tid].type

    def modified_epoch(self, tid: int) -> int:
        return self._skeletons[tid].modified

    def window(
        self, start: int, end: int, *, types: frozenset[str] | None = None, status: str | None = None
    ) -> list[int]:
        """Tids modified in ``[start, end]`` (both inclusive, epoch seconds), newest modified first."""
        lo = bisect.bisect_left(self._index, (start, -1))
        hi = bisect.bisect_right(self._index, (end, 1 << 80))
        out = []
        for _, tid in reversed(self._index[lo:hi]):
            sk = self._skeletons[tid]
            if (types is None or sk.type in types) and (status is None or sk.status == status):
                out.append(tid)
        return out

    # --------------------------------------------------------------------------------------------- mutations

    def _touch(self, tid: int, trade: dict[str, Any], status: str | None = None) -> int:
        sk = self._skeletons[tid]
        new = max(int(self.clock().timestamp()), sk.modified + 1)
        del self._index[bisect.bisect_left(self._index, (sk.modified, tid))]
        bisect.insort(self._index, (new, tid))
        sk.modified = new
        if status is not None:
            sk.status = status
            trade["status"] = status
        trade["modified"] = self._fmt(new)
        self._materialised[tid] = trade
        return new

    def _publish(self, topic: str, trade: dict[str, Any], **extra: Any) -> None:
        content = {
            "tid": trade["tid"],
            "oid": trade["orders"]["order"][0]["oid"],
            "buyer_nick": trade.get("buyer_nick", ""),
            "buyer_open_uid": trade.get("buyer_open_uid", ""),
            "seller_nick": self.config.seller_nick,
            "payment": trade.get("payment", "0.00"),
            "status": trade["status"],
            "type": trade.get("type", "fixed"),
            **extra,
        }
        self.tmc.publish(
            topic,
            content,
            user_id=self.config.user_id,
            user_nick=self.config.seller_nick,
            app_key=self.app_key,
        )

    def touch(self, tid: int) -> None:
        """A change that moves nothing forward (a memo, an address): only ``modified`` moves."""
        trade = self.trade(tid)
        self._touch(tid, trade)
        self._publish("taobao_trade_TradeChanged", trade)

    def pay(self, tid: int) -> None:
        trade = self.trade(tid)
        if trade["status"] not in UNPAID:
            raise ValueError(f"trade {tid} is {trade['status']}, not awaiting payment")
        now = self._fmt(int(self.clock().timestamp()))
        trade["pay_time"] = now
        if trade.get("type") == "step":
            trade.update(step_trade_status="FRONT_PAID_FINAL_PAID", step_paid_fee=trade["payment"])
        trade["received_payment"] = trade["payment"]
        for line in trade["orders"]["order"]:
            line["status"] = TradeStatus.WAIT_SELLER_SEND_GOODS
        self._touch(tid, trade, TradeStatus.WAIT_SELLER_SEND_GOODS)
        self._publish("taobao_trade_TradeBuyerPay", trade)

    def ship(self, tid: int) -> None:
        trade = self.trade(tid)
        if trade["status"] not in (TradeStatus.WAIT_SELLER_SEND_GOODS, TradeStatus.SELLER_CONSIGNED_PART):
            raise ValueError(f"trade {tid} is {trade['status']}, not awaiting shipment")
        trade["consign_time"] = self._fmt(int(self.clock().timestamp()))
        for line in trade["orders"]["order"]:
            if line["refund_status"] != "SUCCESS":
                line["status"] = TradeStatus.WAIT_BUYER_CONFIRM_GOODS
        _consign_lines(trade, trade["consign_time"])
        self._touch(tid, trade, TradeStatus.WAIT_BUYER_CONFIRM_GOODS)
        self._publish("taobao_trade_TradeSellerShip", trade)

    def finish(self, tid: int) -> None:
        trade = self.trade(tid)
        if trade["status"] not in (TradeStatus.WAIT_BUYER_CONFIRM_GOODS, TradeStatus.TRADE_BUYER_SIGNED):
            raise ValueError(f"trade {tid} is {trade['status']}, not shipped")
        trade["end_time"] = self._fmt(int(self.clock().timestamp()))
        self._touch(tid, trade, TradeStatus.TRADE_FINISHED)
        self._publish("taobao_trade_TradeSuccess", trade)

    def close(self, tid: int) -> None:
        """The buyer or seller closes an unpaid trade."""
        trade = self.trade(tid)
        if trade["status"] not in UNPAID:
            raise ValueError(f"trade {tid} is {trade['status']}; only unpaid trades close this way")
        trade["end_time"] = self._fmt(int(self.clock().timestamp()))
        for line in trade["orders"]["order"]:
            line["status"] = TradeStatus.TRADE_CLOSED_BY_TAOBAO
        self._touch(tid, trade, TradeStatus.TRADE_CLOSED_BY_TAOBAO)
        self._publish("taobao_trade_TradeClose", trade)

    def refund_line(self, tid: int, oid: int | None = None) -> None:
        """Refund one line in full; when no line is left, the trade closes (``TRADE_CLOSED``)."""
        trade = self.trade(tid)
        if trade["status"] in UNPAID or trade["status"] in (
            TradeStatus.TRADE_CLOSED_BY_TAOBAO,
            TradeStatus.TRADE_CLOSED,
        ):
            raise ValueError(f"trade {tid} is {trade['status']}; nothing paid to refund")
        lines = trade["orders"]["order"]
        open_lines = [line for line in lines if line["refund_status"] != "SUCCESS"]
        line = next((x for x in open_lines if oid is None or x["oid"] == oid), None)
        if line is None:
            raise ValueError(f"trade {tid} has no refundable line {oid}")
        refund_id = str(line["oid"] // 10 + 3)
        line.update(refund_status="SUCCESS", refund_id=refund_id, status=TradeStatus.TRADE_CLOSED)
        refunded = sum(
            int(x["divide_order_fee"].replace(".", "")) for x in lines if x["refund_status"] == "SUCCESS"
        )
        trade["received_payment"] = _yuan(max(int(trade["payment"].replace(".", "")) - refunded, 0))
        all_refunded = len(open_lines) == 1
        self._touch(tid, trade, TradeStatus.TRADE_CLOSED if all_refunded else None)
        if all_refunded:
            trade["end_time"] = trade["modified"]
        self.tmc.publish(
            "taobao_refund_RefundSuccess",
            {
                "refund_id": refund_id,
                "tid": trade["tid"],
                "oid": line["oid"],
                "refund_fee": line["divide_order_fee"],
                "buyer_nick": trade.get("buyer_nick", ""),
                "buyer_open_uid": trade.get("buyer_open_uid", ""),
                "seller_nick": self.config.seller_nick,
                "bill_type": "refund_bill",
                "refund_phase": "aftersale" if trade["status"] == TradeStatus.TRADE_FINISHED else "onsale",
                "modified": trade["modified"],
            },
            user_id=self.config.user_id,
            user_nick=self.config.seller_nick,
            app_key=self.app_key,
        )
        self._publish("taobao_trade_TradeClose" if all_refunded else "taobao_trade_TradePartlyRefund", trade)

    def create_trade(self, *, buyer: int | None = None, trade_type: str = "fixed") -> int:
        """A new unpaid trade created "now" by ``buyer`` (default: a returning buyer)."""
        now = max(int(self.clock().timestamp()), int(self.config.anchor.timestamp()))
        i = len(self._skeletons)
        tid = TID_BASE + i * TID_STRIDE + 1
        while tid in self._skeletons:
            tid += 1
        who = buyer if buyer is not None else i % self.config.buyers
        self._skeletons[tid] = _Skeleton(now, now, TradeStatus.WAIT_BUYER_PAY, trade_type, who, 2)
        bisect.insort(self._index, (now, tid))
        trade = self._build(tid)
        self._materialised[tid] = trade
        self._publish("taobao_trade_TradeCreate", trade)
        return tid

    def mutate_random(self, rng: random.Random) -> int:
        """Move one random trade forward (or just touch it) the way a live shop does; returns its tid."""
        tid = self._index[rng.randrange(len(self._index))][1]
        status = self._skeletons[tid].status
        if status in UNPAID:
            self.pay(tid)
        elif status == TradeStatus.WAIT_SELLER_SEND_GOODS:
            self.ship(tid)
        elif status == TradeStatus.WAIT_BUYER_CONFIRM_GOODS:
            self.finish(tid)
        elif status == TradeStatus.TRADE_FINISHED and rng.random() < 0.5:
            self.refund_line(tid)
        else:
            self.touch(tid)
        return tid

    def anchor_window(self) -> tuple[datetime, datetime]:
        """The span generated trades were modified in (useful for tests and benchmarks)."""
        return self.config.anchor - timedelta(days=self.config.days), self.config.anchor
