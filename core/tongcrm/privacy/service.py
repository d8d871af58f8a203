"""Members' rights under PIPL: a copy of everything kept about a member (art. 45), and erasure (art. 47).

**Export** gathers one member's data — profile (mobile in full), identities (a mobile as its number, other
kinds as the platform's id), consents, tags, orders with their lines, the points ledger, tier, messages sent
and replies received — as one JSON-ready document. A merged member is one person with the member it was
merged into: asking for a tombstone exports the live member, whose data includes everything the merge moved.

**Erasure** removes the member's personal data and keeps what the books need:

- removed: the profile (name, gender, birthday, place, mobile ciphertext and its masked-form index,
  provenance), every identity (the mobile's blind index and ciphertext, platform ids, cards: so nothing finds
  the member again), tags, the proof text of consent statements, the messages' variables, texts and gateway ids (the id holds a digest of
  the number), the text of the member's SMS replies, orders' shipments (tracking numbers), the personal
  values in merge records (matched claims, profile changes: such a merge cannot be undone any more);
- kept: the member row itself as an anonymous record (``status='erased'``), orders and their lines (amounts,
  goods, times: anonymous once the member is), the points ledger, lots and balance (so ``tongcrm verify``
  and reports stay right), tier history, entitlement grants;
- redacted: the content (``before``/``after``) of the audit entries about the member, which hold the name and
  profile as they changed (:func:`tongcrm.audit.service.redact`; the hash chain covers a salted digest of the
  content, so it still verifies, and one ``audit.redact`` entry names the redacted ones and gives the reason).
  Which entries: those whose object is the member or one of its tombstones (``object_type='member'``, its id:
  profile changes, tags, consents, reveals, counter enrolments, earlier exports), and those about a merge the
  member took part in (``object_type='merge'``, a merge whose survivor or absorbed member is one of them: their
  content is profile snapshots, and a merge moves the member's name into the survivor's, so the survivor's
  snapshot in such an entry goes too). Not redacted: entries that name the member only by id among others, such
  as a bulk ``member.reveal`` (``{"fields", "member_ids"}``): an id points at the anonymous record and is no
  personal data once the member is erased, and those entries hold nothing else about them. The entries'
  who/what/when stay, and so does the ``member.erase`` entry this erasure appends (its reason is the operator's
  text: it should name a request, not the person);
- also kept, deliberately: SMS opt-outs, which bind the number (by blind index) and not the member: the law
  requires a sender to stop once a number refused, and that duty outlives the member record.

Tombstones merged into the member are the same person: they are erased with it.

**A later order by the same buyer**: nothing links the buyer to the erased record any more, so identity
resolution treats them as someone new and creates a new member (the erased one stays anonymous; its points
are not carried over): erasure is final. An order from *before* the erasure that the platform sends again (a
refund, a status change) stays with the anonymous record: ingest does not resolve its buyer's claims again
(:func:`tongcrm.ingest.apply.apply_orders_page`), so the erased data is not rebuilt from an old order, and
its points are reversed on the record that earned them.

Both operations are audited (``member.export``, ``member.erase``, and ``audit.redact`` for the redaction); who
may call them (admins) is decided by the API and the CLI, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit import service as audit
from tongcrm.audit.models import AuditEntry
from tongcrm.audit.service import Actor
from tongcrm.channels.models import ChannelAccount
from tongcrm.consent.models import ConsentEvent
from tongcrm.crypto import Vault
from tongcrm.db.base import utcnow
from tongcrm.errors import NotFound
from tongcrm.identity.models import Identity, Merge
from tongcrm.logging import get_logger
from tongcrm.members.models import ERASED, Member, MemberTag
from tongcrm.members.phone import MOBILE_CONTEXT
from tongcrm.members.service import resolve_live_id
from tongcrm.messaging.models import InboundRecord, Message
from tongcrm.orders.models import Order, OrderLine
from tongcrm.points.models import PointsBalance, PointsEntry
from tongcrm.privacy.sealed import INBOUND_PAYLOAD, unseal
from tongcrm.tiers.models import MemberTier

log = get_logger(__name__)

#: how many hops of merges into a member are followed to find its tombstones (chains are short)
_MAX_HOPS = 50


def _json(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _row(obj: Any, *columns: str) -> dict[str, Any]:
    return {c: _json(getattr(obj, c)) for c in columns}


def _readable(vault: Vault, token: str | None, context: str) -> str | None:
    if not token:
        return None
    try:
        return vault.decrypt(token, context=context)
    except ValueError:  # its key is no longer configured: say so rather than fail the whole copy
        return "(not readable: its key is no longer configured)"


async def _member_for(session: AsyncSession, member_id: int) -> Member:
    live = await resolve_live_id(session, member_id)
    member = await session.get(Member, live) if live is not None else None
    if member is None:
        raise NotFound(f"no member {member_id}")
    return member


async def _tombstones(session: AsyncSession, member_id: int) -> list[int]:
    """Members merged into ``member_id``, directly or through other merges."""
    found: list[int] = []
    frontier = [member_id]
    for _ in range(_MAX_HOPS):
        if not frontier:
            break
        frontier = list(
            (
                await session.execute(
                    sa.select(Member.id).where(Member.merged_into_id.in_(frontier), Member.status == "merged")
                )
            ).scalars()
        )
        found.extend(frontier)
    return found


# -------------------------------------------------------------------------------------------------------------
# export


async def export_member(session: AsyncSession, vault: Vault, member_id: int, actor: Actor) -> dict[str, Any]:
    """Everything kept about one member, as JSON-ready data (see the module docstring). Audited."""
    member = await _member_for(session, member_id)
    mid = member.id
    ids = [mid, *await _tombstones(session, mid)]

    accounts = dict((await session.execute(sa.select(ChannelAccount.id, ChannelAccount.name))).all())
    identities = []
    for ident in (
        await session.execute(sa.select(Identity).where(Identity.member_id.in_(ids)).order_by(Identity.id))
    ).scalars():
        value = _readable(vault, ident.value_enc, MOBILE_CONTEXT) if ident.kind == "mobile" else ident.value
        identities.append(
            {
                "kind": ident.kind,
                "value": value,
                "account": accounts.get(ident.account_id) if ident.account_id else None,
                "first_seen_at": _json(ident.first_seen_at),
                "last_seen_at": _json(ident.last_seen_at),
            }
        )
    consents = [
        _row(c, "purpose", "signature", "status", "source", "proof", "recorded_at")
        for c in (
            await session.execute(
                sa.select(ConsentEvent).where(ConsentEvent.member_id.in_(ids)).order_by(ConsentEvent.id)
            )
        ).scalars()
    ]
    tags = sorted(
        set((await session.execute(sa.select(MemberTag.tag).where(MemberTag.member_id.in_(ids)))).scalars())
    )
    orders = await _orders(session, ids, accounts)
    ledger = [
        _row(e, "kind", "amount", "occurred_at", "available_from", "expires_at", "reason", "rule_code")
        | {"order_id": e.order_id}
        for e in (
            await session.execute(
                sa.select(PointsEntry).where(PointsEntry.member_id.in_(ids)).order_by(PointsEntry.id)
            )
        ).scalars()
    ]
    balance = await session.get(PointsBalance, mid)
    tier = await session.get(MemberTier, mid)
    messages = [
        _row(m, "flow", "purpose", "status", "reason", "created_at", "sent_at", "delivered_at")
        | {"params": dict(m.params or {})}
        for m in (
            await session.execute(sa.select(Message).where(Message.member_id.in_(ids)).order_by(Message.id))
        ).scalars()
    ]
    replies = [
        {"at": _json(r.at), "text": _reply_text(vault, r.payload), "outcome": r.outcome}
        for r in (
            await session.execute(
                sa.select(InboundRecord)
                .where(InboundRecord.member_id.in_(ids), InboundRecord.kind == "reply")
                .order_by(InboundRecord.id)
            )
        ).scalars()
    ]
    document = {
        "member_id": mid,
        "exported_at": _json(utcnow()),
        "merged_members": ids[1:],
        "profile": _row(
            member,
            "status",
            "name",
            "gender",
            "birthday",
            "province",
            "city",
            "source_channel",
            "source_store",
            "source_campaign",
            "lifecycle_stage",
            "created_at",
            "updated_at",
        )
        | {"mobile": _readable(vault, member.mobile_enc, MOBILE_CONTEXT)},
        "identities": identities,
        "consents": consents,
        "tags": tags,
        "orders": orders,
        "points": {
            "balance": _row(balance, *_BALANCE_COLUMNS) if balance is not None else None,
            "ledger": ledger,
        },
        "tier": _row(tier, "tier_code", "since", "override_code", "override_until")
        if tier is not None
        else None,
        "messages": messages,
        "replies": replies,
    }
    audit.record(
        session,
        actor,
        "member.export",
        "member",
        mid,
        after={
            section: len(document[section])
            for section in ("identities", "consents", "orders", "messages", "replies")
        }
        | {"ledger": len(ledger)},
    )
    log.info("member exported", member_id=mid, actor=actor.name)
    return document


_BALANCE_COLUMNS = ("available", "pending", "owed", "updated_at")


def _reply_text(vault: Vault, payload: str) -> str:
    try:
        return unseal(vault, payload, context=INBOUND_PAYLOAD)
    except ValueError:
        return "(not readable: its key is no longer configured)"


async def _orders(
    session: AsyncSession, ids: Sequence[int], accounts: dict[int, str]
) -> list[dict[str, Any]]:
    rows = (
        (await session.execute(sa.select(Order).where(Order.member_id.in_(ids)).order_by(Order.placed_at)))
        .scalars()
        .all()
    )
    lines: dict[int, list[dict[str, Any]]] = {o.id: [] for o in rows}
    order_ids = list(lines)
    for start in range(0, len(order_ids), 1000):
        chunk = order_ids[start : start + 1000]
        for line in (
            await session.execute(
                sa.select(OrderLine).where(OrderLine.order_id.in_(chunk)).order_by(OrderLine.id)
            )
        ).scalars():
            lines[line.order_id].append(
                _row(line, "sku", "title", "quantity", "unit_price_fen", "amount_fen", "refunded_fen")
            )
    return [
        _row(
            o,
            "id",
            "channel",
            "external_id",
            "status",
            "store_code",
            "total_fen",
            "paid_fen",
            "refunded_fen",
            "placed_at",
            "paid_at",
            "completed_at",
        )
        | {"account": accounts.get(o.account_id), "shipments": list(o.shipments or []), "lines": lines[o.id]}
        for o in rows
    ]


# -------------------------------------------------------------------------------------------------------------
# erasure


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What an erasure removed (row counts per kind), for the caller and the audit entry."""

    member_id: int
    members: int
    identities: int
    tags: int
    consents: int
    messages: int
    replies: int
    orders: int
    merges: int
    #: audit entries whose content was redacted
    audit_entries: int = 0
    already_erased: bool = False

    def counts(self) -> dict[str, int]:
        return {
            "members": self.members,
            "identities": self.identities,
            "tags": self.tags,
            "consents": self.consents,
            "messages": self.messages,
            "replies": self.replies,
            "orders": self.orders,
            "merges": self.merges,
            "audit_entries": self.audit_entries,
        }


def _count(result: Any) -> int:
    return int(cast(sa.CursorResult[Any], result).rowcount or 0)


async def erase_member(session: AsyncSession, member_id: int, actor: Actor, *, reason: str) -> ErasureReport:
    """Erase one member's personal data, keeping the anonymous books (see the module docstring). Audited
    with ``reason`` (the request it answers). Erasing an erased member again changes nothing and says so."""
    member = await _member_for(session, member_id)
    mid = member.id
    # one erasure (or profile change) of the member at a time: the status read here is the one changed below
    locked = sa.select(Member.status).where(Member.id == mid).with_for_update()
    if (await session.execute(locked)).scalar_one() == ERASED:
        return ErasureReport(mid, 0, 0, 0, 0, 0, 0, 0, 0, already_erased=True)
    ids = [mid, *await _tombstones(session, mid)]
    now = utcnow()

    members = _count(
        await session.execute(
            sa.update(Member)
            .where(Member.id.in_(ids))
            .values(
                name=None,
                gender=None,
                birthday=None,
                province=None,
                city=None,
                mobile_enc=None,
                mobile_masked_index=None,  # a masked-mobile search must not find them either
                profile_meta={},
                source_campaign=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    )
    # the member itself: erased; its tombstones stay tombstones that lead to it
    await session.execute(
        sa.update(Member)
        .where(Member.id == mid)
        .values(status=ERASED, version=Member.version + 1)
        .execution_options(synchronize_session=False)
    )
    identities = _count(await session.execute(sa.delete(Identity).where(Identity.member_id.in_(ids))))
    tags = _count(await session.execute(sa.delete(MemberTag).where(MemberTag.member_id.in_(ids))))
    consents = _count(
        await session.execute(
            sa.update(ConsentEvent)
            .where(ConsentEvent.member_id.in_(ids), ConsentEvent.proof != "")
            .values(proof="")
        )
    )
    messages = _count(
        await session.execute(
            sa.update(Message)
            .where(Message.member_id.in_(ids))
            .values(params={}, detail="", provider_id=None, updated_at=now)
        )
    )
    # receipts matched to those messages carry the same gateway id
    await session.execute(
        sa.update(InboundRecord)
        .where(InboundRecord.message_id.in_(sa.select(Message.id).where(Message.member_id.in_(ids))))
        .values(provider_id=None)
    )
    replies = _count(
        await session.execute(
            sa.update(InboundRecord)
            .where(InboundRecord.member_id.in_(ids))
            .values(payload="", member_id=None)
        )
    )
    orders = _count(
        await session.execute(sa.update(Order).where(Order.member_id.in_(ids)).values(shipments=[]))
    )
    merge_ids = list(
        (
            await session.execute(
                sa.select(Merge.id).where(sa.or_(Merge.survivor_id.in_(ids), Merge.absorbed_id.in_(ids)))
            )
        ).scalars()
    )
    merges = _count(
        await session.execute(
            sa.update(Merge)
            .where(sa.or_(Merge.survivor_id.in_(ids), Merge.absorbed_id.in_(ids)))
            .values(evidence=[], profile_changes={}, status=ERASED)
        )
    )
    audit_entries = await audit.redact(
        session,
        actor,
        sa.or_(
            sa.and_(AuditEntry.object_type == "member", AuditEntry.object_id.in_([str(i) for i in ids])),
            sa.and_(AuditEntry.object_type == "merge", AuditEntry.object_id.in_([str(i) for i in merge_ids])),
        ),
        reason=f"member.erase: {reason}",
        object_type="member",
        object_id=mid,
    )
    report = ErasureReport(
        mid, members, identities, tags, consents, messages, replies, orders, merges, len(audit_entries)
    )
    audit.record(session, actor, "member.erase", "member", mid, after={"reason": reason, **report.counts()})
    log.info("member erased", member_id=mid, actor=actor.name)
    return report
