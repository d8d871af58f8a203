"""An async JOS client: signs, sends, unwraps, and retries what is worth retrying.

Requests follow the official SDKs: a POST whose parameters *all* travel in the URL query string, with an empty
body. Each attempt is signed afresh with a new ``timestamp`` because the gateway refuses timestamps more than
six minutes off, and a backoff can outlast that.

Retries: the call limit (code 2), timeouts, connection errors, 5xx/429 answers and unreadable bodies are
retried with exponential backoff and jitter, then reported as :class:`~tongcrm_jd.errors.JosUnavailable`
(a :class:`~tongcrm.plugin.errors.ChannelUnavailable`). Everything else is final at once. The client only
issues read calls, so a retried request can never act twice.

Secrets (app secret, access token) are never logged, never put in exception messages and never in ``repr``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
from tongcrm.plugin.grants import holding
from tongcrm.plugin.transport import platform_transport
from tongcrm.plugin.types import CallGate

from tongcrm_jd.envelope import JosCallLimited, decode_body, unwrap
from tongcrm_jd.errors import CODE_CALL_LIMITED, JosProtocolError, JosUnavailable
from tongcrm_jd.signing import PARAM_JSON, encode_business_params, sign
from tongcrm_jd.timeutil import format_timestamp

DEFAULT_GATEWAY = "https://api.jd.com/routerjson"
#: Added to the one-second call window, so that clock jitter between us and the gateway cannot squeeze two
#: windows' worth of calls into one second as the gateway counts them.
CALL_WINDOW_MARGIN = 0.05
API_VERSION = "2.0"

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard the client tries before it hands a transient failure to the core.

    ``attempts`` counts the first try. The delay before retry *n* is drawn from
    ``[d/2, d]`` with ``d = min(cap, base * 2**(n-1))`` ("equal jitter"): always some wait, never a herd.
    """

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")

    def delay(self, retry: int, rng: random.Random) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


class _Transient(Exception):
    """One failed attempt that may succeed if repeated."""

    def __init__(self, reason: str, code: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class JosClient:
    """One seller authorisation (app key + secret + access token) against one gateway."""

    def __init__(
        self,
        *,
        app_key: str,
        app_secret: str,
        access_token: str,
        gateway_url: str = DEFAULT_GATEWAY,
        clock: Callable[[], datetime] = _utcnow,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        timeout: httpx.Timeout | None = None,
        deadline: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        call_gate: CallGate | None = None,
        calls_per_second: int = 0,
    ) -> None:
        for name, value in (("app_key", app_key), ("app_secret", app_secret), ("access_token", access_token)):
            if not value:
                raise ValueError(f"JOS client needs a non-empty {name}")
        self.app_key = app_key
        self._app_secret = app_secret
        self._access_token = access_token
        self.gateway_url = gateway_url
        self._clock = clock
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        # The overall deadline backs up httpx's per-phase timeouts: a server that trickles bytes resets a read
        # timeout forever, and in-process transports (tests) ignore httpx timeouts altogether.
        self._deadline = deadline
        self._timeout = (timeout or httpx.Timeout(30.0, connect=10.0)).as_dict()
        # The transport is driven directly rather than through ``httpx.AsyncClient``: the client logs every
        # request URL at INFO, and JOS puts the access token in the URL. Bypassing it keeps the token out of
        # any log an application might configure, without this library touching logging configuration.
        self._transport = transport or platform_transport()
        # JOS meters the app key, whichever shop or worker calls: the core's gate keeps one window per key
        self._gate = call_gate if calls_per_second > 0 else None
        self._calls_per_second = calls_per_second

    def __repr__(self) -> str:
        return f"JosClient(app_key={self.app_key!r}, gateway_url={self.gateway_url!r})"

    async def aclose(self) -> None:
        await self._transport.aclose()

    def signed_params(self, method: str, business: Mapping[str, Any]) -> dict[str, str]:
        """The full, signed query for one attempt (public so tests can build requests by hand)."""
        params = {
            "method": method,
            "app_key": self.app_key,
            "access_token": self._access_token,
            "timestamp": format_timestamp(self._clock()),
            "v": API_VERSION,
            PARAM_JSON: encode_business_params(business),
        }
        params["sign"] = sign(params, self._app_secret)
        return params

    async def call(self, method: str, business: Mapping[str, Any]) -> dict[str, Any]:
        """Call ``method`` and return the payload inside its ``_responce`` wrapper.

        Raises :class:`~tongcrm_jd.errors.JosAuthError`, :class:`~tongcrm_jd.errors.JosRequestError`,
        :class:`~tongcrm_jd.errors.JosBusinessError` or, once retries are spent,
        :class:`~tongcrm_jd.errors.JosUnavailable`.
        """
        last: _Transient | None = None
        delay = 0.0
        for attempt in range(1, self._retry.attempts + 1):
            if attempt > 1:
                delay = self._retry.delay(attempt - 1, self._rng)
                await self._sleep(delay)
            try:
                return await self._attempt(method, business)
            except _Transient as exc:
                last = exc
                log.warning(
                    "jos.call.retryable",
                    method=method,
                    attempt=attempt,
                    attempts=self._retry.attempts,
                    reason=exc.reason,
                    code=exc.code,
                )
        assert last is not None
        raise JosUnavailable(
            f"{method}: {last.reason} (gave up after {self._retry.attempts} attempts)",
            code=last.code,
            retry_after=max(delay, self._retry.base_delay),
        )

    async def _post(self, params: Mapping[str, str]) -> httpx.Response:
        if self._gate is None:
            return await self._send(params)
        grant = await self._gate.acquire(
            f"jos:{self.app_key}", rate=self._calls_per_second, window=1.0 + CALL_WINDOW_MARGIN
        )
        # a timed-out or cancelled request may still reach the gateway: the gate keeps counting it then
        async with holding(grant):
            return await self._send(params)

    async def _send(self, params: Mapping[str, str]) -> httpx.Response:
        request = httpx.Request(
            "POST",
            self.gateway_url,
            params=params,
            headers={"Accept": "application/json"},
            extensions={"timeout": self._timeout},
        )
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def _attempt(self, method: str, business: Mapping[str, Any]) -> dict[str, Any]:
        params = self.signed_params(method, business)
        try:
            async with asyncio.timeout(self._deadline):
                response = await self._post(params)
        except (TimeoutError, httpx.TimeoutException):
            raise _Transient("timed out") from None
        except httpx.TransportError as exc:
            # The exception text may quote the URL, and the URL carries the token: log the class only.
            raise _Transient(f"transport error ({type(exc).__name__})") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(f"HTTP {response.status_code}", code=f"http_{response.status_code}")
        try:
            data = decode_body(response.content)
        except JosProtocolError as exc:
            raise _Transient(f"HTTP {response.status_code}: {exc}") from None
        try:
            payload = unwrap(method, data)
        except JosCallLimited as exc:
            raise _Transient(f"call limited ({exc})", code=CODE_CALL_LIMITED) from None
        except JosProtocolError as exc:
            raise _Transient(str(exc)) from None
        log.debug("jos.call.ok", method=method)
        return payload
