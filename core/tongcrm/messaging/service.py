"""Messaging services: messenger accounts, templates, queueing messages into the send log, reading it back,
and recording what gateways report (receipts, replies). No HTTP here; the dispatcher lives in :mod:`.dispatch`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.consent import service as consent
from tongcrm.crypto import Vault
from tongcrm.db.base import utcnow
from tongcrm.db.dialect import insert
from tongcrm.db.lengths import check_fits, too_long
from tongcrm.errors import BadRequest, Conflict, NotFound, PluginError, Unprocessable, shown
from tongcrm.identity.models import Identity
from tongcrm.jobs.models import OutboxEvent
from tongcrm.logging import get_logger
from tongcrm.members.phone import MOBILE_CONTEXT, MOBILE_INDEX_PURPOSE
from tongcrm.messaging import feed, holdout
from tongcrm.messaging import templates as tpl
from tongcrm.messaging.models import (
    InboundRecord,
    Message,
    MessageTemplate,
    MessengerAccount,
    SmsOptOut,
)
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.settings import split_settings
from tongcrm.plugin.types import (
    DeliveryReceipt,
    InboundReply,
    MessengerContext,
    MessengerSpec,
    SendRateGate,
    validate_name,
)
from tongcrm.privacy.redact import redact
from tongcrm.privacy.sealed import INBOUND_PAYLOAD, seal

log = get_logger(__name__)

SECRETS_CONTEXT = "messenger_account.secrets"
_CALLBACK_PURPOSE = "messaging.callback"
STATUSES = ("queued", "sending", "sent", "in_doubt", "delivered", "failed", "refused")
PRIORITY = {"service": 0, "marketing": 1}


# -------------------------------------------------------------------------------------------------------------
# messenger accounts


def _spec(host: PluginHost, messenger: str) -> MessengerSpec:
    specs = host.messengers()
    if messenger not in specs:
        known = ", ".join(sorted(specs)) or "none installed"
        raise BadRequest(f"no messenger named {messenger!r} (installed messengers: {known})")
    return specs[messenger]


def _split_settings(
    spec: MessengerSpec, given: Mapping[str, str | None]
) -> tuple[dict[str, str], dict[str, str]]:
    return split_settings(spec.settings, given, what=f"messenger {spec.name!r}")


async def create_account(
    session: AsyncSession,
    host: PluginHost,
    vault: Vault,
    messenger: str,
    name: str,
    settings: Mapping[str, str | None],
) -> MessengerAccount:
    spec = _spec(host, messenger)
    try:
        validate_name(name, "messenger account")
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    check_fits(name, "name", MessengerAccount.name)
    plain, secret = _split_settings(spec, settings)
    if (await session.execute(sa.select(MessengerAccount.id).where(MessengerAccount.name == name))).first():
        raise Conflict(f"a messenger account named {name!r} already exists")
    account = MessengerAccount(
        messenger=messenger,
        name=name,
        settings=plain,
        secrets=vault.encrypt(json.dumps(secret), context=SECRETS_CONTEXT) if secret else None,
        secret_names=sorted(secret),
        status="active",
        status_code="",
        status_detail="",
    )
    session.add(account)
    await session.flush()
    return account


async def get_account(session: AsyncSession, name: str) -> MessengerAccount:
    account = (
        await session.execute(sa.select(MessengerAccount).where(MessengerAccount.name == name))
    ).scalar_one_or_none()
    if account is None:
        raise NotFound(f"no messenger account named {name!r}")
    return account


async def list_accounts(session: AsyncSession) -> list[MessengerAccount]:
    return list(
        (await session.execute(sa.select(MessengerAccount).order_by(MessengerAccount.name))).scalars()
    )


def messenger_context(
    account: MessengerAccount,
    vault: Vault,
    clock: Callable[[], datetime],
    *,
    rate_gate: SendRateGate | None = None,
) -> MessengerContext:
    settings: dict[str, str] = dict(account.settings)
    if account.secrets:
        settings.update(json.loads(vault.decrypt(account.secrets, context=SECRETS_CONTEXT)))
    return MessengerContext(name=account.name, settings=settings, clock=clock, rate_gate=rate_gate)


async def pause_account(
    session: AsyncSession, account_id: int, code: str, detail: str, *, at: datetime
) -> bool:
    """Pause sending through the account; True when this call paused it (it was active)."""
    result = await session.execute(
        sa.update(MessengerAccount)
        .where(MessengerAccount.id == account_id, MessengerAccount.status == "active")
        .values(status="paused", status_code=code[:100], status_detail=detail, paused_at=at, updated_at=at)
    )
    paused = bool(getattr(result, "rowcount", 0))
    if paused:
        log.warning("messenger account paused", account_id=account_id, code=code)
    return paused


async def resume_account(session: AsyncSession, name: str) -> MessengerAccount:
    account = await get_account(session, name)
    account.status = "active"
    account.status_code = ""
    account.status_detail = ""
    account.paused_at = None
    await session.flush()
    return account


def callback_token(vault: Vault, account_name: str) -> str:
    """The token a gateway's callback URL carries for this account (gateways cannot send our API key).

    Derived from the secret key, so nothing is stored; rotating ``TONGCRM_SECRET_KEY`` rotates it, and tokens of
    keys still listed in ``TONGCRM_OLD_SECRET_KEYS`` keep working meanwhile."""
    return vault.blind_index(account_name, purpose=_CALLBACK_PURPOSE)


def check_callback_token(vault: Vault, account_name: str, token: str) -> bool:
    return any(
        hmac.compare_digest(candidate.encode(), token.encode())
        for candidate in vault.blind_indexes(account_name, purpose=_CALLBACK_PURPOSE)
    )


# -------------------------------------------------------------------------------------------------------------
# templates


async def create_template(
    session: AsyncSession,
    *,
    name: str,
    account: str,
    purpose: str,
    signature: str,
    template_code: str,
    text: str,
    variables: Sequence[str] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> MessageTemplate:
    try:
        validate_name(name, "template")
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    defaults = dict(defaults or {})
    declared = tpl.validate_template(purpose, text, variables, defaults)
    if not signature.strip() or not template_code.strip():
        raise Unprocessable("a template needs a sender signature and the provider's template code")
    check_fits(name, "name", MessageTemplate.name)
    check_fits(signature.strip(), "signature", MessageTemplate.signature)
    check_fits(template_code.strip(), "template_code", MessageTemplate.template_code)
    owner = await get_account(session, account)
    if (await session.execute(sa.select(MessageTemplate.id).where(MessageTemplate.name == name))).first():
        raise Conflict(f"a template named {name!r} already exists")
    template = MessageTemplate(
        name=name,
        account_id=owner.id,
        purpose=purpose,
        signature=signature.strip(),
        template_code=template_code.strip(),
        text=text,
        variables=declared,
        defaults=defaults,
    )
    session.add(template)
    await session.flush()
    return template


async def get_template(session: AsyncSession, name: str) -> MessageTemplate:
    template = (
        await session.execute(sa.select(MessageTemplate).where(MessageTemplate.name == name))
    ).scalar_one_or_none()
    if template is None:
        raise NotFound(f"no message template named {name!r}")
    return template


async def list_templates(session: AsyncSession) -> list[MessageTemplate]:
    return list((await session.execute(sa.select(MessageTemplate).order_by(MessageTemplate.name))).scalars())


# -------------------------------------------------------------------------------------------------------------
# queueing


def dedupe_key(flow: str, member_id: int, order_id: int | None, occasion: str | None = None) -> str:
    """``<flow>:<member>:<order or ->``, plus ``:<occasion>`` for flows that may message the same order more
    than once, each time for a different occasion (a refund notice per refunded amount)."""
    key = f"{flow}:{member_id}:{order_id if order_id is not None else '-'}"
    return f"{key}:{occasion}" if occasion else key


@dataclass(frozen=True, slots=True)
class Target:
    member_id: int
    order_id: int | None = None
    params: Mapping[str, str] | None = None
    #: Distinguishes several messages of one flow about one order (see :func:`dedupe_key`).
    occasion: str | None = None
    #: In the campaign's hold-out group: logged, decided by the policy, never sent (see :mod:`.holdout`).
    held_out: bool = False


def validate_flow_name(flow: str) -> str:
    kind, _, rest = flow.partition(".")
    if kind not in ("flow", "campaign", "journey") or not rest or len(flow) > 100:
        raise Unprocessable(
            "a flow is 'flow.<name>', 'campaign.<name>' or 'journey.<name>' (at most 100 characters)"
        )
    return flow


async def queue_messages(
    session: AsyncSession,
    flow: str,
    template: MessageTemplate,
    targets: Sequence[Target],
    *,
    now: datetime | None = None,
    not_before: datetime | None = None,
) -> int:
    """Log one queued message per target; a target already logged for this flow (or campaign) and order is
    skipped by the unique send log. Returns how many were new. The policy runs when the message is sent."""
    validate_flow_name(flow)
    now = now or utcnow()
    rows = [
        {
            "dedupe_key": dedupe_key(flow, t.member_id, t.order_id, t.occasion),
            "flow": flow,
            "member_id": t.member_id,
            "order_id": t.order_id,
            "template_id": template.id,
            "account_id": template.account_id,
            "purpose": template.purpose,
            "priority": PRIORITY[template.purpose],
            "params": dict(t.params or {}),
            "held_out": t.held_out,
            "status": "queued",
            "reason": "",
            "code": "",
            "detail": "",
            "attempts": 0,
            "next_attempt_at": not_before or now,
            "created_at": now,
            "updated_at": now,
        }
        for t in targets
    ]
    new = 0
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        stmt = insert(session, Message.__table__).on_conflict_do_nothing(index_elements=["dedupe_key"])
        result = await session.execute(stmt.returning(Message.__table__.c.id), chunk)
        new += len(result.all())
    return new


async def queue_selected(
    session: AsyncSession,
    flow: str,
    template: MessageTemplate,
    source: sa.Select[int, bool],
    *,
    occasion: str,
    now: datetime,
) -> int:
    """Log one queued message per ``(member_id, held_out)`` row of ``source`` in one ``INSERT … SELECT`` — a
    campaign run's million messages without a million Python rows. Same keys, skipping and policy as
    :func:`queue_messages` (the send-log key is built by the database: ``<flow>:<member>:-:<occasion>``).
    Returns how many were new."""
    validate_flow_name(flow)
    rows = source.subquery("targets")
    member_id, held_out = rows.c[0], rows.c[1]
    table = Message.__table__
    columns = {
        "dedupe_key": sa.literal(f"{flow}:") + sa.cast(member_id, sa.String) + sa.literal(f":-:{occasion}"),
        "flow": sa.literal(flow, sa.String),
        "member_id": member_id,
        "template_id": sa.literal(template.id, sa.BigInteger),
        "account_id": sa.literal(template.account_id, sa.BigInteger),
        "purpose": sa.literal(template.purpose, sa.String),
        "priority": sa.literal(PRIORITY[template.purpose], sa.SmallInteger),
        "params": sa.literal({}, table.c.params.type),
        "held_out": held_out,
        "status": sa.literal("queued", sa.String),
        "reason": sa.literal("", sa.String),
        "code": sa.literal("", sa.String),
        "detail": sa.literal("", sa.Text),
        "attempts": sa.literal(0, sa.Integer),
        "next_attempt_at": sa.literal(now, table.c.next_attempt_at.type),
        "created_at": sa.literal(now, table.c.created_at.type),
        "updated_at": sa.literal(now, table.c.updated_at.type),
    }
    stmt = (
        insert(session, table)
        # the WHERE keeps SQLite from reading ON CONFLICT as a join's ON
        .from_select(list(columns), sa.select(*columns.values()).select_from(rows).where(sa.true()))
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
    )
    result = await session.execute(stmt)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -------------------------------------------------------------------------------------------------------------
# reading the log


@dataclass(frozen=True, slots=True)
class MessageQuery:
    member_id: int | None = None
    flow: str | None = None
    status: str | None = None
    order_id: int | None = None
    limit: int = 100
    offset: int = 0


async def list_messages(session: AsyncSession, query: MessageQuery) -> list[Message]:
    stmt = sa.select(Message)
    if query.member_id is not None:
        from tongcrm.members.service import resolve_live_id

        live = await resolve_live_id(session, query.member_id)
        stmt = stmt.where(Message.member_id.in_({query.member_id, live or query.member_id}))
    if query.flow:
        stmt = stmt.where(Message.flow == query.flow)
    if query.status:
        if query.status not in STATUSES:
            # a malformed filter, as an unknown order status is (400), not a refused request (422)
            raise BadRequest(f"unknown status {shown(query.status)}; use one of {', '.join(STATUSES)}")
        stmt = stmt.where(Message.status == query.status)
    if query.order_id is not None:
        stmt = stmt.where(Message.order_id == query.order_id)
    stmt = stmt.order_by(Message.id.desc()).limit(min(max(query.limit, 1), 500)).offset(max(query.offset, 0))
    return list((await session.execute(stmt)).scalars())


async def get_message(session: AsyncSession, message_id: int) -> Message:
    message = await session.get(Message, message_id)
    if message is None:
        raise NotFound(f"no message {message_id}")
    return message


@dataclass(frozen=True, slots=True)
class CampaignStatus:
    """A campaign's send log by status, and its two groups: members assigned to the hold-out, those of them
    held out (eligible: the policy would have sent to them), and the treatment members reached."""

    flow: str
    statuses: dict[str, int]
    assigned_holdout: int
    held_out: int
    treatment_reached: int


async def campaign_status(session: AsyncSession, flow: str) -> CampaignStatus:
    validate_flow_name(flow)
    statuses = (await status_counts(session, flow)).get(flow, {s: 0 for s in STATUSES})
    left = await feed.unwritten(session, flow)  # decided, not in the send log yet: queued all the same
    statuses["queued"] += left.messages
    reached = Message.status.in_(("sent", "delivered"))
    row = (
        await session.execute(
            sa.select(
                sa.func.count().filter(Message.held_out.is_(True)),
                sa.func.count().filter(Message.held_out.is_(True), Message.reason == holdout.HOLDOUT_REASON),
                sa.func.count().filter(Message.held_out.is_(False), reached),
            ).where(Message.flow == flow)
        )
    ).one()
    return CampaignStatus(flow, statuses, int(row[0]) + left.held_out, int(row[1]), int(row[2]))


async def status_counts(session: AsyncSession, flow: str | None = None) -> dict[str, dict[str, int]]:
    """``{flow: {status: count}}``."""
    stmt = sa.select(Message.flow, Message.status, sa.func.count()).group_by(Message.flow, Message.status)
    if flow:
        stmt = stmt.where(Message.flow == flow)
    out: dict[str, dict[str, int]] = {}
    for f, status, count in (await session.execute(stmt)).all():
        out.setdefault(f, {s: 0 for s in STATUSES})[status] = int(count)
    return out


# -------------------------------------------------------------------------------------------------------------
# status events


def status_events(rows: Sequence[tuple[int, int, str, str]], at: datetime) -> list[dict[str, Any]]:
    """Outbox rows for ``message_status`` (message id, member id, status, code)."""
    return [
        {
            "name": "message_status",
            "payload": {"message_id": mid, "member_id": member, "status": status, "code": code},
            "occurred_at": at,
        }
        for mid, member, status, code in rows
    ]


async def emit_status(session: AsyncSession, rows: Sequence[tuple[int, int, str, str]], at: datetime) -> None:
    events = status_events(rows, at)
    if events:
        await session.execute(sa.insert(OutboxEvent), events)


# -------------------------------------------------------------------------------------------------------------
# inbound: receipts and replies


@dataclass(frozen=True, slots=True)
class InboundResult:
    new: int
    duplicates: int
    matched: int
    errors: int
    opt_outs: int = 0


#: ``message_inbound.dedupe_key`` of an unparseable entry: a keyed hash, since the entry holds a number
ERROR_KEY_PURPOSE = "message_inbound.error"


async def _record_errors(
    session: AsyncSession,
    vault: Vault,
    account_id: int,
    kind: str,
    errors: Sequence[tuple[str, str]],
    at: datetime,
) -> int:
    """Keep entries that could not be parsed, once each, sealed: they are the gateway's raw entries, phone
    number included (:mod:`tongcrm.privacy.sealed`)."""
    rows = [
        {
            "account_id": account_id,
            "kind": "error",
            "dedupe_key": f"{kind}-error:" + vault.blind_index(payload, purpose=ERROR_KEY_PURPOSE)[:80],
            "outcome": redact(reason.replace("\x00", ""))[:500],
            "payload": seal(vault, payload, context=INBOUND_PAYLOAD),
            "at": at,
        }
        for reason, payload in errors
    ]
    if rows:
        stmt = insert(session, InboundRecord.__table__).on_conflict_do_nothing(
            index_elements=["account_id", "dedupe_key"]
        )
        await session.execute(stmt, rows)
    return len(rows)


def _unstored(what: str, exc: sa.exc.DBAPIError) -> tuple[str, str]:
    """An entry the database refused, as an error to record in its place (the savepoint it was tried on is
    gone): what it was, never its values."""
    log.warning("inbound entry not stored", entry=what, error_type=type(exc.orig).__name__)
    return (f"{what} could not be stored ({type(exc.orig).__name__})", what)


async def apply_receipt(
    session: AsyncSession, message: Message, delivered: bool, code: str, at: datetime
) -> bool:
    """Move a sent (or in-doubt) message to delivered or failed. A report for an in-doubt message settles the
    doubt: the gateway did accept it. A receipt for a message in any other state (already final, or not yet
    recorded as sent) changes nothing and returns False."""
    if message.status not in ("sent", "in_doubt"):
        return False
    message.status = "delivered" if delivered else "failed"
    message.code = code[:100]
    if delivered:
        message.delivered_at = at
    message.finished_at = at
    message.updated_at = utcnow()
    await emit_status(session, [(message.id, message.member_id, message.status, message.code)], utcnow())
    return True


async def record_receipts(
    session: AsyncSession,
    vault: Vault,
    account_id: int,
    receipts: Sequence[DeliveryReceipt],
    errors: Sequence[tuple[str, str]] = (),
) -> InboundResult:
    """Record delivery receipts once each (by ``dedupe_key``) and apply them to their messages, matched by
    our message id when the gateway echoes it, else by the gateway's per-recipient id. Each receipt is
    recorded on its own savepoint: one the database refuses is kept as an error, the others apply."""
    now = utcnow()
    new = dup = matched = 0
    failed: list[tuple[str, str]] = []
    for receipt in receipts:
        try:
            async with session.begin_nested():
                outcome = await _record_receipt(session, account_id, receipt)
        except sa.exc.DBAPIError as exc:
            failed.append(_unstored("delivery receipt", exc))
            continue
        new += outcome != "duplicate"
        dup += outcome == "duplicate"
        matched += outcome == "matched"
    errs = await _record_errors(session, vault, account_id, "receipt", [*errors, *failed], now)
    return InboundResult(new, dup, matched, errs)


async def _record_receipt(session: AsyncSession, account_id: int, receipt: DeliveryReceipt) -> str:
    """``duplicate``, ``matched`` (applied to its message) or ``recorded``."""
    key = receipt.dedupe_key or f"receipt:{receipt.provider_id}:{receipt.code}:{receipt.at.isoformat()}"
    stmt = (
        insert(session, InboundRecord.__table__)
        .values(
            account_id=account_id,
            kind="receipt",
            dedupe_key=key[:200],
            provider_id=receipt.provider_id,
            outcome=f"{'delivered' if receipt.delivered else 'failed'}:{receipt.code}"[:500],
            payload="",
            at=receipt.at,
        )
        .on_conflict_do_nothing(index_elements=["account_id", "dedupe_key"])
        .returning(InboundRecord.__table__.c.id)
    )
    inbound_id = (await session.execute(stmt)).scalar_one_or_none()
    if inbound_id is None:
        return "duplicate"
    message = await _match(session, account_id, receipt)
    if message is None:
        return "recorded"  # the send result is not recorded yet; matched when it is (see dispatch)
    await session.execute(
        sa.update(InboundRecord).where(InboundRecord.id == inbound_id).values(message_id=message.id)
    )
    if await apply_receipt(session, message, receipt.delivered, receipt.code, receipt.at):
        return "matched"
    return "recorded"


def _is_row_id(text: str) -> bool:
    """Whether a gateway's echo of our message id can be one: ASCII digits within a 64-bit id. The echo is
    whatever the push says, and ``int()`` of "²" or of a 30-digit number failed the whole push."""
    return text.isascii() and text.isdigit() and 0 < int(text) < 2**63


async def _match(session: AsyncSession, account_id: int, receipt: DeliveryReceipt) -> Message | None:
    if receipt.message_id and _is_row_id(receipt.message_id):
        message = await session.get(Message, int(receipt.message_id), with_for_update=True)
        if (
            message is not None
            and message.account_id == account_id
            and (receipt.provider_id is None or message.provider_id in (None, receipt.provider_id))
        ):
            return message
    if receipt.provider_id:
        return (
            await session.execute(
                sa.select(Message)
                .where(Message.provider_id == receipt.provider_id, Message.account_id == account_id)
                .with_for_update()
            )
        ).scalar_one_or_none()
    return None


async def apply_pending_receipts(session: AsyncSession, account_id: int, provider_ids: Sequence[str]) -> int:
    """Receipts that arrived before their send result was recorded: apply them now."""
    if not provider_ids:
        return 0
    applied = 0
    for start in range(0, len(provider_ids), 1000):
        chunk = list(provider_ids[start : start + 1000])
        rows = (
            await session.execute(
                sa.select(InboundRecord)
                .where(
                    InboundRecord.account_id == account_id,
                    InboundRecord.kind == "receipt",
                    InboundRecord.message_id.is_(None),
                    InboundRecord.provider_id.in_(chunk),
                )
                .order_by(InboundRecord.id)
            )
        ).scalars()
        for record in list(rows):
            message = (
                await session.execute(
                    sa.select(Message).where(
                        Message.provider_id == record.provider_id, Message.account_id == account_id
                    )
                )
            ).scalar_one_or_none()
            if message is None:
                continue
            record.message_id = message.id
            delivered, _, code = record.outcome.partition(":")
            if await apply_receipt(session, message, delivered == "delivered", code, record.at):
                applied += 1
    return applied


async def members_by_mobile(session: AsyncSession, vault: Vault, mobile_e164: str) -> list[int]:
    indexes = vault.blind_indexes(mobile_e164, purpose=MOBILE_INDEX_PURPOSE)
    rows = await session.execute(
        sa.select(Identity.member_id).where(Identity.kind == "mobile", Identity.value.in_(indexes))
    )
    return sorted({r[0] for r in rows})


async def record_replies(
    session: AsyncSession,
    vault: Vault,
    account_id: int,
    replies: Sequence[tuple[InboundReply, str | None]],
    errors: Sequence[tuple[str, str]] = (),
) -> InboundResult:
    """Record member replies once each; a reply that is an opt-out (``keyword`` not None) stops marketing
    under its signature for that number — for its members' consent and for the number itself — before the
    next send, since the dispatcher asks the policy right before each one. Each reply is recorded on its own
    savepoint: one the database refuses is kept as an error, and never takes an opt-out beside it down.
    The reply's text is the member's words: it is kept sealed."""
    now = utcnow()
    new = dup = opt_outs = 0
    failed: list[tuple[str, str]] = []
    for reply, keyword in replies:
        # a signature the columns cannot keep whole is the entry's error, as a malformed entry is: cut, an
        # opt-out would stop marketing under another signature and leave the member's own one sending
        if (why := too_long(reply.signature, "signature", SmsOptOut.signature)) is not None:
            entry = {
                "dedupe_key": reply.dedupe_key,
                "mobile": reply.mobile_e164,
                "signature": reply.signature,
            }
            failed.append((f"reply not recorded: {why}", json.dumps(entry, ensure_ascii=False)))
            continue
        try:
            async with session.begin_nested():
                recorded = await _record_reply(session, vault, account_id, reply, keyword)
        except sa.exc.DBAPIError as exc:
            failed.append(_unstored("reply", exc))
            continue
        if not recorded:
            dup += 1
            continue
        new += 1
        opt_outs += keyword is not None
    errs = await _record_errors(session, vault, account_id, "reply", [*errors, *failed], now)
    return InboundResult(new, dup, 0, errs, opt_outs)


async def _record_reply(
    session: AsyncSession, vault: Vault, account_id: int, reply: InboundReply, keyword: str | None
) -> bool:
    """False: a reply already recorded (the gateway's retry)."""
    members = await members_by_mobile(session, vault, reply.mobile_e164)
    stmt = (
        insert(session, InboundRecord.__table__)
        .values(
            account_id=account_id,
            kind="reply",
            dedupe_key=reply.dedupe_key[:200],
            member_id=members[0] if members else None,
            outcome=f"opt_out:{keyword}" if keyword else "reply",
            payload=seal(vault, reply.content[:1000], context=INBOUND_PAYLOAD),
            at=reply.at,
        )
        .on_conflict_do_nothing(index_elements=["account_id", "dedupe_key"])
        .returning(InboundRecord.__table__.c.id)
    )
    if (await session.execute(stmt)).scalar_one_or_none() is None:
        return False
    if keyword is not None:
        await record_opt_out(session, vault, reply.mobile_e164, reply.signature, keyword, reply.at, members)
    return True


async def record_opt_out(
    session: AsyncSession,
    vault: Vault,
    mobile_e164: str,
    signature: str,
    keyword: str,
    at: datetime,
    members: Sequence[int] | None = None,
) -> None:
    # a cut signature would stop marketing under another (or no) signature: refused whole instead
    check_fits(signature, "signature", SmsOptOut.signature, refuse=BadRequest)
    index = vault.blind_index(mobile_e164, purpose=MOBILE_INDEX_PURPOSE)
    stmt = insert(session, SmsOptOut.__table__).values(
        mobile_index=index,
        signature=signature,
        mobile_enc=vault.encrypt(mobile_e164, context=MOBILE_CONTEXT),
        keyword=keyword[:32],
        at=at,
        created_at=utcnow(),
    )
    await session.execute(stmt.on_conflict_do_nothing(index_elements=["mobile_index", "signature"]))
    if members is None:
        members = await members_by_mobile(session, vault, mobile_e164)
    for member_id in members:
        await consent.record_consent(
            session,
            member_id,
            "marketing",
            "opt_out",
            source="sms_reply",
            signature=signature,
            proof=f"replied {keyword!r}",
            at=at,
        )
    log.info("sms opt-out recorded", members=len(members), keyword=keyword)


async def opted_out_indexes(session: AsyncSession, indexes: Sequence[str], signature: str) -> set[str]:
    out: set[str] = set()
    for start in range(0, len(indexes), 5000):
        chunk = list(indexes[start : start + 5000])
        rows = await session.execute(
            sa.select(SmsOptOut.mobile_index).where(
                SmsOptOut.mobile_index.in_(chunk), SmsOptOut.signature == signature
            )
        )
        out.update(r[0] for r in rows)
    return out


def ensure_messenger(host: PluginHost, name: str) -> MessengerSpec:
    try:
        return _spec(host, name)
    except BadRequest as exc:
        raise PluginError(exc.message) from exc
