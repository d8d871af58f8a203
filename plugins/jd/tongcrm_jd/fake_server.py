"""A protocol-faithful fake JOS gateway (``/routerjson``) for tests, demos and benchmarks, on loopback only.

It checks requests the way the platform does, in this order, and answers with real ``error_response`` shapes
(string codes, ``zh_desc``/``en_desc``): method missing (14); version missing/unsupported (4/5); app key
missing/unknown; timestamp missing/unparsable/more than six minutes off the gateway clock (7/8); signature
missing/wrong (11/12); access token unknown or revoked (19); call limit (2, injected); unknown method (15).
The app-key codes are not in any source we have (protocols.md §2.2), so :data:`CODE_MISSING_APP_KEY` and
:data:`CODE_INVALID_APP_KEY` are our guesses; everything else is from the published table.

``jingdong.pop.order.search`` answers ``jingdong_pop_order_search_responce.searchorderinfo_result`` with
``apiResult``, ``orderTotal`` and ``orderInfoList`` (only the ``optional_fields`` asked for), filtered by
``order_state`` and by modified (``dateType`` 0) or created (1) time, sorted by ``sortType``, paged with
``page``/``page_size`` (at most 100). Parameter mistakes are business failures (``apiResult.success`` false),
which is how JD reports them.

Faults are injected through :attr:`FakeJosGateway.faults`: counted ones ("the next 3 calls are call-limited")
for exact tests and seeded rates for soak tests. :attr:`FakeJosGateway.on_call` lets a test change the shop
between two calls of a sync.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Litestar, Request, Response, route

from tongcrm_jd.fake_shop import FakeShop
from tongcrm_jd.signing import PARAM_JSON, sign
from tongcrm_jd.timeutil import format_jd_time, parse_jd_time, parse_timestamp

ORDER_SEARCH = "jingdong.pop.order.search"
SUPPORTED_METHODS = frozenset({ORDER_SEARCH, "jingdong.pop.order.enSearch"})
ALL_STATES = frozenset(
    {
        "WAIT_SELLER_STOCK_OUT",
        "WAIT_GOODS_RECEIVE_CONFIRM",
        "WAIT_SELLER_DELIVERY",
        "PAUSE",
        "FINISHED_L",
        "TRADE_CANCELED",
        "LOCKED",
        "POP_ORDER_PAUSE",
    }
)
CODE_MISSING_APP_KEY = "9"  # guess, see module docstring
CODE_INVALID_APP_KEY = "10"  # guess, see module docstring
MAX_SKEW = timedelta(minutes=6)
MAX_PAGE_SIZE = 100
MAX_SPAN = timedelta(days=31)

_GATEWAY_ERRORS = {
    "2": ("限制时间内调用失败次数", "App Call Limited"),
    "4": ("缺少版本参数", "Missing Version"),
    "5": ("不支持的版本号", "Unsupported Version"),
    "7": ("缺少时间戳参数", "Missing Timestamp"),
    "8": ("非法的时间戳参数", "Invalid Timestamp"),
    CODE_MISSING_APP_KEY: ("缺少app_key参数", "Missing App Key"),
    CODE_INVALID_APP_KEY: ("无效的app_key", "Invalid App Key"),
    "11": ("缺少签名参数", "Missing Signature"),
    "12": ("无效签名", "Invalid Signature"),
    "14": ("缺少方法名参数", "Missing Method"),
    "15": ("不存在的方法名", "Invalid Method"),
    "19": ("无效access_token", "Invalid access_token"),
}


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class FaultPlan:
    """Faults to inject. Counters fire on the next calls (and count down); rates fire at random (seeded)."""

    call_limited: int = 0
    slow: int = 0
    server_errors: int = 0
    business_failures: int = 0
    call_limit_rate: float = 0.0
    slow_rate: float = 0.0
    server_error_rate: float = 0.0
    slow_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One request the gateway answered, for tests to assert on (no secrets: the sign is not kept)."""

    method: str
    business: Mapping[str, Any]
    outcome: str


@dataclass
class FakeJosGateway:
    """The gateway's state: one app, the tokens it accepts, the shop behind them, its clock and its faults."""

    shop: FakeShop
    app_key: str = "fake-app-key"
    app_secret: str = "fake-app-secret"  # noqa: S105 - the fake gateway's own test secret
    access_tokens: set[str] = field(default_factory=lambda: {"fake-access-token"})
    clock: Callable[[], datetime] = _utcnow
    seed: int = 0
    faults: FaultPlan = field(default_factory=FaultPlan)
    on_call: Callable[[int], None] | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    calls: list[CallRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def revoke(self, token: str) -> None:
        self.access_tokens.discard(token)

    # -- request handling ------------------------------------------------------------------------------------

    async def handle(self, params: Mapping[str, str]) -> tuple[int, bytes]:
        """Answer one request given its merged query/form parameters: ``(http_status, body)``."""
        if self.on_call is not None:
            self.on_call(len(self.calls) + 1)
        method = params.get("method", "")
        try:
            business = self._check(params)
            fault = self._fault()
            if fault == "slow":
                await self.sleep(self.faults.slow_seconds)
            elif fault == "server_error":
                self.calls.append(CallRecord(method, business, "http_502"))
                return 502, b"<html><body>502 Bad Gateway</body></html>"
            elif fault == "call_limited":
                raise _GatewayError("2")
            elif fault == "business":
                self.calls.append(CallRecord(method, business, "business_failure"))
                return 200, _dump(_business_failure(method, "系统繁忙,请稍后重试", "system busy", 10100099))
            body = self._dispatch(method, business)
        except _GatewayError as exc:
            self.calls.append(CallRecord(method, {}, f"error_{exc.code}"))
            zh, en = _GATEWAY_ERRORS[exc.code]
            return 200, _dump({"error_response": {"code": exc.code, "zh_desc": zh, "en_desc": en}})
        self.calls.append(CallRecord(method, business, "ok"))
        return 200, _dump(body)

    def _check(self, params: Mapping[str, str]) -> dict[str, Any]:
        if not params.get("method"):
            raise _GatewayError("14")
        if not params.get("v"):
            raise _GatewayError("4")
        if params["v"] != "2.0":
            raise _GatewayError("5")
        if not params.get("app_key"):
            raise _GatewayError(CODE_MISSING_APP_KEY)
        if params["app_key"] != self.app_key:
            raise _GatewayError(CODE_INVALID_APP_KEY)
        if not params.get("timestamp"):
            raise _GatewayError("7")
        try:
            sent = parse_timestamp(params["timestamp"])
        except ValueError:
            raise _GatewayError("8") from None
        if abs(sent - self.clock()) > MAX_SKEW:
            raise _GatewayError("8")
        if not params.get("sign"):
            raise _GatewayError("11")
        if params["sign"].upper() != sign(params, self.app_secret):
            raise _GatewayError("12")
        if params.get("access_token", "") not in self.access_tokens:
            raise _GatewayError("19")
        if params["method"] not in SUPPORTED_METHODS:
            raise _GatewayError("15")
        try:
            business = json.loads(params.get(PARAM_JSON) or "{}")
        except ValueError:
            business = None
        return business if isinstance(business, dict) else {"__invalid__": True}

    def _fault(self) -> str | None:
        faults = self.faults
        for name in ("call_limited", "slow", "server_errors", "business_failures"):
            if getattr(faults, name) > 0:
                setattr(faults, name, getattr(faults, name) - 1)
                return {"server_errors": "server_error", "business_failures": "business"}.get(name, name)
        roll = self._rng.random()
        if roll < faults.call_limit_rate:
            return "call_limited"
        roll -= faults.call_limit_rate
        if roll < faults.slow_rate:
            return "slow"
        roll -= faults.slow_rate
        if roll < faults.server_error_rate:
            return "server_error"
        return None

    def _dispatch(self, method: str, business: Mapping[str, Any]) -> dict[str, Any]:
        if business.get("__invalid__"):
            return _business_failure(
                method, "360buy_param_json格式错误", "invalid 360buy_param_json", 10100001
            )
        return self.order_search(method, business)

    # -- jingdong.pop.order.search ------------------------------------------------------------------------

    def order_search(self, method: str, business: Mapping[str, Any]) -> dict[str, Any]:
        """The search itself, given the decoded business parameters."""
        problem = _validate_search(business)
        if problem is not None:
            return _business_failure(method, problem[0], problem[1], 10100001)
        states = frozenset(str(business["order_state"]).split(","))
        start, end = _text(business.get("start_date")), _text(business.get("end_date"))
        if start is None and end is None:
            now = self.clock()
            start = _jd(now - timedelta(days=30))
            end = _jd(now)
        page, page_size = int(business.get("page") or 1), int(business.get("page_size") or 20)
        ids = self.shop.search(
            by_created=str(business.get("dateType", "0")) == "1",
            start=start,
            end=end,
            states=states,
            descending=str(business.get("sortType", "")) == "1",
        )
        fields = [f.strip() for f in str(business["optional_fields"]).split(",") if f.strip()]
        chosen = ids[(page - 1) * page_size : page * page_size]
        orders = [_project(self.shop.get(order_id), fields) for order_id in chosen]
        result = {
            "apiResult": {
                "success": True,
                "englishErrCode": "success",
                "chineseErrCode": "成功",
                "numberCode": 0,
            },
            "orderTotal": len(ids),
            "orderInfoList": orders,
        }
        return {_response_key(method): {"code": "0", "searchorderinfo_result": result}}


class _GatewayError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _response_key(method: str) -> str:
    return method.replace(".", "_") + "_responce"


def _business_failure(method: str, chinese: str, english: str, number: int) -> dict[str, Any]:
    api_result = {
        "success": False,
        "chineseErrCode": chinese,
        "englishErrCode": english,
        "numberCode": number,
    }
    return {_response_key(method): {"code": "0", "searchorderinfo_result": {"apiResult": api_result}}}


def _text(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


def _jd(value: datetime) -> str:
    return format_jd_time(value)


def _project(record: Mapping[str, Any], fields: list[str]) -> dict[str, Any]:
    return {name: record[name] for name in fields if name in record}


def _validate_search(business: Mapping[str, Any]) -> tuple[str, str] | None:
    """JD's documented parameter rules (protocols.md §2.3); ``None`` when the request is acceptable."""
    states = _text(business.get("order_state"))
    if states is None:
        return "order_state不能为空", "order_state is required"
    if not set(states.split(",")) <= ALL_STATES:
        return "order_state参数错误", "invalid order_state"
    if _text(business.get("optional_fields")) is None:
        return "optional_fields不能为空", "optional_fields is required"
    for name, limit in (("page", 10**6), ("page_size", MAX_PAGE_SIZE)):
        raw = business.get(name)
        if raw is not None and (not str(raw).isdigit() or not 1 <= int(str(raw)) <= limit):
            return f"{name}参数错误", f"invalid {name}"
    start, end = _text(business.get("start_date")), _text(business.get("end_date"))
    if start is None and end is None:
        return (
            None
            if states == "WAIT_SELLER_STOCK_OUT"
            else ("时间不能为空", "start_date and end_date required")
        )
    if start is None or end is None:
        return "时间不能为空", "start_date and end_date required"
    try:
        begin, finish = parse_jd_time(start), parse_jd_time(end)
    except ValueError:
        return "时间格式错误", "invalid date format"
    if finish < begin or finish - begin > MAX_SPAN:
        return "时间跨度不能超过一个月", "date span must be within one month"
    return None


def _dump(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def create_app(gateway: FakeJosGateway, path: str = "/routerjson") -> Litestar:
    """A litestar app serving ``gateway`` at ``path`` (GET or POST; query string and form body both read)."""

    @route(path, http_method=["GET", "POST"])
    async def router(request: Request[Any, Any, Any]) -> Response[bytes]:
        params: dict[str, str] = dict(request.query_params)
        if request.method == "POST" and "form" in request.headers.get("content-type", ""):
            form = await request.form()
            params.update({key: str(value) for key, value in form.items()})
        status, body = await gateway.handle(params)
        return Response(content=body, status_code=status, media_type="application/json;charset=utf-8")

    return Litestar(route_handlers=[router], openapi_config=None, debug=False)
