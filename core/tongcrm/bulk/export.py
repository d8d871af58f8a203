"""Export: members, orders and the points ledger as CSV or JSON Lines, streamed in keyset pages.

Memory stays constant whatever the table's size: each page (1,000 rows by id) is read in its own short read
transaction, encoded and handed on before the next is read, so no transaction is held open for the length of a
download and no result set is held whole. Personal data is masked (mobile ``138****8000``, name ``张**``)
unless the caller reveals it; :func:`check_reveal` lets admins only, and the caller audits every reveal.

Parquet is not offered: pyarrow is a large dependency for one output format; CSV and JSON Lines load into any
warehouse (and into pyarrow, for those who have it).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tongcrm.audit.service import Actor
from tongcrm.crypto import Vault
from tongcrm.errors import BadRequest, Forbidden, shown
from tongcrm.members.masked import mask_name
from tongcrm.members.models import Member
from tongcrm.members.phone import MOBILE_CONTEXT, mask_mobile
from tongcrm.members.service import REVEAL_ROLES  # one masking rule for every output
from tongcrm.orders.models import Order
from tongcrm.points.models import PointsEntry

FORMATS = ("csv", "jsonl")
PAGE = 1000
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}


@dataclass(frozen=True, slots=True)
class _Kind:
    model: Any
    columns: tuple[str, ...]
    where: Callable[[], sa.ColumnElement[bool]] | None = None


KINDS: dict[str, _Kind] = {
    "members": _Kind(
        Member,
        (
            "id", "name", "mobile", "gender", "birthday", "province", "city", "source_channel", "source_store",
            "source_campaign", "lifecycle_stage", "created_at", "updated_at",
        ),
        lambda: Member.status == "active",
    ),
    "orders": _Kind(
        Order,
        (
            "id", "account_id", "channel", "external_id", "member_id", "status", "platform_status", "store_code",
            "total_fen", "paid_fen", "refunded_fen", "post_fee_fen", "discount_fen", "placed_at", "paid_at",
            "shipped_at", "completed_at", "modified_at",
        ),
    ),
    "ledger": _Kind(
        PointsEntry,
        (
            "id", "member_id", "kind", "amount", "shortfall", "idempotency_key", "account_id", "order_id",
            "line_id", "rule_code", "rule_version", "reason", "actor", "ref_entry_id", "occurred_at",
            "available_from", "expires_at", "created_at",
        ),
    ),
}  # fmt: skip


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise BadRequest(
            f"unknown export {shown(kind)}; exports: {', '.join(KINDS)} (a segment: tongcrm segments export)"
        )
    return kind


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise BadRequest(
            f"unknown export format {shown(fmt)}; formats: {', '.join(FORMATS)} (parquet is not offered)"
        )
    return fmt


def check_reveal(reveal: bool, actor: Actor) -> bool:
    """Whether this export shows mobiles and names in full: admins only (the caller audits it)."""
    if reveal and actor.role not in REVEAL_ROLES:
        raise Forbidden(f"role {actor.role!r} may not reveal personal data in an export")
    return reveal


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _member_values(row: Any, vault: Vault, reveal: bool) -> dict[str, Any]:
    values = {name: _cell(getattr(row, name)) for name in KINDS["members"].columns if name != "mobile"}
    mobile: str | None = None
    if row.mobile_enc:
        e164 = vault.decrypt(row.mobile_enc, context=MOBILE_CONTEXT)
        mobile = e164 if reveal else mask_mobile(e164)
    values["mobile"] = mobile
    if not reveal:
        values["name"] = mask_name(row.name)
    return values


async def rows(
    read_sessions: async_sessionmaker[AsyncSession],
    kind: str,
    vault: Vault,
    *,
    reveal: bool = False,
    page: int = PAGE,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Pages of rows in id order, each read in its own transaction (keyset: ``id > last``)."""
    spec = KINDS[check_kind(kind)]
    model = spec.model
    wanted = [c for c in spec.columns if c != "mobile"] + (["mobile_enc"] if kind == "members" else [])
    columns = [getattr(model, c) for c in wanted]
    last: int | None = None
    while True:
        query = sa.select(*columns).order_by(model.id).limit(page)
        if spec.where is not None:
            query = query.where(spec.where())
        if last is not None:
            query = query.where(model.id > last)
        async with read_sessions() as session, session.begin():
            fetched = (await session.execute(query)).all()
        if not fetched:
            return
        last = fetched[-1].id
        if kind == "members":
            yield [_member_values(r, vault, reveal) for r in fetched]
        else:
            yield [{name: _cell(getattr(r, name)) for name in spec.columns} for r in fetched]
        if len(fetched) < page:
            return


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet will not evaluate: text that starts like a formula (``=``, ``+``, ``-``, ``@``,
    tab, return) gets a leading ``'``, unless it is a plain signed number (an E.164 mobile, a debit amount
    rendered as text). Integers pass as they are. Names and order titles come from buyers, so this matters."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_STARTS):
        return value
    if value[0] in "+-" and value[1:].isdigit():
        return value
    return "'" + value


def encode_page(fmt: str, columns: Sequence[str], page: Sequence[dict[str, Any]], *, header: bool) -> bytes:
    """One page as bytes: CSV (a header before the first page; blanks for NULL) or JSON Lines."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in page).encode()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    writer.writerows([["" if r[c] is None else csv_safe(r[c]) for c in columns] for r in page])
    return buffer.getvalue().encode()


async def stream(
    read_sessions: async_sessionmaker[AsyncSession],
    kind: str,
    fmt: str,
    vault: Vault,
    *,
    reveal: bool = False,
    page: int = PAGE,
) -> AsyncIterator[bytes]:
    """The export as a stream of byte chunks, one per page (a CSV header first, even when empty)."""
    check_format(fmt)
    columns = KINDS[check_kind(kind)].columns
    first = True
    async for chunk in rows(read_sessions, kind, vault, reveal=reveal, page=page):
        yield encode_page(fmt, columns, chunk, header=first)
        first = False
    if first and fmt == "csv":
        yield encode_page(fmt, columns, [], header=True)
