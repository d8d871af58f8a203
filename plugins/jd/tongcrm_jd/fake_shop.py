"""The data behind the fake JOS gateway: a JD shop's orders, indexed the way ``pop.order.search`` asks.

Records are kept exactly as the gateway returns them (``OrderSearchInfo`` with string fields), so what the
fake serves is what the adapter must cope with. Two sorted indexes, by ``modified`` and by
``orderStartTime``, make a time-window query a pair of binary searches, which is what lets the fake serve a
100,000-order shop to a benchmark. JD times (``yyyy-MM-dd HH:mm:ss``) sort correctly as strings, so the
indexes hold the strings.

:func:`generate_shop` builds a deterministic shop from a seed: returning buyers, multi-line orders, every
order state, cancellations before and after payment, cash-on-delivery orders, legacy buyers that have only a
pin, and consignee data that is mostly masked, sometimes encrypted and sometimes plain.
"""

from __future__ import annotations

import bisect
import copy
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tongcrm_jd.timeutil import format_jd_time

Record = dict[str, Any]
_Key = tuple[str, int]


def _key(time_text: str, order_id: str) -> _Key:
    return (time_text, int(order_id))


class FakeShop:
    """A shop's orders with the two indexes the search needs. Mutate it only through its methods."""

    def __init__(self, vender_id: str = "10086") -> None:
        self.vender_id = vender_id
        self._orders: dict[str, Record] = {}
        self._by_modified: list[_Key] = []
        self._by_created: list[_Key] = []

    def __len__(self) -> int:
        return len(self._orders)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._orders.values())

    def get(self, order_id: str) -> Record:
        """A copy of the stored record (tests must not mutate the shop behind the indexes' back)."""
        return copy.deepcopy(self._orders[order_id])

    def snapshot(self) -> dict[str, Record]:
        return {order_id: copy.deepcopy(record) for order_id, record in self._orders.items()}

    def add(self, record: Mapping[str, Any]) -> None:
        order_id = str(record["orderId"])
        if order_id in self._orders:
            raise ValueError(f"order {order_id} already exists")
        stored = dict(record)
        self._orders[order_id] = stored
        bisect.insort(self._by_modified, _key(stored["modified"], order_id))
        bisect.insort(self._by_created, _key(stored["orderStartTime"], order_id))

    def bulk_load(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add many records and sort the indexes once (what makes generating 100,000 orders quick)."""
        for record in records:
            order_id = str(record["orderId"])
            if order_id in self._orders:
                raise ValueError(f"order {order_id} already exists")
            self._orders[order_id] = dict(record)
        self._by_modified = sorted(_key(r["modified"], i) for i, r in self._orders.items())
        self._by_created = sorted(_key(r["orderStartTime"], i) for i, r in self._orders.items())

    def modify(self, order_id: str, at: datetime, *, state: str | None = None, **changes: Any) -> Record:
        """Change an order as the platform would: apply ``changes``, set ``orderState``, bump ``modified``."""
        record = self._orders[order_id]
        old = _key(record["modified"], order_id)
        del self._by_modified[bisect.bisect_left(self._by_modified, old)]
        record.update(changes)
        if state is not None:
            record["orderState"] = state
        record["modified"] = format_jd_time(at)
        bisect.insort(self._by_modified, _key(record["modified"], order_id))
        return copy.deepcopy(record)

    def ship(self, order_id: str, at: datetime, *, waybill: str | None = None) -> Record:
        """The seller ships the order: it waits for the buyer's confirmation and carries a waybill and the
        carrier's ``logisticsId``, as ``pop.order.search`` reports them."""
        number = waybill or f"JDV{int(order_id) % 10**12:012d}"
        return self.modify(
            order_id,
            at,
            state="WAIT_GOODS_RECEIVE_CONFIRM",
            waybill=number,
            logisticsId=logistics_id(number),
        )

    def search(
        self,
        *,
        by_created: bool,
        start: str | None,
        end: str | None,
        states: frozenset[str],
        descending: bool,
    ) -> list[str]:
        """Ids in ``[start, end]`` (inclusive, whole seconds) of the chosen time, in the requested order."""
        index = self._by_created if by_created else self._by_modified
        lo = 0 if start is None else bisect.bisect_left(index, (start, -1))
        hi = len(index) if end is None else bisect.bisect_right(index, (end, 2**63))
        orders = self._orders
        ids = [str(oid) for _, oid in index[lo:hi] if orders[str(oid)]["orderState"] in states]
        if descending:
            ids.reverse()
        return ids


# ------------------------------------------------------------------------------------------------------------
# generation


@dataclass(frozen=True, slots=True)
class _Buyer:
    pin: str
    open_id: str | None


@dataclass(frozen=True, slots=True)
class _Sku:
    sku_id: str
    ware_id: str
    outer: str
    name: str
    price_fen: int


#: ``logisticsId`` values of the carriers the generated shop ships with (opaque platform ids).
LOGISTICS_IDS: tuple[str, ...] = ("2087", "463", "467", "1327")


def logistics_id(waybill: str) -> str:
    """The carrier id that goes with a generated waybill: derived from the number, so the generator's random
    stream (and every other generated field) is unchanged by it."""
    return LOGISTICS_IDS[sum(map(ord, waybill)) % len(LOGISTICS_IDS)]


def yuan(fen: int) -> str:
    """Integer fen → JD's yuan string (``1990`` → ``"19.90"``)."""
    return f"{fen // 100}.{fen % 100:02d}"


_PROVINCES = (
    ("北京", "北京市"),
    ("上海", "上海市"),
    ("广东", "深圳市"),
    ("浙江", "杭州市"),
    ("四川", "成都市"),
)


def _consignee(rng: random.Random) -> Record:
    digits = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
    roll = rng.random()
    if roll < 0.2:
        mobile = digits
    elif roll < 0.3:
        mobile = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789+/") for _ in range(44))
    else:
        mobile = f"{digits[:3]}****{digits[-4:]}"
    province, city = rng.choice(_PROVINCES)
    return {
        "fullname": rng.choice("张王李赵刘陈") + "**",
        "mobile": mobile,
        "telephone": "",
        "province": province,
        "city": city,
        "county": "",
        "fullAddress": f"{province}{city}****",
    }


def _lines(rng: random.Random, catalogue: list[_Sku]) -> list[tuple[_Sku, int]]:
    count = 1 + (rng.random() < 0.35) + (rng.random() < 0.15) + (rng.random() < 0.05)
    lines = [(rng.choice(catalogue), rng.choice((1, 1, 1, 2, 3))) for _ in range(count)]
    if rng.random() < 0.03:  # a gift line repeating a sku of the same order
        lines.append((lines[0][0], 1))
    return lines


def _order(
    rng: random.Random, order_id: int, created: datetime, now: datetime, buyer: _Buyer, catalogue: list[_Sku]
) -> Record:
    lines = _lines(rng, catalogue)
    goods = sum(sku.price_fen * qty for sku, qty in lines)
    discount = rng.choice((0, 0, 0, 500, 1000)) if goods > 3000 else 0
    freight = 0 if goods >= 9900 else 600
    payment = goods - discount + freight
    cod = rng.random() < 0.05
    paid_at: datetime | None = None if cod else created + timedelta(seconds=rng.randint(5, 900))
    age = now - created
    end_at: datetime | None = None
    waybill = ""
    roll = rng.random()
    if roll < 0.04:
        state, paid_at = "TRADE_CANCELED", None
        modified = created + timedelta(minutes=rng.randint(1, 60))
        end_at = modified
    elif roll < 0.08 and paid_at is not None:
        state = "TRADE_CANCELED"
        modified = paid_at + timedelta(hours=rng.randint(1, 20))
        end_at = modified
    elif roll < 0.10:
        state = rng.choice(("LOCKED", "PAUSE", "POP_ORDER_PAUSE"))
        modified = created + timedelta(hours=rng.randint(1, 30))
        if rng.random() < 0.5:
            waybill = f"JDV{rng.randrange(10**12):012d}"
    elif age < timedelta(days=1):
        state = "WAIT_SELLER_STOCK_OUT" if rng.random() < 0.95 else "WAIT_SELLER_DELIVERY"
        modified = paid_at or created
    elif age < timedelta(days=7):
        state = "WAIT_GOODS_RECEIVE_CONFIRM"
        modified = created + timedelta(hours=rng.randint(2, 24))
        waybill = f"JDV{rng.randrange(10**12):012d}"
    else:
        state = "FINISHED_L"
        end_at = modified = created + timedelta(days=rng.randint(2, 6), seconds=rng.randint(0, 86399))
        waybill = f"JDV{rng.randrange(10**12):012d}"
        if paid_at is None:  # cash on delivery: paid when delivered
            paid_at = end_at - timedelta(hours=1)
    modified = min(modified, now)
    if end_at is not None:
        end_at = min(end_at, modified)
    return {
        "orderId": str(order_id),
        "venderId": "10086",
        "orderType": "22",
        "payType": "1" if cod else "4",
        "orderState": state,
        "orderStateRemark": "",
        "orderTotalPrice": yuan(goods),
        "orderSellerPrice": yuan(goods - discount),
        "orderPayment": yuan(payment),
        "freightPrice": yuan(freight),
        "sellerDiscount": yuan(discount),
        "balanceUsed": "0.00",
        "orderStartTime": format_jd_time(created),
        "orderEndTime": format_jd_time(end_at) if end_at else "",
        "paymentConfirmTime": format_jd_time(paid_at) if paid_at else "",
        "modified": format_jd_time(modified),
        "pin": buyer.pin,
        "open_id_buyer": buyer.open_id or "",
        "xid_buyer": "",
        "consigneeInfo": _consignee(rng),
        "itemInfoList": [
            {
                "skuId": sku.sku_id,
                "outerSkuId": sku.outer,
                "skuName": sku.name,
                "jdPrice": yuan(sku.price_fen),
                "itemTotal": str(qty),
                "wareId": sku.ware_id,
                "giftPoint": "0",
            }
            for sku, qty in lines
        ],
        "waybill": waybill,
        "logisticsId": logistics_id(waybill) if waybill else "",
        "storeId": "0",
        "orderRemark": "",
        "venderRemark": "",
    }


def generate_shop(
    *,
    seed: int,
    orders: int,
    buyers: int,
    start: datetime,
    end: datetime,
    legacy_share: float = 0.1,
    first_order_id: int = 280_000_000_000,
) -> FakeShop:
    """A deterministic shop of ``orders`` orders by ``buyers`` buyers, created between ``start`` and ``end``.

    Buyers are drawn with a skew (``random() ** 2``) so that a few come back often. ``legacy_share`` of the
    buyers have no ``open_id_buyer``. Order states follow the order's age at ``end`` (recent ones await
    shipment, older ones are finished), with cancellations and holds mixed in at every age.
    """
    if orders < 0 or buyers < 1 or end <= start:
        raise ValueError("need buyers >= 1, orders >= 0 and start < end")
    rng = random.Random(seed)
    catalogue = [
        _Sku(
            str(100_012_000_000 + k), str(10_000 + k), f"SKU-{k:04d}", f"商品 {k} 号", rng.randint(99, 59_900)
        )
        for k in range(60)
    ]
    population = [
        _Buyer(
            pin=f"jd_{rng.getrandbits(48):012x}",
            open_id=None if rng.random() < legacy_share else f"{rng.getrandbits(128):032x}",
        )
        for _ in range(buyers)
    ]
    span = (end - start).total_seconds()
    offsets = sorted(rng.uniform(0, span) for _ in range(orders))
    shop = FakeShop()
    shop.bulk_load(
        _order(
            rng,
            first_order_id + n,
            start + timedelta(seconds=int(offset)),
            end,
            population[int(buyers * rng.random() ** 2)],
            catalogue,
        )
        for n, offset in enumerate(offsets)
    )
    return shop
