"""The channel adapter: pages of the platform's orders, normalised for tongcrm.

The placeholder platform API (``GET {gateway_url}/orders?cursor=&limit=`` with a bearer secret) is what
``fake_server`` serves; replace both with your platform's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
from tongcrm.plugin.errors import ChannelAuthError, ChannelRequestError, ChannelUnavailable
from tongcrm.plugin.types import (
    ChannelContext,
    IdentityClaim,
    NormalisedOrder,
    OrderLine,
    OrderPage,
    OrderStatus,
    QuarantinedRecord,
)

STATUSES = {
    "created": OrderStatus.CREATED,
    "paid": OrderStatus.PAID,
    "shipped": OrderStatus.SHIPPED,
    "completed": OrderStatus.COMPLETED,
    "closed": OrderStatus.CLOSED,
    "refunded": OrderStatus.REFUNDED,
}


class Adapter:
    """One channel account's view of the platform. Never keeps or logs the secret beyond its HTTP client."""

    def __init__(self, base_url: str, key: str, secret: str, *, page_size: int = 50) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {secret}", "X-Api-Key": key},
            timeout=10.0,
        )
        self.page_size = page_size

    def __repr__(self) -> str:
        return f"Adapter(base_url={str(self._http.base_url)!r})"

    async def fetch_orders(self, cursor: str | None) -> OrderPage:
        try:
            response = await self._http.get(
                "/orders", params={"cursor": cursor or "", "limit": self.page_size}
            )
        except httpx.HTTPError as exc:
            raise ChannelUnavailable(f"platform unreachable: {type(exc).__name__}") from None
        if response.status_code == 401:
            raise ChannelAuthError("the platform refused the account's credentials", code="401")
        if response.status_code == 429 or response.status_code >= 500:
            retry = response.headers.get("Retry-After")
            raise ChannelUnavailable(
                f"platform answered {response.status_code}",
                code=str(response.status_code),
                retry_after=float(retry) if retry else None,
            )
        if response.status_code != 200:
            raise ChannelRequestError(
                f"platform answered {response.status_code}", code=str(response.status_code)
            )
        body = response.json()
        orders: list[NormalisedOrder] = []
        quarantined: list[QuarantinedRecord] = []
        for record in body["orders"]:
            try:
                orders.append(normalise(record))
            except (KeyError, ValueError, TypeError) as exc:
                quarantined.append(
                    QuarantinedRecord(str(record.get("id")), f"{type(exc).__name__}: {exc}", repr(record))
                )
        return OrderPage(
            orders=tuple(orders),
            next_cursor=body["next_cursor"],
            has_more=body["has_more"],
            quarantined=tuple(quarantined),
        )

    async def aclose(self) -> None:
        await self._http.aclose()


def normalise(record: dict[str, Any]) -> NormalisedOrder:
    """One platform order → tongcrm's record. Money is integer fen; times carry their offset."""
    lines = tuple(
        OrderLine(
            external_id=str(line["id"]),
            title=line["title"],
            quantity=int(line["quantity"]),
            unit_price_fen=int(line["unit_price_fen"]),
            amount_fen=int(line["amount_fen"]),
            sku=line.get("sku"),
        )
        for line in record["lines"]
    )
    claims = (IdentityClaim("example_mall.buyer_id", record["buyer_id"]),) if record.get("buyer_id") else ()
    return NormalisedOrder(
        external_id=str(record["id"]),
        status=STATUSES[record["status"]],
        created_at=datetime.fromisoformat(record["created_at"]),
        modified_at=datetime.fromisoformat(record["modified_at"]),
        total_fen=int(record["total_fen"]),
        paid_fen=int(record["paid_fen"]),
        claims=claims,
        lines=lines,
        platform_status=record["status"],
    )


def adapter_from_context(context: ChannelContext) -> Adapter:
    """The ``ChannelSpec.factory``: settings (secrets decrypted by the core) → adapter."""
    settings = context.settings
    return Adapter(
        settings.get("gateway_url") or "https://api.example.com",
        settings["api_key"],
        settings["api_secret"],
        page_size=int(settings.get("page_size") or 50),
    )
