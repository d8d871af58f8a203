"""An async client for the TOP gateway: signs, posts, parses, and retries what is worth retrying.

Why the pieces look the way they do:

* Requests are POSTed as ``application/x-www-form-urlencoded;charset=utf-8`` so the session and the signature
  never appear in a URL (and so never in an access log or an ``httpx`` error message).
* JSON is parsed exactly (:func:`tongcrm.plugin.wire.loads_exact`): integers stay arbitrary-precision ``int``
  (a ``tid`` above 2^53 is never a float) and fractional numbers become :class:`~decimal.Decimal`, so
  nothing is rounded.
* Each attempt is signed afresh, so a retry after a long ban still carries a timestamp the gateway accepts.
* Besides httpx's per-operation timeouts there is one overall deadline per attempt, so a response that
  trickles in slowly cannot hold a sync forever.
* ``sleep``, the random source for jitter, the wall clock for timestamps and the retry counts are injectable,
  which is what lets the tests run every failure path in milliseconds.

Secrets are never logged: log lines carry the API method, attempt number and the platform's error codes only.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import structlog
from tongcrm.plugin.grants import holding
from tongcrm.plugin.transport import platform_transport
from tongcrm.plugin.types import CallGate
from tongcrm.plugin.wire import loads_exact

from tongcrm_taobao.errors import (
    ErrorClass,
    TopAuthError,
    TopErrorInfo,
    TopRequestError,
    TopUnavailable,
    ban_seconds,
    classify,
)
from tongcrm_taobao.signing import SignMethod, sign
from tongcrm_taobao.timefmt import format_top_time

__all__ = ["DEFAULT_GATEWAY", "ParamValue", "RetryPolicy", "TopClient", "parse_json"]

DEFAULT_GATEWAY = "https://eco.taobao.com/router/rest"
_FORM = "application/x-www-form-urlencoded;charset=utf-8"
_HEADERS = {"content-type": _FORM, "accept": "application/json", "accept-encoding": "gzip, deflate"}
#: Added to the one-second call window, so that clock jitter between us and the gateway cannot squeeze two
#: windows' worth of calls into one second as the gateway counts them.
CALL_WINDOW_MARGIN = 0.05

ParamValue = str | int | bool | datetime | None
Sleep = Callable[[float], Awaitable[None]]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard the client tries before handing a failure to the core.

    ``max_attempts`` counts every attempt of one call, whatever failed. A call-limit ban longer than
    ``max_ban_wait`` is not slept through here: the client raises ``ChannelUnavailable`` with ``retry_after``
    so the core can park the account instead of holding a worker.
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_ban_wait: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Exponential backoff with "equal jitter" (half fixed, half random), so retries spread out."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


def parse_json(text: str | bytes) -> Any:
    """Parse a TOP body without ever turning a number into a float (see the module docstring)."""
    return loads_exact(text)


class _Retryable(Exception):
    def __init__(self, reason: str, info: TopErrorInfo | None = None, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.info = info
        self.wait = wait


def _wall_clock() -> datetime:
    return datetime.now(UTC)


def _encode(value: ParamValue) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_top_time(value)
    return str(value)


def response_key(method: str) -> str:
    """``taobao.trades.sold.increment.get`` answers under ``trades_sold_increment_get_response``."""
    name = method.removeprefix("taobao.")
    return name.replace(".", "_") + "_response"


class TopClient:
    """One TOP application (app key and secret), optionally acting for one seller (``session``)."""

    def __init__(
        self,
        *,
        app_key: str,
        app_secret: str,
        session: str | None = None,
        gateway_url: str = DEFAULT_GATEWAY,
        sign_method: SignMethod = "hmac-sha256",
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        wall_clock: Callable[[], datetime] = _wall_clock,
        transport: httpx.AsyncBaseTransport | None = None,
        call_gate: CallGate | None = None,
        calls_per_second: int = 0,
    ) -> None:
        if not app_key or not app_secret:
            raise ValueError("TOP app_key and app_secret are required")
        self.app_key = app_key
        self._secret = app_secret
        self._session = session or None
        self.gateway_url = gateway_url
        self.sign_method: SignMethod = sign_method
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._wall_clock = wall_clock
        self._deadline = timeout
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout).as_dict()
        # The transport (a keep-alive connection pool) is driven directly: ``httpx.AsyncClient``'s request
        # building, cookie, auth and redirect layers cost about a quarter of each call's CPU on the fetch side
        # (issue #22) and do nothing here (one URL, no cookies, redirects are never followed).
        self._transport = transport or platform_transport()
        # TOP meters the app key, whichever shop or worker calls: the core's gate keeps one window per key
        self._gate = call_gate if calls_per_second > 0 else None
        self._calls_per_second = calls_per_second

    def __repr__(self) -> str:  # never show the secret or the session
        return (
            f"TopClient(app_key={self.app_key!r}, gateway_url={self.gateway_url!r}, sign={self.sign_method})"
        )

    async def aclose(self) -> None:
        await self._transport.aclose()

    def signed_params(
        self, method: str, params: Mapping[str, ParamValue], *, with_session: bool
    ) -> dict[str, str]:
        """System + business parameters with a fresh timestamp and signature, ready to form-encode."""
        out: dict[str, str] = {
            "method": method,
            "app_key": self.app_key,
            "timestamp": format_top_time(self._wall_clock()),
            "format": "json",
            "v": "2.0",
            "sign_method": self.sign_method,
        }
        if with_session and self._session:
            out["session"] = self._session
        for key, value in params.items():
            encoded = _encode(value)
            if encoded is not None and encoded != "":
                out[key] = encoded
        out["sign"] = sign(out, self._secret, self.sign_method)
        return out

    async def call(
        self, method: str, params: Mapping[str, ParamValue] | None = None, *, with_session: bool = True
    ) -> dict[str, Any]:
        """Call one API and return the body under its ``…_response`` key.

        Raises :class:`TopAuthError` (code 27), :class:`TopRequestError` (caller errors) or, once the retry
        policy is spent, :class:`TopUnavailable`.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(method, params or {}, with_session=with_session)
            except _Retryable as exc:
                wait = exc.wait
                if wait is not None and wait > self.retry.max_ban_wait:
                    log.warning("top.call_limited_long", method=method, wait=wait, code=_code(exc.info))
                    raise TopUnavailable(
                        f"{method}: call limited for {wait:.0f}s: {exc.reason}",
                        info=exc.info,
                        retry_after=wait,
                    ) from None
                if attempt >= self.retry.max_attempts:
                    log.warning("top.gave_up", method=method, attempts=attempt, reason=exc.reason)
                    raise TopUnavailable(
                        f"{method}: gave up after {attempt} attempts: {exc.reason}",
                        info=exc.info,
                        retry_after=wait,
                    ) from None
                delay = wait if wait is not None else self.retry.backoff(attempt, self._rng)
                log.info(
                    "top.retry",
                    method=method,
                    attempt=attempt,
                    delay=round(delay, 3),
                    reason=exc.reason,
                    code=_code(exc.info),
                    sub_code=exc.info.sub_code if exc.info else "",
                )
                await self._sleep(delay)

    async def _attempt(
        self, method: str, params: Mapping[str, ParamValue], *, with_session: bool
    ) -> dict[str, Any]:
        form = self.signed_params(method, params, with_session=with_session)
        body = urlencode(form).encode("ascii")
        grant = (
            await self._gate.acquire(
                f"top:{self.app_key}", rate=self._calls_per_second, window=1.0 + CALL_WINDOW_MARGIN
            )
            if self._gate is not None
            else None
        )
        try:
            # released when the answer is read; a timed-out or cancelled request stays counted (in doubt)
            async with holding(grant), asyncio.timeout(self._deadline):
                request = httpx.Request(
                    "POST",
                    self.gateway_url,
                    content=body,
                    headers=_HEADERS,
                    extensions={"timeout": self._timeout},
                )
                response = await self._transport.handle_async_request(request)
                try:
                    raw = await response.aread()
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise _Retryable(f"timeout ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"transport error ({type(exc).__name__})") from None
        return self._interpret(method, response.status_code, raw)

    def _interpret(self, method: str, status: int, raw: bytes) -> dict[str, Any]:
        try:
            payload = parse_json(raw)
        except (ValueError, UnicodeDecodeError):
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("error_response"), dict):
            self._raise_platform_error(method, TopErrorInfo.from_body(payload["error_response"]))
        if status >= 500 or status == 429:
            raise _Retryable(f"HTTP {status}")
        if status != 200:
            raise TopRequestError(TopErrorInfo(code=-1, msg=f"{method}: unexpected HTTP status {status}"))
        if not isinstance(payload, dict):
            raise _Retryable("unparseable response body")
        key = response_key(method)
        inner = payload.get(key)
        if inner is None:  # tolerate a renamed wrapper, but only an unambiguous one
            wrappers = [v for k, v in payload.items() if k.endswith("_response") and isinstance(v, dict)]
            inner = wrappers[0] if len(wrappers) == 1 else None
        if not isinstance(inner, dict):
            raise TopRequestError(TopErrorInfo(code=-1, msg=f"{method}: response has no {key!r} object"))
        return inner

    def _raise_platform_error(self, method: str, info: TopErrorInfo) -> None:
        kind = classify(info)
        if kind is ErrorClass.AUTH:
            log.warning("top.auth_error", method=method, code=info.code, sub_code=info.sub_code)
            raise TopAuthError(info)
        if kind is ErrorClass.CALL_LIMITED:
            ban = ban_seconds(info)
            raise _Retryable(info.describe(), info, wait=float(ban + 1) if ban is not None else None)
        if kind is ErrorClass.TRANSIENT:
            raise _Retryable(info.describe(), info)
        log.warning("top.request_error", method=method, code=info.code, sub_code=info.sub_code)
        raise TopRequestError(info)


def _code(info: TopErrorInfo | None) -> int | None:
    return info.code if info else None
