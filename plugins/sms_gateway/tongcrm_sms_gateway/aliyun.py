"""Aliyun dysmsapi client: SendSms / SendBatchSms over signed RPC, and what each answer means to tongcrm.

The client makes one HTTP request per call and never retries on its own: a request that timed out may
already have been accepted, and whether to risk a duplicate SMS is the core's decision (it retries messages
marked ``retry_later``). Every answer, including a transport failure, comes back as an :class:`AliyunAnswer`
whose ``code`` is looked up in :data:`CODES`; the table below is the reasoning behind that lookup.

"1?" marks per-recipient codes: in a request that carries many messages they may be caused by one number or
one message's variables, so the messenger re-sends that request one message at a time and only the culprit
fails. Outcomes: ``retry`` = retry_later, ``number`` = failed_number (this message, permanently),
``account`` = failed_account (pause the sending account until an operator acts), ``doubt`` = in_doubt (may
have been sent; the core never re-sends it).

=============================== ======= == ===========================================================
code                            outcome 1? why
=============================== ======= == ===========================================================
OK                              sent       accepted; delivery is reported later by SmsReport
isp.SYSTEM_ERROR                retry      the platform's own fault; the vendor says to retry
isv.BUSINESS_LIMIT_CONTROL      retry   1? per-number flow control over a rolling window: the number
                                           is fine, it used its quota; later it passes
isv.DAY_LIMIT_CONTROL           retry      the account's own daily cap (console setting); it resets
                                           tomorrow or when raised. Not account: that would pause
                                           service messages until a human resumes them
isv.MOBILE_NUMBER_ILLEGAL       number  1? not a valid mobile; resending cannot fix it
isv.MOBILE_COUNT_OVER_LIMIT     account    > 1000 numbers: our request shape is wrong (a bug or a bad
                                           batch setting); every send would repeat it, so stop and
                                           alert instead of looping
isv.TEMPLATE_MISSING_PARAMETERS number  1? this message's variables do not fill the template; the
                                           same message never will. Other members' messages may, so
                                           sending is not paused (no "failed_message" outcome yet)
isv.INVALID_JSON_PARAM          number  1? this message's variables are not valid JSON; as above
isv.BLACK_KEY_CONTROL_LIMIT     number  1? this message's text hits a banned keyword; as above
isv.PARAM_LENGTH_LIMIT          number  1? a variable of this message is too long (1-20 chars)
isv.PARAM_NOT_SUPPORT_URL       number  1? a variable of this message carries a URL
isv.AMOUNT_NOT_ENOUGH           account    balance too low: nothing goes out until someone tops up
isv.OUT_OF_SERVICE              account    account suspended (balance): as above
isv.SMS_TEMPLATE_ILLEGAL        account    template not approved: configuration every message with it
                                           repeats; pause and show the operator
isv.SMS_SIGNATURE_ILLEGAL       account    signature not approved: as above
SignatureDoesNotMatch           account    wrong AccessKeySecret (the signing itself is tested against
                                           the official vector): every request fails the same way
InvalidAccessKeyId.NotFound     account    unknown AccessKeyId (Aliyun's POP-wide code; not listed in
                                           protocols.md 3.1, but what a gateway answers)
InvalidTimeStamp.Expired        account    our clock is > 15 min off; every new request is stamped by
                                           the same clock, so only an operator fixing it helps
SignatureNonceUsed              retry      each attempt has a fresh UUID nonce, so a replay means a
                                           middlebox repeated our request; the original's fate is
                                           unknown and a new attempt is the only way to learn it
tongcrm.TIMEOUT                 doubt      no answer in time; the request may have been accepted and
                                           protocols.md documents no API to look a send up by OutId, so
                                           a retry could send it twice: in doubt, never re-sent (see
                                           tongcrm_sms_gateway.messenger, "Timeouts")
tongcrm.CONNECTION_LOST         doubt      the connection broke after the request went out: as above
tongcrm.TRANSPORT_ERROR         retry      no connection could be made (refused, DNS, TLS, connect
                                           timeout, no pooled connection): nothing was sent
tongcrm.HTTP_ERROR              retry      5xx/429 without a dysmsapi body (a proxy, an outage)
tongcrm.BAD_RESPONSE            account    any other answer without a dysmsapi body: the endpoint
                                           setting points somewhere wrong
(any other isp.*)               retry      platform-side, by Aliyun's naming convention
(any other code)                number     unknown: fail this message (never retried forever, nor a
                                           pause of all sending); its code is kept for the operator
=============================== ======= == ===========================================================
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import structlog
from tongcrm.plugin.grants import NEVER_SENT
from tongcrm.plugin.types import SendOutcome

from tongcrm_sms_gateway.aliyun_signing import signed_body

__all__ = [
    "CODES",
    "DEFAULT_ENDPOINT",
    "SEND_BATCH_SMS_LIMIT",
    "SEND_SMS_LIMIT",
    "AliyunAnswer",
    "AliyunSmsClient",
    "CodeRule",
    "rule_for",
    "template_param_json",
]

DEFAULT_ENDPOINT = "https://dysmsapi.aliyuncs.com/"
API_VERSION = "2017-05-25"
SEND_SMS_LIMIT = 1000
SEND_BATCH_SMS_LIMIT = 100

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CodeRule:
    outcome: SendOutcome
    per_recipient: bool = False


_R, _N, _A = SendOutcome.RETRY_LATER, SendOutcome.FAILED_NUMBER, SendOutcome.FAILED_ACCOUNT

#: Every code protocols.md §3.1 documents, plus the client's own transport codes. See the module docstring.
CODES: Mapping[str, CodeRule] = {
    "OK": CodeRule(SendOutcome.SENT),
    "isp.SYSTEM_ERROR": CodeRule(_R),
    "isv.BUSINESS_LIMIT_CONTROL": CodeRule(_R, per_recipient=True),
    "isv.DAY_LIMIT_CONTROL": CodeRule(_R),
    "isv.MOBILE_NUMBER_ILLEGAL": CodeRule(_N, per_recipient=True),
    "isv.MOBILE_COUNT_OVER_LIMIT": CodeRule(_A),
    "isv.TEMPLATE_MISSING_PARAMETERS": CodeRule(_N, per_recipient=True),
    "isv.INVALID_JSON_PARAM": CodeRule(_N, per_recipient=True),
    "isv.BLACK_KEY_CONTROL_LIMIT": CodeRule(_N, per_recipient=True),
    "isv.PARAM_LENGTH_LIMIT": CodeRule(_N, per_recipient=True),
    "isv.PARAM_NOT_SUPPORT_URL": CodeRule(_N, per_recipient=True),
    "isv.AMOUNT_NOT_ENOUGH": CodeRule(_A),
    "isv.OUT_OF_SERVICE": CodeRule(_A),
    "isv.SMS_TEMPLATE_ILLEGAL": CodeRule(_A),
    "isv.SMS_SIGNATURE_ILLEGAL": CodeRule(_A),
    "SignatureDoesNotMatch": CodeRule(_A),
    "InvalidAccessKeyId.NotFound": CodeRule(_A),
    "InvalidTimeStamp.Expired": CodeRule(_A),
    "SignatureNonceUsed": CodeRule(_R),
    "tongcrm.TIMEOUT": CodeRule(SendOutcome.IN_DOUBT),
    "tongcrm.CONNECTION_LOST": CodeRule(SendOutcome.IN_DOUBT),
    "tongcrm.TRANSPORT_ERROR": CodeRule(_R),
    "tongcrm.HTTP_ERROR": CodeRule(_R),
    "tongcrm.BAD_RESPONSE": CodeRule(_A),
}


def rule_for(code: str) -> CodeRule:
    """The rule for ``code``; unknown codes follow the last two rows of the table."""
    rule = CODES.get(code)
    if rule is not None:
        return rule
    if code.startswith("isp."):
        return CodeRule(_R)
    return CodeRule(_N)


def template_param_json(params: Mapping[str, str]) -> str:
    """Template variables as the compact JSON object dysmsapi expects.

    Keys are sorted so that equal variable sets encode equally — the messenger groups messages by this string
    to decide whether they can share one ``SendSms`` call.
    """
    return json.dumps(dict(params), ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class AliyunAnswer:
    """One request's answer. ``code`` is Aliyun's ``Code`` or a ``tongcrm.*`` transport code."""

    code: str
    message: str = ""
    biz_id: str | None = None
    request_id: str | None = None
    http_status: int | None = None

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def in_doubt(self) -> bool:
        """The request may have reached the gateway without us hearing back (see :data:`CODES`)."""
        return rule_for(self.code).outcome is SendOutcome.IN_DOUBT


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AliyunSmsClient:
    """Signed requests to one dysmsapi endpoint with one AccessKey.

    The client owns its ``httpx.AsyncClient`` unless one is passed in (tests pass one on an ASGI transport).
    Requests are POSTed as form bodies: a 1000-number ``SendSms`` does not fit comfortably in a URL.
    """

    def __init__(
        self,
        *,
        access_key_id: str,
        access_key_secret: str,
        endpoint: str = DEFAULT_ENDPOINT,
        region: str = "cn-hangzhou",
        timeout: float = 10.0,
        clock: Callable[[], datetime] = _utcnow,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if not access_key_id or not access_key_secret:
            raise ValueError("Aliyun SMS needs an access_key_id and an access_key_secret")
        self._key_id = access_key_id
        self._secret = access_key_secret
        self._endpoint = endpoint
        self._region = region
        self._clock = clock
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)), follow_redirects=False
        )
        self._timeout = timeout

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def send_sms(
        self,
        phones: Sequence[str],
        *,
        sign_name: str,
        template_code: str,
        template_param: str,
        out_id: str | None = None,
    ) -> AliyunAnswer:
        """One template, one set of variables, up to :data:`SEND_SMS_LIMIT` domestic numbers."""
        if not 0 < len(phones) <= SEND_SMS_LIMIT:
            raise ValueError(f"SendSms takes 1..{SEND_SMS_LIMIT} numbers, got {len(phones)}")
        params = {
            "PhoneNumbers": ",".join(phones),
            "SignName": sign_name,
            "TemplateCode": template_code,
            "TemplateParam": template_param,
        }
        if out_id is not None:
            params["OutId"] = out_id
        return await self._call("SendSms", params, len(phones))

    async def send_batch_sms(
        self,
        phones: Sequence[str],
        *,
        sign_names: Sequence[str],
        template_code: str,
        template_params: Sequence[str],
    ) -> AliyunAnswer:
        """One template, a signature and a variable set per number, up to :data:`SEND_BATCH_SMS_LIMIT`.

        The three JSON arrays are parallel. ``template_params`` are JSON objects already encoded (see
        :func:`template_param_json`); they are embedded, not double-encoded.
        """
        n = len(phones)
        if not 0 < n <= SEND_BATCH_SMS_LIMIT or len(sign_names) != n or len(template_params) != n:
            raise ValueError(f"SendBatchSms takes 1..{SEND_BATCH_SMS_LIMIT} parallel entries")
        params = {
            "PhoneNumberJson": json.dumps(list(phones), separators=(",", ":")),
            "SignNameJson": json.dumps(list(sign_names), ensure_ascii=False, separators=(",", ":")),
            "TemplateCode": template_code,
            "TemplateParamJson": "[" + ",".join(template_params) + "]",
        }
        return await self._call("SendBatchSms", params, n)

    def _common(self, action: str) -> dict[str, str]:
        return {
            "AccessKeyId": self._key_id,
            "Action": action,
            "Format": "JSON",
            "RegionId": self._region,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "Timestamp": self._clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": API_VERSION,
        }

    async def _call(self, action: str, params: Mapping[str, str], count: int) -> AliyunAnswer:
        body = signed_body({**self._common(action), **params}, self._secret, "POST")
        started = time.perf_counter()
        try:
            response = await self._http.post(
                self._endpoint,
                content=body.encode("utf-8"),
                headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
            )
        except NEVER_SENT as exc:  # before any byte left: a retry cannot duplicate it
            answer = AliyunAnswer("tongcrm.TRANSPORT_ERROR", type(exc).__name__)
        except httpx.TimeoutException as exc:
            answer = AliyunAnswer(
                "tongcrm.TIMEOUT", f"no answer within {self._timeout}s ({type(exc).__name__})"
            )
        except httpx.HTTPError as exc:  # read/write error, protocol error: the request may be in
            answer = AliyunAnswer("tongcrm.CONNECTION_LOST", type(exc).__name__)
        else:
            answer = _parse(response)
        log.info(
            "aliyun_sms.call",
            action=action,
            recipients=count,
            code=answer.code,
            request_id=answer.request_id,
            http_status=answer.http_status,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return answer


def _parse(response: httpx.Response) -> AliyunAnswer:
    """Read the JSON body whatever the status: Aliyun's HTTP status for business codes is undocumented."""
    status = response.status_code
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("Code"), str):
        biz_id = data.get("BizId")
        request_id = data.get("RequestId")
        return AliyunAnswer(
            code=data["Code"],
            message=str(data.get("Message", "")),
            biz_id=biz_id if isinstance(biz_id, str) and biz_id else None,
            request_id=request_id if isinstance(request_id, str) else None,
            http_status=status,
        )
    if status >= 500 or status == 429:
        return AliyunAnswer(
            "tongcrm.HTTP_ERROR", f"HTTP {status} without a dysmsapi body", http_status=status
        )
    return AliyunAnswer("tongcrm.BAD_RESPONSE", f"HTTP {status} without a dysmsapi body", http_status=status)
