"""The callback routes Aliyun pushes to: delivery reports (``SmsReport``) and member replies (``SmsUp``).

``POST /sms/aliyun/{account}/report?token=…`` and ``POST /sms/aliyun/{account}/up?token=…``, where ``account``
is the tongcrm messenger account and ``token`` its callback token (shown to admins by
``GET /api/messenger-accounts``). Aliyun cannot send a tongcrm API key, so these paths are public and the token
authenticates the push instead; a wrong token gets 401 and no ack, so nothing is recorded.

Each push: parse (:mod:`tongcrm_sms_gateway.receipts`) → hand the records and the unparseable entries to the
core in one transaction → answer ``{"code":0,"msg":"接收成功"}``. Records carry dedupe keys that are stable
across Aliyun's retries, so a retried push changes nothing. Replies matching an opt-out keyword (the core's
configured list, default T, TD, R, 退订) are recorded as opt-outs for that signature.
"""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response, Router, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery
from tongcrm.messaging.inbox import Inbox, provide_inbox
from tongcrm.plugin.types import DeliveryReceipt, InboundReply, RouteSpec

from tongcrm_sms_gateway.receipts import OptOutMatcher, ack_bytes, parse_sms_reports, parse_sms_up

__all__ = ["MESSENGER", "PREFIX", "route_spec"]

log = structlog.get_logger(__name__)

PREFIX = "/sms/aliyun"
MESSENGER = "aliyun_sms"
MAX_BODY = 5 * 1024 * 1024


def _ack() -> Response[bytes]:
    return Response(ack_bytes(), media_type="application/json; charset=utf-8", status_code=200)


async def _body(request: Request[Any, Any, Any]) -> bytes:
    return await request.body()


@post("/{account:str}/report", status_code=200, summary="Aliyun SmsReport push (delivery reports)")
async def sms_report(
    request: Request[Any, Any, Any],
    account: FromPath[str],
    inbox: NamedDependency[Inbox],
    token: FromQuery[str] = "",
) -> Response[bytes]:
    account_id = await inbox.authenticate(MESSENGER, account, token)
    outcome = parse_sms_reports(await _body(request))
    receipts = [
        DeliveryReceipt(
            message_id=p.receipt.message_id,
            provider_id=p.receipt.provider_id,
            delivered=p.receipt.delivered,
            code=p.receipt.code,
            at=p.receipt.at,
            dedupe_key=p.dedupe_key,
        )
        for p in outcome.records
    ]
    errors = [(e.reason, e.payload) for e in outcome.errors]
    result = await inbox.record_receipts(account_id, receipts, errors)
    log.info(
        "aliyun_sms.reports",
        account=account,
        new=result.new,
        duplicates=result.duplicates,
        matched=result.matched,
        errors=result.errors,
    )
    return _ack()


@post("/{account:str}/up", status_code=200, summary="Aliyun SmsUp push (member replies)")
async def sms_up(
    request: Request[Any, Any, Any],
    account: FromPath[str],
    inbox: NamedDependency[Inbox],
    token: FromQuery[str] = "",
) -> Response[bytes]:
    account_id = await inbox.authenticate(MESSENGER, account, token)
    outcome = parse_sms_up(await _body(request))
    matcher = OptOutMatcher(keywords=inbox.opt_out_keywords)
    replies: list[tuple[InboundReply, str | None]] = [
        (r, matcher.keyword(r.content)) for r in outcome.records
    ]
    errors = [(e.reason, e.payload) for e in outcome.errors]
    result = await inbox.record_replies(account_id, replies, errors)
    log.info(
        "aliyun_sms.replies",
        account=account,
        new=result.new,
        duplicates=result.duplicates,
        opt_outs=result.opt_outs,
        errors=result.errors,
    )
    return _ack()


def route_spec() -> RouteSpec:
    router = Router(
        path=PREFIX,
        route_handlers=[sms_report, sms_up],
        dependencies={"inbox": Provide(provide_inbox)},
        tags=["sms_gateway"],
        request_max_body_size=MAX_BODY,
    )
    return RouteSpec(handlers=(router,), public_paths=(PREFIX,))
