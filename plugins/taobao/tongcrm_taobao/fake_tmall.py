"""A fake Tmall calling the brand's 会员通 SPIs: signs calls like the platform and retries like flight mode."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from tongcrm_taobao.signing import parse_sign_method, sign
from tongcrm_taobao.timefmt import format_top_time

SPI_PATHS = {
    "tmall.mei.crm.member.bind.query": "member/bind-query",
    "tmall.mei.crm.bind": "member/bind",
    "tmall.mei.crm.member.register": "member/register",
}


class FakeTmall:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        account: str,
        app_key: str,
        app_secret: str,
        sign_method: str = "md5",
    ) -> None:
        self.client = client
        self.account = account
        self.app_key = app_key
        self.app_secret = app_secret
        self.sign_method = sign_method

    def signed(
        self, method: str, business: Mapping[str, str], *, at: datetime | None = None
    ) -> dict[str, str]:
        params = {
            "method": method,
            "app_key": self.app_key,
            "timestamp": format_top_time(at or datetime.now(UTC)),
            "sign_method": self.sign_method,
            "v": "2.0",
            **business,
        }
        params["sign"] = sign(params, self.app_secret, parse_sign_method(self.sign_method))
        return params

    async def call(self, method: str, business: Mapping[str, str], **kw: Any) -> dict[str, Any]:
        """Sign and send one SPI call; the brand's answer (``query_code`` or TOP's ``error_response``)."""
        return await self.send(method, self.signed(method, business, **kw))

    async def send(self, method: str, params: Mapping[str, str]) -> dict[str, Any]:
        """Send parameters as they are (already signed, tampered with, or captured and sent again)."""
        path = f"/callbacks/taobao/{self.account}/{SPI_PATHS[method]}"
        response = await self.client.post(path, data=dict(params))
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body
