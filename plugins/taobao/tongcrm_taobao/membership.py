"""Tmall brand membership (会员通): the SPIs Tmall calls on the brand, served as plugin routes.

- ``tmall.mei.crm.member.bind.query`` → is this buyer (by mobile) a member, and already bound?
  ``query_code``: SUC (member and bound), E01 (no member), E02 (member, not bound yet), E04 (error, retry).
- ``tmall.mei.crm.bind`` → bind the buyer's ``ouid``/``omid``/``open_uid`` to the member found by mobile.
- ``tmall.mei.crm.member.register`` → enrol the buyer (create the member when none has the mobile) and bind.

Tmall signs each call like a TOP request (``sign`` over the sorted parameters with the app secret, the
account's ``sign_method``) and retries — it enrols buyers itself in "flight mode" when the brand is slow and
backfills up to ten times a day — so every call is idempotent and answers within the platform's ~1.2 s budget.
The routes are public (Tmall has no tongcrm API key); the signature is the authentication. The mobile arrives
in plain text and is never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from tongcrm.errors import NotFound, Unprocessable
from tongcrm.membership import MembershipService
from tongcrm.plugin.types import BuyerProfile, IdentityClaim, RouteSpec

from tongcrm_taobao.signing import parse_sign_method, sign
from tongcrm_taobao.timefmt import parse_top_time

log = structlog.get_logger(__name__)

PREFIX = "/callbacks/taobao"
MAX_SKEW = timedelta(minutes=10)
CHANNEL = "taobao"


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


async def _verified(
    request: Request[Any, Any, Any], account: str, membership: MembershipService
) -> dict[str, str]:
    """The call's parameters once its signature and timestamp check out; raises otherwise."""
    params: dict[str, str] = dict(request.query_params.items())
    if request.method == "POST":
        form = await request.form()
        params.update({k: str(v) for k, v in form.items()})
    try:
        settings = await membership.account_settings(account, CHANNEL)
    except NotFound:
        raise Unprocessable(f"unknown Taobao account {account!r}") from None
    given = params.pop("sign", "")
    method = parse_sign_method(params.get("sign_method") or settings.get("sign_method") or "hmac-sha256")
    expected = sign(params, settings["app_secret"], method)
    if not given or not hmac.compare_digest(given.upper(), expected):
        log.warning("taobao.spi_bad_signature", account=account, method=params.get("method"))
        raise Unprocessable("invalid signature")
    try:
        sent = parse_top_time(params.get("timestamp", ""))
    except ValueError:
        raise Unprocessable("missing or invalid timestamp") from None
    if abs(datetime.now(UTC) - sent) > MAX_SKEW:
        raise Unprocessable("timestamp outside the allowed 10 minutes")
    return params


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
        params = await _verified(request, account, membership)
        mobile = params.get("mobile", "").strip()
        if not mobile:
            return _answer("E04", message="mobile is required")
        status = await membership.status(mobile=mobile, claims=_claims(params))
    except Unprocessable as exc:
        return _answer("E04", message=exc.message)
    if status.member_id is None:
        return _answer("E01")
    return _answer("SUC" if status.bound else "E02", _member_block(status, params))


async def _bind(
    account: str, request: Request[Any, Any, Any], membership: MembershipService, *, register: bool
) -> Response[dict[str, Any]]:
    try:
        params = await _verified(request, account, membership)
        mobile = params.get("mobile", "").strip()
        claims = _claims(params)
        if not mobile or not claims:
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
    except Unprocessable as exc:
        return _answer("E04", message=exc.message)
    log.info("taobao.member_bound", account=account, member_id=result.member_id, created=result.created)
    return _answer("SUC", _member_block(status, params))


@post(
    f"{PREFIX}/{{account:str}}/member/bind",
    summary="会员通: bind the buyer to the member",
    tags=["taobao"],
    status_code=200,
)
async def bind(
    account: FromPath[str], request: Request[Any, Any, Any], membership: NamedDependency[MembershipService]
) -> Response[dict[str, Any]]:
    return await _bind(account, request, membership, register=False)


@post(
    f"{PREFIX}/{{account:str}}/member/register",
    summary="会员通: enrol and bind the buyer",
    tags=["taobao"],
    status_code=200,
)
async def register(
    account: FromPath[str], request: Request[Any, Any, Any], membership: NamedDependency[MembershipService]
) -> Response[dict[str, Any]]:
    return await _bind(account, request, membership, register=True)


MEMBERSHIP_ROUTES = RouteSpec(handlers=(bind_query, bind, register), public_paths=(PREFIX,))
