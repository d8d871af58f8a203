"""Tmall brand membership (会员通): the SPIs Tmall calls on the brand, served as plugin routes.

- ``tmall.mei.crm.member.bind.query`` → is this buyer (by mobile) a member, and already bound?
  ``query_code``: SUC (member and bound), E01 (no member), E02 (member, not bound yet), E04 (error, retry).
- ``tmall.mei.crm.bind`` → bind the buyer's ``ouid``/``omid``/``open_uid`` to the member found by mobile.
- ``tmall.mei.crm.member.register`` → enrol the buyer (create the member when none has the mobile) and bind.

Tmall signs each call like a TOP request (protocols.md §1.2: ``sign`` over the sorted parameters with the app
secret) and retries — it enrols buyers itself in "flight mode" when the brand is slow and backfills up to ten
times a day — so every call is idempotent and answers within the platform's ~1.2 s budget. The routes are
public (Tmall has no tongcrm API key); the signature is the authentication, checked as the TOP gateway checks
a request:

- the app key must be the account's; the ``sign_method`` must be the one the account is configured with (an
  absent one is TOP's default, ``md5``). Whoever calls does not get to pick a weaker digest: an md5 signature
  is refused for an account configured for hmac-sha256, and an unknown method is refused like a bad
  signature, never an error of ours;
- the timestamp must be within the platform's 10 minutes of skew.

A call that fails these checks was not made by the platform, so it gets the platform's own refusal — TOP's
``error_response`` (protocols.md §1.3: HTTP 200, a numeric ``code`` such as 25 Invalid Signature or 31 Invalid
Timestamp, an ``isv.*`` sub-code saying the caller must fix the call rather than retry it) — not a
``query_code``: ``E04`` means "error, retry", and retrying a forged call is pointless.

Replays: a signed bind or register stays valid for the 10-minute window, so its signature is claimed with the
core's replay guard (in the database, across processes) before anything changes. A second arrival of the same
signed call is not applied again — bindings that were undone meanwhile (a merge undone, a member erased) are
not redone by someone who captured the request. It is answered as ``bind-query`` would answer now, read-only:
for a call that was applied and still holds that is the same ``SUC`` as the first answer, which is what a
platform that re-sends an identical request after a lost answer needs (the protocol asks for idempotent
calls). Flight-mode backfills are new calls with new timestamps and signatures, so they are applied as usual.
``bind-query`` changes nothing and is not guarded. A claim is released when its call fails, so the
platform's retry of that very call is applied. The mobile arrives in plain text and is never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from tongcrm.errors import NotFound, TongcrmError, Unprocessable
from tongcrm.membership import MembershipService
from tongcrm.plugin.types import BuyerProfile, IdentityClaim, RouteSpec
from tongcrm.replay.service import ReplayGuard

from tongcrm_taobao.signing import SIGN_METHODS, parse_sign_method, sign
from tongcrm_taobao.timefmt import parse_top_time

log = structlog.get_logger(__name__)

PREFIX = "/callbacks/taobao"
MAX_SKEW = timedelta(minutes=10)
#: A claimed signature is kept this long past the end of its timestamp window, so that a tongcrm server whose
#: clock runs ahead of another's does not purge a claim the other would still need.
REPLAY_MARGIN = timedelta(minutes=2)
CHANNEL = "taobao"
#: TOP's sign method when a request names none.
DEFAULT_SIGN_METHOD = "md5"


class Refused(Exception):
    """A call the TOP gateway would refuse, answered with TOP's ``error_response`` (protocols.md §1.3)."""

    def __init__(self, code: int, msg: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(f"{code} {msg}: {sub_msg}")
        self.code = code
        self.msg = msg
        self.sub_code = sub_code
        self.sub_msg = sub_msg

    def response(self) -> Response[dict[str, Any]]:
        body: dict[str, Any] = {
            "code": self.code,
            "msg": self.msg,
            "sub_code": self.sub_code,
            "sub_msg": self.sub_msg,
        }
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        if request_id:
            body["request_id"] = request_id
        return Response({"error_response": body}, status_code=200)


@dataclass(frozen=True, slots=True)
class VerifiedCall:
    """A call whose app key, sign method, signature and timestamp check out."""

    params: dict[str, str]
    signature: str
    sent_at: datetime


def _claims(params: Mapping[str, str]) -> tuple[IdentityClaim, ...]:
    claims = []
    for param, kind in (("ouid", "taobao.ouid"), ("omid", "taobao.omid"), ("open_id", "taobao.open_uid")):
        value = (params.get(param) or "").strip()
        if value:
            claims.append(IdentityClaim(kind, value, evidence="tmall membership SPI"))
    return tuple(claims)


def _answer(
    query_code: str, member: Mapping[str, Any] | None = None, message: str = ""
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"query_code": query_code}
    if member is not None:
        body["member"] = member
    if message:
        body["msg"] = message
    return Response(body, status_code=200)


async def _params(request: Request[Any, Any, Any]) -> dict[str, str]:
    params: dict[str, str] = dict(request.query_params.items())
    if request.method == "POST":
        form = await request.form()
        params.update({k: str(v) for k, v in form.items()})
    return params


def check_call(params: dict[str, str], settings: Mapping[str, str], *, now: datetime) -> VerifiedCall:
    """Check a call as the TOP gateway checks a request, in its order; raises :class:`Refused` otherwise.

    ``settings`` are the account's; ``params`` loses its ``sign``.
    """
    given = params.pop("sign", "").strip().upper()
    if not params.get("app_key") or not hmac.compare_digest(
        params["app_key"].encode(), settings.get("app_key", "").encode()
    ):
        raise Refused(29, "Invalid App Key", "isv.appkey-not-exists", "the app_key is not this account's")
    if not given:
        raise Refused(24, "Missing Signature", "isv.missing-signature", "the call carries no sign")
    requested = params.get("sign_method") or DEFAULT_SIGN_METHOD
    if requested not in SIGN_METHODS:
        raise Refused(
            25,
            "Invalid Signature",
            "isv.invalid-sign-method",
            f"unsupported sign_method; expected one of {', '.join(SIGN_METHODS)}",
        )
    try:
        configured = parse_sign_method(settings.get("sign_method") or "hmac-sha256")
    except ValueError:  # validated when the account was saved; refuse rather than guess if it is not
        raise Refused(
            25, "Invalid Signature", "isv.invalid-sign-method", "the account has no valid sign_method"
        ) from None
    if requested != configured:
        raise Refused(
            25,
            "Invalid Signature",
            "isv.invalid-sign-method",
            f"sign_method {requested} is not the one configured for this account",
        )
    expected = sign(params, settings["app_secret"], configured)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Refused(25, "Invalid Signature", "isv.invalid-signature", "the sign does not match the call")
    stamp = params.get("timestamp", "")
    if not stamp:
        raise Refused(30, "Missing Timestamp", "isv.missing-parameter:timestamp", "the call has no timestamp")
    try:
        sent = parse_top_time(stamp)
    except ValueError:
        raise Refused(
            31, "Invalid Timestamp", "isv.invalid-timestamp", "timestamp must be yyyy-MM-dd HH:mm:ss (GMT+8)"
        ) from None
    if abs(now - sent) > MAX_SKEW:
        raise Refused(
            31, "Invalid Timestamp", "isv.invalid-timestamp", "timestamp is more than 10 minutes off"
        )
    if any("\x00" in key or "\x00" in value for key, value in params.items()):
        # no field of the SPIs holds one, and the database refuses it in text: a bad argument, not our error
        raise Refused(
            41, "Invalid Arguments", "isv.invalid-parameter", "a parameter contains a NUL character"
        )
    return VerifiedCall(params, given, sent)


async def _verified(
    request: Request[Any, Any, Any], account: str, membership: MembershipService
) -> VerifiedCall:
    """The call once it checks out (see :func:`check_call`); raises :class:`Refused` otherwise."""
    params = await _params(request)
    try:
        settings = await membership.account_settings(account, CHANNEL)
    except NotFound:
        # the same refusal as a wrong app key: whoever probes learns nothing about which accounts exist
        raise Refused(
            29, "Invalid App Key", "isv.appkey-not-exists", "the app_key is not this account's"
        ) from None
    try:
        return check_call(params, settings, now=datetime.now(UTC))
    except Refused as refused:
        log.warning(
            "taobao.spi_refused",
            account=account,
            method=params.get("method"),
            code=refused.code,
            sub_code=refused.sub_code,
        )
        raise


def _member_block(status: Any, params: Mapping[str, str]) -> dict[str, Any]:
    details = status.details or {}
    points = details.get("points") or {}
    tier = details.get("tier") or {}
    return {
        "point": points.get("available", 0) if isinstance(points, Mapping) else 0,
        "level": (tier.get("tier") or tier.get("name") or "") if isinstance(tier, Mapping) else "",
        "nick": params.get("nick", ""),
        "mobile": status.masked_mobile or "",
        "extend": f'{{"card_no":"{status.member_id}"}}',
    }


async def _status_answer(
    membership: MembershipService, params: Mapping[str, str], claims: tuple[IdentityClaim, ...]
) -> Response[dict[str, Any]]:
    mobile = params.get("mobile", "").strip()
    if not mobile:
        return _answer("E04", message="mobile is required")
    status = await membership.status(mobile=mobile, claims=claims)
    if status.member_id is None:
        return _answer("E01")
    return _answer("SUC" if status.bound else "E02", _member_block(status, params))


@post(
    f"{PREFIX}/{{account:str}}/member/bind-query",
    summary="会员通: is this buyer a member?",
    tags=["taobao"],
    status_code=200,
)
async def bind_query(
    account: FromPath[str], request: Request[Any, Any, Any], membership: NamedDependency[MembershipService]
) -> Response[dict[str, Any]]:
    try:
        call = await _verified(request, account, membership)
        return await _status_answer(membership, call.params, _claims(call.params))
    except Refused as refused:
        return refused.response()
    except Unprocessable as exc:
        return _answer("E04", message=exc.message)


async def _bind(
    account: str,
    request: Request[Any, Any, Any],
    membership: MembershipService,
    replay_guard: ReplayGuard,
    *,
    register: bool,
) -> Response[dict[str, Any]]:
    try:
        call = await _verified(request, account, membership)
    except Refused as refused:
        return refused.response()
    params = call.params
    claims = _claims(params)
    scope = f"{CHANNEL}:{account}"
    try:
        if not await replay_guard.claim(scope, call.signature, until=call.sent_at + MAX_SKEW + REPLAY_MARGIN):
            log.warning("taobao.spi_replay_not_applied", account=account, method=params.get("method"))
            return await _status_answer(membership, params, claims)
    except Unprocessable as exc:
        return _answer("E04", message=exc.message)
    try:
        mobile = params.get("mobile", "").strip()
        if not mobile or not claims:
            await replay_guard.release(scope, call.signature)
            return _answer("E04", message="mobile and one of ouid/omid/open_id are required")
        result = await membership.bind(
            mobile=mobile,
            claims=claims,
            account_name=account,
            register=register,
            profile=BuyerProfile(name=params.get("nick") or None),
            actor="tmall-membership",
        )
        if result is None:
            return _answer("E01")
        status = await membership.status(mobile=mobile, claims=claims)
    except TongcrmError as exc:  # an invalid mobile, claims owned by another member...: nothing was applied
        await replay_guard.release(scope, call.signature)
        return _answer("E04", message=exc.message)
    except Exception:
        await replay_guard.release(scope, call.signature)
        raise
    log.info("taobao.member_bound", account=account, member_id=result.member_id, created=result.created)
    return _answer("SUC", _member_block(status, params))


@post(
    f"{PREFIX}/{{account:str}}/member/bind",
    summary="会员通: bind the buyer to the member",
    tags=["taobao"],
    status_code=200,
)
async def bind(
    account: FromPath[str],
    request: Request[Any, Any, Any],
    membership: NamedDependency[MembershipService],
    replay_guard: NamedDependency[ReplayGuard],
) -> Response[dict[str, Any]]:
    return await _bind(account, request, membership, replay_guard, register=False)


@post(
    f"{PREFIX}/{{account:str}}/member/register",
    summary="会员通: enrol and bind the buyer",
    tags=["taobao"],
    status_code=200,
)
async def register(
    account: FromPath[str],
    request: Request[Any, Any, Any],
    membership: NamedDependency[MembershipService],
    replay_guard: NamedDependency[ReplayGuard],
) -> Response[dict[str, Any]]:
    return await _bind(account, request, membership, replay_guard, register=True)


MEMBERSHIP_ROUTES = RouteSpec(handlers=(bind_query, bind, register), public_paths=(PREFIX,))
