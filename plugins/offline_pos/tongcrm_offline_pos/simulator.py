"""A till simulator: plays a day of store traffic against a running tongcrm over HTTP.

Customers come from a fixed pool of mobiles (the same seed gives the same day): most are members looked up by
mobile, new ones are enrolled at the till, some pay part of a receipt with points, a few return goods, and some
stretches of the day are "offline": receipts are queued and uploaded later as one batch. The run is bounded by
a receipt count and by wall time, and only talks to a loopback address (it is a test tool, not a load gun).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
TZ = ZoneInfo("Asia/Shanghai")
_CATALOGUE = (
    ("SKU-TEA-01", "龙井茶 250g", "tea", 16800),
    ("SKU-CUP-02", "玻璃杯", "homeware", 3900),
    ("SKU-SOAP-03", "手工皂", "beauty", 2500),
    ("SKU-CAKE-04", "月饼礼盒", "food", 19800),
    ("SKU-BAG-05", "帆布袋", "accessories", 5900),
)


@dataclass(slots=True)
class SimReport:
    receipts: int = 0
    offline_receipts: int = 0
    lookups: int = 0
    enrolments: int = 0
    redemptions: int = 0
    returns: int = 0
    rejected: int = 0
    throttled: int = 0
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)


def require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise ValueError(f"the simulator only talks to a loopback address, not {host!r}")


def mobile_pool(size: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return [f"139{rnd.randrange(10**8):08d}" for _ in range(size)]


class Till:
    """One till's HTTP client; retries 429s after ``Retry-After`` within the run's deadline."""

    def __init__(
        self, client: httpx.AsyncClient, store: str, till: str, deadline: float, report: SimReport
    ) -> None:
        self.client = client
        self.store = store
        self.till = till
        self.deadline = deadline
        self.report = report

    async def call(self, method: str, path: str, body: Any | None = None) -> httpx.Response:
        while True:
            started = time.perf_counter()
            response = await self.client.request(method, path, json=body)
            self.report.latencies.append(time.perf_counter() - started)
            if response.status_code != 429:
                return response
            self.report.throttled += 1
            wait = float(response.headers.get("Retry-After", "1"))
            if time.monotonic() + wait > self.deadline:
                return response
            await asyncio.sleep(wait)


def sale(
    store: str, till: str, day: date, seq: int, at: datetime, member: dict[str, Any] | None, rnd: random.Random,
    points_to_use: int = 0, catalogue: Sequence[tuple[str, str, str, int]] = _CATALOGUE,
) -> dict[str, Any]:  # fmt: skip
    """One sale receipt of 1–3 lines drawn from ``catalogue`` (the demo passes its own shop's)."""
    lines: list[dict[str, Any]] = []
    for n in range(1, rnd.randint(1, 3) + 1):
        sku, title, category, price = rnd.choice(catalogue)
        qty = rnd.randint(1, 2)
        lines.append(
            {
                "line_no": n,
                "sku": sku,
                "title": title,
                "category": category,
                "quantity": qty,
                "unit_price_fen": price,
                "amount_fen": price * qty,
            }
        )
    total: int = sum(int(line["amount_fen"]) for line in lines)
    payments: list[dict[str, Any]] = []
    if points_to_use:
        fen = min(points_to_use, total // 2)  # 1 point = 1 fen off, at most half the receipt
        if fen > 0:
            payments.append({"method": "points", "amount_fen": fen, "points": fen})
    paid = sum(p["amount_fen"] for p in payments)
    payments.append({"method": rnd.choice(["wechat", "alipay", "card", "cash"]), "amount_fen": total - paid})
    body: dict[str, Any] = {
        "store": store, "till": till, "business_day": day.isoformat(), "sequence": seq,
        "occurred_at": at.isoformat(), "total_fen": total, "lines": lines, "payments": payments,
    }  # fmt: skip
    if member is not None:
        body["member"] = member
    return body


def return_of_first_line(
    original: dict[str, Any], store: str, till: str, day: date, seq: int, at: datetime
) -> dict[str, Any]:
    """A return receipt taking back the first line of ``original`` (a sale body as :func:`sale` makes it)."""
    line = original["lines"][0]
    return {
        "store": store, "till": till, "business_day": day.isoformat(), "sequence": seq,
        "occurred_at": at.isoformat(), "kind": "return", "total_fen": line["amount_fen"],
        "original": {"till": original["till"], "business_day": original["business_day"],
                     "sequence": original["sequence"]},
        "return_lines": [{"line_no": line["line_no"], "quantity": line["quantity"],
                          "amount_fen": line["amount_fen"]}],
    }  # fmt: skip


async def simulate(
    base_url: str,
    key: str,
    store: str,
    till: str,
    *,
    receipts: int = 100,
    seconds: float = 60.0,
    seed: int = 1,
    customers: int = 50,
    offline_share: float = 0.2,
    return_share: float = 0.05,
    start_sequence: int = 1,
    business_day: date | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> SimReport:
    """Play up to ``receipts`` receipts within ``seconds``; the same arguments replay the same day.

    ``customers``: the size of the pool of mobiles; ``offline_share``: receipts queued while "offline" and
    uploaded as a batch later; ``return_share``: receipts that return the first line of an earlier sale."""
    require_loopback(base_url)
    rnd = random.Random(seed)
    pool = mobile_pool(customers, seed)
    report = SimReport()
    started = time.monotonic()
    deadline = started + seconds
    day = business_day or datetime.now(TZ).date()
    opening = datetime(day.year, day.month, day.day, 10, 0, tzinfo=TZ)
    headers = {"Authorization": f"Bearer {key}"}
    queued: list[dict[str, Any]] = []
    applied: list[dict[str, Any]] = []
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=30, transport=transport
    ) as client:
        t = Till(client, store, till, deadline, report)
        for i in range(receipts):
            if time.monotonic() > deadline:
                break
            seq = start_sequence + i
            at = min(opening + timedelta(minutes=2 * i), datetime.now(UTC))
            offline = rnd.random() < offline_share
            member: dict[str, Any] | None = None
            use_points = 0
            if rnd.random() < 0.7:
                mobile = rnd.choice(pool)
                if offline:
                    member = {"mobile": mobile}
                else:
                    found = await t.call("POST", "/pos/v1/members/lookup", {"till": till, "mobile": mobile})
                    report.lookups += 1
                    if found.status_code == 404:
                        found = await t.call(
                            "POST", "/pos/v1/members",
                            {"till": till, "mobile": mobile, "consent": {"marketing": rnd.random() < 0.5,
                                                                          "proof": "till screen"}},
                        )  # fmt: skip
                        report.enrolments += 1
                    if found.status_code in (200, 201):
                        info = found.json()
                        member = {"member_id": info["member_id"]}
                        if info["points_available"] >= 200 and rnd.random() < 0.3:
                            use_points = info["points_available"] // 2
                    else:
                        report.errors.append(f"lookup {found.status_code}: {found.text[:200]}")
            if applied and not offline and rnd.random() < return_share:
                original = rnd.choice(applied)
                body = return_of_first_line(original, store, till, day, seq, at)
                applied.remove(original)
                report.returns += 1
            else:
                body = sale(store, till, day, seq, at, member, rnd, use_points)
                report.redemptions += int(use_points > 0)
            if offline:
                queued.append(body)
                report.offline_receipts += 1
                continue
            if queued:
                await _flush(t, queued, applied, report)
            response = await t.call("POST", "/pos/v1/receipts", body)
            report.receipts += 1
            if response.status_code in (200, 201):
                if body.get("kind", "sale") == "sale":
                    applied.append(body)
            elif 400 <= response.status_code < 500 and response.status_code != 429:
                report.rejected += 1
            else:
                report.errors.append(f"checkout {response.status_code}: {response.text[:200]}")
        if queued and time.monotonic() < deadline:
            await _flush(t, queued, applied, report)
    report.elapsed = time.monotonic() - started
    return report


async def _flush(
    t: Till, queued: list[dict[str, Any]], applied: list[dict[str, Any]], report: SimReport
) -> None:
    """Upload what was queued while offline, as a till does when its connection comes back."""
    body = {"receipts": list(queued), "sent_at": datetime.now(UTC).isoformat()}
    response = await t.call("POST", "/pos/v1/receipts/batch", body)
    if response.status_code != 200:
        report.errors.append(f"batch {response.status_code}: {response.text[:200]}")
        return
    for sent, result in zip(queued, response.json()["results"], strict=True):
        report.receipts += 1
        if result["status"] == "applied":
            applied.append(sent)
        else:
            report.rejected += 1
    queued.clear()
