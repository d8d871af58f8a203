"""A protocol-faithful fake of Aliyun dysmsapi, for tests, benchmarks and the demo, served on loopback.

It checks what the real gateway checks, in the same words: the AccessKey, the v1 signature (recomputed with
the same code the client signs with, :mod:`tongcrm_sms_gateway.aliyun_signing`), nonce replay, a 15-minute
timestamp window, approved signatures and templates, template variables, balance, the account's daily cap and
the platform's per-number flow control. Accepted messages are recorded, metered, and reported back as
``SmsReport`` pushes to a callback URL, retried like the platform retries them until the callback answers
``{"code":0,...}``. A test API (Python methods, and ``/__fake__/*`` routes for out-of-process use) simulates
member replies and injects faults.

The HTTP status of business errors is not documented (protocols.md §3.1); the fake answers 200 for ``isv.*``
and 500 for ``isp.*`` so that clients are forced to read the body either way.

Usage::

    fake = FakeAliyun(access_keys={"id": "secret"}, signatures={"通通"}, templates=[FakeTemplate("SMS_1")])
    app = fake.app            # mount under uvicorn, or httpx.ASGITransport(app=fake.app)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import httpx
import structlog
from litestar import Litestar, Request, Response, get, post, route
from litestar.params import Body

from tongcrm_sms_gateway.aliyun_signing import verify
from tongcrm_sms_gateway.fake_limits import FlowControl, SendRateMeter
from tongcrm_sms_gateway.phones import MAINLAND_MOBILE, from_platform, mask
from tongcrm_sms_gateway.receipts import BEIJING

__all__ = ["AcceptedMessage", "FakeAliyun", "FakeTemplate", "PushRecord", "create_app"]

log = structlog.get_logger(__name__)

#: The platform's push retry schedule: after 1, 5, 10, 30 minutes, then hourly; 10 attempts in all.
PLATFORM_RETRY_DELAYS: tuple[float, ...] = (60, 300, 600, 1800, 3600, 3600, 3600, 3600, 3600)
MAX_SKEW = timedelta(minutes=15)
TemplateKind = Literal["verification", "notice", "promotion"]
_URLISH = re.compile(r"(https?://|www\.)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class FakeTemplate:
    """An approved template: its code, its kind (which flow-control rule applies) and its variables."""

    code: str
    variables: frozenset[str] = frozenset()
    kind: TemplateKind = "notice"


@dataclass(frozen=True, slots=True)
class AcceptedMessage:
    biz_id: str
    phone: str
    sign_name: str
    template_code: str
    params: Mapping[str, str]
    out_id: str
    action: str
    at: datetime


@dataclass(slots=True)
class PushRecord:
    """One callback push and what became of it."""

    kind: Literal["report", "up"]
    payload: list[dict[str, Any]]
    attempts: int = 0
    acked: bool = False
    gave_up: bool = False


class _Refusal(Exception):
    """A request the gateway refuses: the code and message it answers with."""

    def __init__(self, code: str, message: str, status: int = 200) -> None:
        super().__init__(code)
        self.code, self.message, self.status = code, message, status


def _beijing(at: datetime) -> str:
    return at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Faults:
    system_errors: int = 0
    delay_seconds: float = 0.0
    delayed_requests: int = 0


@dataclass
class _Recipient:
    phone: str
    sign_name: str
    params: dict[str, str]


class FakeAliyun:
    """The fake gateway's state and behaviour; :attr:`app` serves it.

    ``balance`` and ``daily_cap`` count messages (``None``: unlimited). ``clock`` drives timestamps, flow
    control and reports, so tests can move time; the rate meter uses the real monotonic clock.
    """

    def __init__(
        self,
        *,
        access_keys: Mapping[str, str],
        signatures: Iterable[str],
        templates: Iterable[FakeTemplate],
        balance: int | None = None,
        daily_cap: int | None = None,
        report_url: str | None = None,
        up_url: str | None = None,
        retry_delays: Sequence[float] = PLATFORM_RETRY_DELAYS,
        undeliverable: Mapping[str, str] | None = None,
        banned_words: Iterable[str] = (),
        max_param_length: int = 20,
        clock: Callable[[], datetime] = _utcnow,
        push_timeout: float = 5.0,
    ) -> None:
        self.access_keys = dict(access_keys)
        self.signatures = set(signatures)
        self.templates = {t.code: t for t in templates}
        self.balance = balance
        self.daily_cap = daily_cap
        self.report_url = report_url
        self.up_url = up_url
        self.retry_delays = tuple(retry_delays)
        self.undeliverable = dict(undeliverable or {})
        self.banned_words = tuple(banned_words)
        self.max_param_length = max_param_length
        self.out_of_service = False
        self.clock = clock
        self.accepted: list[AcceptedMessage] = []
        self.pushes: list[PushRecord] = []
        self.refusals: list[str] = []
        self.meter = SendRateMeter()
        self.flow = FlowControl()
        self.faults = _Faults()
        self._nonces: dict[str, datetime] = {}
        self._biz_ids = itertools.count(100000000000001)
        self._sequence_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http = httpx.AsyncClient(timeout=push_timeout)
        self._push_timeout = push_timeout
        self.app = create_app(self)

    # --- test API

    def inject_system_errors(self, count: int = 1) -> None:
        """The next ``count`` valid requests answer ``isp.SYSTEM_ERROR`` (nothing is sent)."""
        self.faults.system_errors += count

    def inject_delay(self, seconds: float, requests: int = 1) -> None:
        """The next ``requests`` requests answer only after ``seconds`` — and are then processed as usual,
        as a real gateway does with a request whose caller has given up waiting."""
        self.faults.delay_seconds, self.faults.delayed_requests = seconds, requests

    def simulate_reply(self, phone: str, content: str, sign_name: str, dest_code: str = "") -> dict[str, Any]:
        """A member answers (e.g. ``TD``): push an ``SmsUp`` entry to :attr:`up_url`. Returns the entry."""
        mobile = from_platform(phone)
        if mobile is None:
            raise ValueError("not a mainland mobile number")
        if self.up_url is None:
            raise RuntimeError("no SmsUp callback URL is configured")
        entry = {
            "phone_number": mobile[3:],
            "send_time": _beijing(self.clock()),
            "content": content,
            "sign_name": sign_name,
            "dest_code": dest_code,
            "sequence_id": next(self._sequence_ids),
        }
        self._push("up", self.up_url, [entry])
        return entry

    async def drain(self) -> None:
        """Wait until every scheduled push has been acked or given up."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self._http.aclose()

    # --- gateway

    async def handle(self, method: str, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """Answer one RPC call: ``(HTTP status, JSON body)``."""
        request_id = f"FAKE-{next(self._sequence_ids):012d}"
        try:
            self._authenticate(method, params)
            if self.faults.delayed_requests > 0:
                self.faults.delayed_requests -= 1
                await asyncio.sleep(self.faults.delay_seconds)
            if self.faults.system_errors > 0:
                self.faults.system_errors -= 1
                raise _Refusal("isp.SYSTEM_ERROR", "injected system error", 500)
            biz_id = self._send(params)
        except _Refusal as refusal:
            self.refusals.append(refusal.code)
            log.info("fake_aliyun.refused", code=refusal.code, action=params.get("Action"))
            return refusal.status, {"Code": refusal.code, "Message": refusal.message, "RequestId": request_id}
        return 200, {"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": request_id}

    def _authenticate(self, method: str, params: Mapping[str, str]) -> None:
        for name in ("AccessKeyId", "Action", "Signature", "SignatureNonce", "Timestamp", "Version"):
            if not params.get(name):
                raise _Refusal("MissingParameter", f"{name} is mandatory for this action.", 400)
        if params.get("SignatureMethod") != "HMAC-SHA1" or params.get("SignatureVersion") != "1.0":
            raise _Refusal("InvalidParameter", "SignatureMethod/SignatureVersion not supported.", 400)
        secret = self.access_keys.get(params["AccessKeyId"])
        if secret is None:
            raise _Refusal("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
        try:
            stamp = datetime.strptime(params["Timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise _Refusal("InvalidTimeStamp.Format", "Specified time stamp is not valid.", 400) from None
        now = self.clock()
        if abs(now - stamp) > MAX_SKEW:
            raise _Refusal("InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.", 400)
        if not verify(params, secret, method):
            raise _Refusal(
                "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.", 400
            )
        # Only a correctly signed request may burn a nonce; forgotten once its timestamp could no longer pass.
        self._nonces = {n: at for n, at in self._nonces.items() if now - at <= 2 * MAX_SKEW}
        if params["SignatureNonce"] in self._nonces:
            raise _Refusal("SignatureNonceUsed", "Specified signature nonce was used already.", 400)
        self._nonces[params["SignatureNonce"]] = now

    def _recipients(self, params: Mapping[str, str]) -> list[_Recipient]:
        action = params["Action"]
        if action == "SendSms":
            phones = [p for p in params.get("PhoneNumbers", "").split(",") if p]
            if len(phones) > 1000:
                raise _Refusal("isv.MOBILE_COUNT_OVER_LIMIT", "more than 1000 numbers")
            template_params = _json_object(params.get("TemplateParam") or "{}")
            return [_Recipient(p, params.get("SignName", ""), template_params) for p in phones]
        if action == "SendBatchSms":
            phones = _json_list(params.get("PhoneNumberJson", ""))
            signs = _json_list(params.get("SignNameJson", ""))
            variables = _json_list(params.get("TemplateParamJson") or json.dumps([{}] * len(phones)))
            if len(phones) > 100:
                raise _Refusal("isv.MOBILE_COUNT_OVER_LIMIT", "more than 100 numbers")
            if not (len(phones) == len(signs) == len(variables)):
                raise _Refusal(
                    "isv.INVALID_JSON_PARAM", "PhoneNumberJson/SignNameJson/TemplateParamJson differ"
                )
            return [
                _Recipient(str(p), str(s), _params(v))
                for p, s, v in zip(phones, signs, variables, strict=True)
            ]
        raise _Refusal("InvalidAction.NotFound", f"Specified api is not found: {action}", 404)

    def _check_content(self, template: FakeTemplate, recipient: _Recipient) -> None:
        missing = template.variables - recipient.params.keys()
        if missing:
            raise _Refusal("isv.TEMPLATE_MISSING_PARAMETERS", f"missing variables {sorted(missing)}")
        for name in template.variables:
            value = recipient.params[name]
            if not 1 <= len(value) <= self.max_param_length:
                raise _Refusal(
                    "isv.PARAM_LENGTH_LIMIT", f"variable {name} must be 1-{self.max_param_length} chars"
                )
            if _URLISH.search(value):
                raise _Refusal("isv.PARAM_NOT_SUPPORT_URL", f"variable {name} carries a URL")
            if any(word in value for word in self.banned_words):
                raise _Refusal("isv.BLACK_KEY_CONTROL_LIMIT", "banned keyword")

    def _send(self, params: Mapping[str, str]) -> str:
        if self.out_of_service:
            raise _Refusal("isv.OUT_OF_SERVICE", "account suspended")
        recipients = self._recipients(params)
        if not recipients:
            raise _Refusal("isv.MOBILE_NUMBER_ILLEGAL", "no number")
        template = self.templates.get(params.get("TemplateCode", ""))
        if template is None:
            raise _Refusal("isv.SMS_TEMPLATE_ILLEGAL", "template not approved")
        for r in recipients:
            if not MAINLAND_MOBILE.match(r.phone):
                raise _Refusal("isv.MOBILE_NUMBER_ILLEGAL", "illegal mobile number")
            if r.sign_name not in self.signatures:
                raise _Refusal("isv.SMS_SIGNATURE_ILLEGAL", "signature not approved")
            self._check_content(template, r)
        now = self.clock()
        if self.daily_cap is not None:
            today = now.astimezone(BEIJING).date()
            sent_today = sum(1 for m in self.accepted if m.at.astimezone(BEIJING).date() == today)
            if sent_today + len(recipients) > self.daily_cap:
                raise _Refusal("isv.DAY_LIMIT_CONTROL", "account daily limit reached")
        if self.balance is not None and self.balance < len(recipients):
            raise _Refusal("isv.AMOUNT_NOT_ENOUGH", "balance not enough")
        by_sign: dict[str, list[str]] = {}
        for r in recipients:
            by_sign.setdefault(r.sign_name, []).append(r.phone)
        for sign, phones in by_sign.items():
            if not self.flow.allows(template.kind, sign, template.code, phones, now):
                raise _Refusal("isv.BUSINESS_LIMIT_CONTROL", "flow control")
        return self._accept(params, template, recipients, now)

    def _accept(
        self, params: Mapping[str, str], template: FakeTemplate, recipients: list[_Recipient], now: datetime
    ) -> str:
        biz_id = f"{next(self._biz_ids)}^0"
        out_id = params.get("OutId", "")
        for r in recipients:
            self.flow.record(template.kind, r.sign_name, template.code, [r.phone], now)
            self.accepted.append(
                AcceptedMessage(
                    biz_id, r.phone, r.sign_name, template.code, r.params, out_id, params["Action"], now
                )
            )
        if self.balance is not None:
            self.balance -= len(recipients)
        self.meter.record(len(recipients))
        log.info(
            "fake_aliyun.accepted", biz_id=biz_id, recipients=len(recipients), first=mask(recipients[0].phone)
        )
        if self.report_url is not None:
            self._push(
                "report", self.report_url, [self._report(biz_id, out_id, r.phone, now) for r in recipients]
            )
        return biz_id

    def _report(self, biz_id: str, out_id: str, phone: str, sent_at: datetime) -> dict[str, Any]:
        failure = self.undeliverable.get(phone)
        return {
            "phone_number": phone,
            "send_time": _beijing(sent_at),
            "report_time": _beijing(self.clock()),
            "success": failure is None,
            "err_code": failure or "DELIVERED",
            "err_msg": "用户接收成功" if failure is None else "fake delivery failure",
            "sms_size": "1",
            "biz_id": biz_id,
            "out_id": out_id,
        }

    # --- pushes

    def _push(self, kind: Literal["report", "up"], url: str, payload: list[dict[str, Any]]) -> None:
        record = PushRecord(kind, payload)
        self.pushes.append(record)
        task = asyncio.get_running_loop().create_task(self._deliver(url, record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, record: PushRecord) -> None:
        body = json.dumps(record.payload, ensure_ascii=False).encode("utf-8")
        delays = (*self.retry_delays, None)
        for delay in delays:
            record.attempts += 1
            if await self._attempt(url, body):
                record.acked = True
                return
            if delay is None:
                break
            await asyncio.sleep(delay)
        record.gave_up = True
        log.warning("fake_aliyun.push_gave_up", kind=record.kind, attempts=record.attempts)

    async def _attempt(self, url: str, body: bytes) -> bool:
        """One POST; acked only by a 200 whose JSON body has ``code`` 0."""
        try:
            response = await self._http.post(
                url, content=body, headers={"Content-Type": "application/json; charset=utf-8"}
            )
            data = response.json()
        except (httpx.HTTPError, ValueError):
            return False
        return response.status_code == 200 and isinstance(data, dict) and data.get("code") == 0


def _json_object(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError:
        raise _Refusal("isv.INVALID_JSON_PARAM", "template parameters are not valid JSON") from None
    return _params(value)


def _params(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Refusal("isv.INVALID_JSON_PARAM", "template parameters are not a JSON object")
    return {str(k): str(v) for k, v in value.items()}


def _json_list(text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise _Refusal("isv.INVALID_JSON_PARAM", "not a JSON array") from None
    if not isinstance(value, list):
        raise _Refusal("isv.INVALID_JSON_PARAM", "not a JSON array")
    return value


def create_app(fake: FakeAliyun) -> Litestar:
    """The ASGI app: the RPC endpoint at ``/`` (GET or POST) and the ``/__fake__`` test API."""

    @route("/", http_method=["GET", "POST"])
    async def rpc(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        if request.method == "GET":
            raw = request.scope["query_string"].decode("utf-8")
        else:
            raw = (await request.body()).decode("utf-8")
        params = dict(parse_qsl(raw, keep_blank_values=True))
        status, body = await fake.handle(request.method, params)
        return Response(body, status_code=status)

    @post("/__fake__/reply", status_code=200)
    async def reply(data: Annotated[dict[str, str], Body()]) -> dict[str, Any]:
        entry = fake.simulate_reply(
            data["phone_number"], data["content"], data["sign_name"], data.get("dest_code", "")
        )
        return {"sequence_id": entry["sequence_id"]}

    @post("/__fake__/faults", status_code=200)
    async def faults(data: Annotated[dict[str, float], Body()]) -> dict[str, Any]:
        if data.get("system_errors"):
            fake.inject_system_errors(int(data["system_errors"]))
        if data.get("delay_seconds"):
            fake.inject_delay(float(data["delay_seconds"]), int(data.get("delayed_requests", 1)))
        return {"ok": True}

    @get("/__fake__/stats")
    async def stats() -> dict[str, Any]:
        return {
            "accepted": len(fake.accepted),
            "balance": fake.balance,
            "max_per_second": fake.meter.max_in_window(1.0),
            "pushes": len(fake.pushes),
            "acked": sum(1 for p in fake.pushes if p.acked),
        }

    return Litestar(
        route_handlers=[rpc, reply, faults, stats],
        logging_config=None,
        on_shutdown=[fake.aclose],
        debug=False,
    )
