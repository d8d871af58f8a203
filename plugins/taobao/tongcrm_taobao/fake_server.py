"""A protocol-faithful fake TOP gateway, as a litestar (ASGI) app.

It checks what the real gateway checks, in the same order and with the same ``error_response`` shapes
(protocols.md §1.3): method, app key, call-limit ban, signature (md5, hmac, hmac-sha256), timestamp skew
(±10 minutes), version and session; then the business arguments (codes 40/41). It serves a generated
:class:`~tongcrm_taobao.fake_shop.FakeShop` through ``taobao.trades.sold.increment.get`` (inclusive modified
window, newest modified first, ``has_next`` or ``total_results``, the default ``type`` filter),
``taobao.trade.fullinfo.get`` and the TMC polling APIs. ``tid``/``oid`` go out as JSON numbers beyond 2^53,
with ``tid_str``/``oid_str`` beside them, exactly as the platform sends them.

Faults (:class:`FaultPlan`) can be scheduled ("the next call fails like this") or drawn at random from a
seeded generator: call limits with a real ban that lasts ``ban_seconds`` on the gateway's wall clock,
``isp.*`` errors, slow answers, an expired session, and trades modified while a sync walks past them.

Deliberate simplifications: JSON only (``format=xml`` is refused), no ``simplify=true``, one TMC queue for all
groups, and the list API leaves out the presale fields ``step_trade_status``/``step_paid_fee`` (only
``fullinfo`` has them), which is how the adapter's fullinfo fallback gets exercised.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from litestar import Litestar, Request, Response, route

from tongcrm_taobao.fake_shop import DEFAULT_TYPES, FakeShop, ShopConfig
from tongcrm_taobao.signing import SIGN_METHODS, parse_sign_method, sign
from tongcrm_taobao.timefmt import parse_top_time

__all__ = ["FAULTS", "FakeTopGateway", "FaultPlan", "create_app"]

FAULTS = ("call_limit", "isp", "slow", "invalid_session", "modify")
LIST_ONLY_OMITTED = frozenset({"step_trade_status", "step_paid_fee"})
MAX_SKEW_SECONDS = 600
_ISP = (
    (15, "Remote service error", "isp.top-remote-connection-timeout", "远程服务调用超时"),
    (15, "Remote service error", "isp.remote-service-error", "后端服务错误"),
    (10, "Service currently unavailable", "isp.top-remote-unknown-error", "服务暂时不可用"),
)
_SESSION_APIS = frozenset({"taobao.trades.sold.increment.get", "taobao.trade.fullinfo.get"})
_APP_APIS = frozenset({"taobao.tmc.messages.consume", "taobao.tmc.messages.confirm"})


@dataclass(slots=True)
class FaultPlan:
    """Which faults the gateway injects. Scheduled faults fire first, one per call, in order."""

    call_limit: float = 0.0
    isp: float = 0.0
    slow: float = 0.0
    invalid_session: float = 0.0
    modify: float = 0.0  # a random trade moves on (and its window may already have passed)
    ban_seconds: int = 3
    slow_seconds: float = 0.5
    seed: int = 7
    schedule: deque[str] = field(default_factory=deque)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def next_fault(self) -> str | None:
        if self.schedule:
            fault = self.schedule.popleft()
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}")
            return fault
        roll = self._rng.random()
        for name in FAULTS:
            chance: float = getattr(self, name)
            if roll < chance:
                return name
            roll -= chance
        return None

    @property
    def rng(self) -> random.Random:
        return self._rng


class _Answer(Exception):
    """Short-circuits request handling with an ``error_response``."""

    def __init__(self, code: int, msg: str, sub_code: str = "", sub_msg: str = "") -> None:
        super().__init__(msg)
        body: dict[str, Any] = {"code": code, "msg": msg}
        if sub_code:
            body["sub_code"] = sub_code
        if sub_msg:
            body["sub_msg"] = sub_msg
        self.body = body


def _wall() -> datetime:
    return datetime.now(UTC)


class FakeTopGateway:
    """State of one fake gateway: the shop, the app's credentials, faults, and counters for assertions."""

    def __init__(
        self,
        shop: FakeShop | None = None,
        *,
        app_key: str = "12345678",
        app_secret: str = "helloworld",  # noqa: S107 - the published test secret
        session: str = "fake-session",
        faults: FaultPlan | None = None,
        wall_clock: Callable[[], datetime] = _wall,
    ) -> None:
        self.shop = shop or FakeShop(ShopConfig(), app_key=app_key)
        self.app_key = app_key
        self.app_secret = app_secret
        self.session = session
        self.faults = faults or FaultPlan()
        self.wall_clock = wall_clock
        self.banned_until = 0.0
        self.calls: Counter[str] = Counter()
        self.errors: Counter[int] = Counter()
        self.faults_fired: Counter[str] = Counter()
        self.modified_by_faults: list[int] = []
        self._requests = 0

    # ---------------------------------------------------------------------------------------------- plumbing

    def _request_id(self) -> str:
        self._requests += 1
        return f"{self._requests:x}fk{self._requests * 7919 % 1000:03d}"

    async def handle(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Answer one request's parameters with the JSON body the gateway would send."""
        request_id = self._request_id()
        try:
            method, body = await self._dispatch(params)
        except _Answer as answer:
            self.errors[int(answer.body["code"])] += 1
            return {"error_response": {**answer.body, "request_id": request_id}}
        body["request_id"] = request_id
        return {method.removeprefix("taobao.").replace(".", "_") + "_response": body}

    async def _dispatch(self, params: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
        method = params.get("method", "")
        if not method:
            raise _Answer(21, "Missing method")
        if method not in _SESSION_APIS | _APP_APIS:
            raise _Answer(22, "Invalid method")
        self.calls[method] += 1
        self._check_app(params)
        fault = self.faults.next_fault()
        if fault:
            self.faults_fired[fault] += 1
        if fault == "call_limit":
            self.banned_until = self.wall_clock().timestamp() + self.faults.ban_seconds
        self._check_ban()
        self._check_signature(params)
        self._check_system(params)
        if method in _SESSION_APIS:
            self._check_session(params, expired=fault == "invalid_session")
        if fault == "isp":
            code, msg, sub_code, sub_msg = _ISP[self.faults.rng.randrange(len(_ISP))]
            raise _Answer(code, msg, sub_code, sub_msg)
        if fault == "slow":
            await asyncio.sleep(self.faults.slow_seconds)
        if fault == "modify" and len(self.shop):
            self.modified_by_faults.append(self.shop.mutate_random(self.faults.rng))
        handler = {
            "taobao.trades.sold.increment.get": self._increment,
            "taobao.trade.fullinfo.get": self._fullinfo,
            "taobao.tmc.messages.consume": self._consume,
            "taobao.tmc.messages.confirm": self._confirm,
        }[method]
        return method, handler(params)

    def _check_app(self, params: Mapping[str, str]) -> None:
        app_key = params.get("app_key", "")
        if not app_key:
            raise _Answer(28, "Missing app key")
        if app_key != self.app_key:
            raise _Answer(29, "Invalid app Key")

    def _check_ban(self) -> None:
        remaining = self.banned_until - self.wall_clock().timestamp()
        if remaining > 0:
            raise _Answer(
                7,
                "App Call Limited",
                "accesscontrol.limited-by-app-access-count",
                f"This ban will last for {math.ceil(remaining)} more seconds",
            )

    def _check_signature(self, params: Mapping[str, str]) -> None:
        given = params.get("sign", "")
        if not given:
            raise _Answer(24, "Missing signature")
        raw_method = params.get("sign_method") or "md5"
        if raw_method not in SIGN_METHODS:
            raise _Answer(25, "Invalid signature", sub_msg=f"unsupported sign_method {raw_method}")
        expected = sign(params, self.app_secret, parse_sign_method(raw_method))
        if given.upper() != expected:
            raise _Answer(25, "Invalid signature")

    def _check_system(self, params: Mapping[str, str]) -> None:
        stamp = params.get("timestamp", "")
        if not stamp:
            raise _Answer(30, "Missing timestamp")
        try:
            sent = parse_top_time(stamp)
        except ValueError:
            raise _Answer(
                31, "Invalid timestamp", sub_msg="timestamp format must be yyyy-MM-dd HH:mm:ss"
            ) from None
        if abs((self.wall_clock() - sent).total_seconds()) > MAX_SKEW_SECONDS:
            raise _Answer(31, "Invalid timestamp", sub_msg="timestamp is more than 10 minutes off")
        if not params.get("v"):
            raise _Answer(32, "Missing version")
        if params["v"] != "2.0":
            raise _Answer(34, "Unsupported version")
        if params.get("format", "xml") != "json":
            raise _Answer(23, "Invalid format", sub_msg="this fake gateway answers format=json only")

    def _check_session(self, params: Mapping[str, str], *, expired: bool) -> None:
        session = params.get("session", "")
        if not session:
            raise _Answer(26, "Missing session")
        if expired:
            raise _Answer(27, "Invalid session:session-expired", "session-expired", "SessionKey已过期")
        if session != self.session:
            raise _Answer(27, "Invalid session", "invalid-sessionkey", "SessionKey非法")

    # ----------------------------------------------------------------------------------------------- methods

    @staticmethod
    def _required(params: Mapping[str, str], *names: str) -> None:
        for name in names:
            if not params.get(name):
                raise _Answer(40, f"Missing required arguments:{name}")

    @staticmethod
    def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
        raw = params.get(name)
        if not raw:
            return default
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise _Answer(41, f"Invalid arguments:{name}")
        return int(raw)

    @staticmethod
    def _time(params: Mapping[str, str], name: str) -> int:
        try:
            return int(parse_top_time(params[name]).timestamp())
        except ValueError:
            raise _Answer(41, f"Invalid arguments:{name}") from None

    @staticmethod
    def _fields(params: Mapping[str, str]) -> frozenset[str]:
        return frozenset(f.strip() for f in params["fields"].split(",") if f.strip())

    @staticmethod
    def _project(
        trade: dict[str, Any], fields: frozenset[str], omit: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        return {k: v for k, v in trade.items() if k in fields and k not in omit}

    def _increment(self, params: Mapping[str, str]) -> dict[str, Any]:
        self._required(params, "fields", "start_modified", "end_modified")
        start, end = self._time(params, "start_modified"), self._time(params, "end_modified")
        if start > end:
            raise _Answer(
                15,
                "Remote service error",
                "isv.invalid-parameter",
                "start_modified must not be after end_modified",
            )
        if end - start > 86400:
            raise _Answer(
                15, "Remote service error", "isv.invalid-parameter", "modified span must not exceed one day"
            )
        page_no = self._int(params, "page_no", 1, 1, 1_000_000)
        page_size = self._int(params, "page_size", 40, 1, 100)
        types = (
            frozenset(t.strip() for t in params["type"].split(",")) if params.get("type") else DEFAULT_TYPES
        )
        tids = self.shop.window(start, end, types=types, status=params.get("status") or None)
        chunk = tids[(page_no - 1) * page_size : page_no * page_size]
        fields = self._fields(params)
        body: dict[str, Any] = {}
        if chunk:
            trades = [self._project(self.shop.trade(tid), fields, LIST_ONLY_OMITTED) for tid in chunk]
            body["trades"] = {"trade": trades}
        if params.get("use_has_next") == "true":
            body["has_next"] = page_no * page_size < len(tids)
        else:
            body["total_results"] = len(tids)
        return body

    def _fullinfo(self, params: Mapping[str, str]) -> dict[str, Any]:
        self._required(params, "fields", "tid")
        raw = params["tid"]
        if not raw.isdigit():
            raise _Answer(41, "Invalid arguments:tid")
        try:
            trade = self.shop.trade(int(raw))
        except KeyError:
            raise _Answer(15, "Remote service error", "isv.trade-not-exist", f"交易{raw}不存在") from None
        return {"trade": self._project(trade, self._fields(params))}

    def _consume(self, params: Mapping[str, str]) -> dict[str, Any]:
        if "group_name" in params and not params["group_name"].strip():
            raise _Answer(41, "Invalid arguments:group_name")
        quantity = self._int(params, "quantity", 100, 10, 200)
        messages = self.shop.tmc.consume(quantity)
        return {"messages": {"tmc_message": messages}} if messages else {}

    def _confirm(self, params: Mapping[str, str]) -> dict[str, Any]:
        self._required(params, "s_message_ids")
        ids = [part.strip() for part in params["s_message_ids"].split(",") if part.strip()]
        if len(ids) > 200 or not all(part.isdigit() for part in ids):
            raise _Answer(41, "Invalid arguments:s_message_ids")
        self.shop.tmc.confirm(int(part) for part in ids)
        return {"is_success": True}

    # ------------------------------------------------------------------------------------------------ the app

    def asgi_app(self) -> Litestar:
        return create_app(self)


def create_app(gateway: FakeTopGateway | None = None) -> Litestar:
    """The ASGI app serving ``/router/rest`` for ``gateway`` (a default shop when omitted).

    Litestar's own logging and OpenAPI are switched off: this is a test double and must not configure logging
    for the process that embeds it.
    """
    state = gateway or FakeTopGateway()

    @route("/router/rest", http_method=["GET", "POST"])
    async def router_rest(request: Request[Any, Any, Any]) -> Response[bytes]:
        params: dict[str, str] = dict(request.query_params.items())
        if request.method == "POST":
            form = await request.form()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        body = await state.handle(params)
        return Response(
            content=json.dumps(body, ensure_ascii=False).encode("utf-8"),
            media_type="application/json;charset=utf-8",
            status_code=200,
        )

    app = Litestar(route_handlers=[router_rest], logging_config=None, openapi_config=None, debug=False)
    app.state.gateway = state
    return app
