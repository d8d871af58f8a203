"""A fake of the platform: a shop of generated orders behind the placeholder orders API.

``python -m tongcrm_example_mall.fake_server --port 8765`` serves a demo shop; tests build :class:`FakeShop` and serve
``create_app(shop)`` on 127.0.0.1 (``tongcrm.testing.servers.serve_in_thread``).
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Litestar, Request, get
from litestar.exceptions import HTTPException
from litestar.params import FromQuery

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass
class FakeShop:
    key: str
    secret: str
    orders: list[dict[str, Any]] = field(default_factory=list)
    #: answer this many requests with 503 before serving again (fault injection)
    unavailable: int = 0

    @classmethod
    def generate(
        cls, key: str, secret: str, *, count: int = 120, buyers: int = 40, seed: int = 7
    ) -> FakeShop:
        rng = random.Random(seed)
        orders = []
        for i in range(count):
            created = T0 + timedelta(minutes=17 * i)
            quantity = rng.randint(1, 3)
            price = rng.choice([1990, 5900, 12800, 29900])
            status = rng.choice(["paid", "shipped", "completed", "completed", "closed"])
            orders.append(
                {
                    "id": f"EX{100000 + i}",
                    "status": status,
                    "buyer_id": f"buyer-{rng.randint(1, buyers)}",
                    "created_at": created.isoformat(),
                    "modified_at": (created + timedelta(minutes=rng.randint(0, 600))).isoformat(),
                    "total_fen": quantity * price,
                    "paid_fen": 0 if status == "closed" else quantity * price,
                    "lines": [
                        {
                            "id": f"EX{100000 + i}-1",
                            "title": f"商品 {price}",
                            "quantity": quantity,
                            "unit_price_fen": price,
                            "amount_fen": quantity * price,
                            "sku": f"SKU-{price}",
                        }
                    ],
                }
            )
        orders.sort(key=lambda o: (o["modified_at"], o["id"]))
        return cls(key, secret, orders)

    def page(self, cursor: str, limit: int) -> dict[str, Any]:
        """Orders after ``cursor`` (an offset into the orders sorted by modification), ``limit`` at a time."""
        start = int(cursor) if cursor else 0
        chunk = self.orders[start : start + limit]
        end = start + len(chunk)
        return {"orders": chunk, "next_cursor": str(end), "has_more": end < len(self.orders)}


def create_app(shop: FakeShop) -> Litestar:
    @get("/orders", sync_to_thread=False)
    def orders(
        request: Request[Any, Any, Any], cursor: FromQuery[str] = "", limit: FromQuery[int] = 50
    ) -> dict[str, Any]:
        if (
            request.headers.get("Authorization") != f"Bearer {shop.secret}"
            or request.headers.get("X-Api-Key") != shop.key
        ):
            raise HTTPException(status_code=401, detail="bad credentials")
        if shop.unavailable > 0:
            shop.unavailable -= 1
            raise HTTPException(status_code=503, detail="try again")
        if not 1 <= limit <= 100 or (cursor and not cursor.isdigit()):
            raise HTTPException(status_code=400, detail="bad paging")
        return shop.page(cursor, limit)

    return Litestar(route_handlers=[orders], logging_config=None)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve a demo shop of the fake platform.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--key", default="demo-key")
    parser.add_argument("--secret", default="demo-secret")
    parser.add_argument("--orders", type=int, default=120)
    args = parser.parse_args()
    shop = FakeShop.generate(args.key, args.secret, count=args.orders)
    uvicorn.run(create_app(shop), host="127.0.0.1", port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
