"""Masked personal data: finding members by a platform's masked mobile (``138****8000``) without decrypting
anyone's number, and the masked name every output shows to those who may not reveal it (:func:`mask_name`).

Platforms hand operators and customer service only the masked form of a buyer's mobile: the first three and
the last four digits. Each member row keeps a keyed hash of the masked form of its profile mobile
(``members.mobile_masked_index``, a vault blind index under its own purpose, so it cannot be matched against
the full-number index), written wherever ``mobile_enc`` is written. A search hashes the pattern under every
configured key and reads the index: one indexed ``IN``, never a scan that decrypts.

The masked form of a number is exactly what :func:`~tongcrm.members.phone.mask_mobile` prints, so
``138****8000`` for a Chinese mobile and ``+1 650***0000`` elsewhere; :func:`parse_masked` brings what people
type (spaces, full-width digits and asterisks, a ``+86`` prefix) to that form. Many members share a masked
form (ten thousand numbers each): the search answers all of them, masked as every list is.

Each mobile identity keeps the same index of its own number (``identities.masked_index``, written wherever the
identity is), so a member is found by every number it holds: the one on its profile and any other a channel or a
merge brought (the search reads both indexes). Merges and their undo move identity rows with their index;
erasure deletes them.

Rows written before the columns existed, or under a key that has since been retired, are (re)indexed by
:func:`index_masked_mobiles` (``tongcrm member index-masked``, and a step of ``tongcrm keys rotate``): batched,
one transaction a batch, resumable because it only ever picks up rows whose index is missing or stale.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.crypto import Vault
from tongcrm.identity.models import Identity
from tongcrm.members.models import Member
from tongcrm.members.phone import MOBILE_CONTEXT, InvalidMobile, mask_mobile

#: Purpose of the masked-mobile blind index: distinct from the full number's (``identity.mobile``).
MOBILE_MASKED_PURPOSE = "member.mobile.masked"
#: key ids are 8 hex characters; blind indexes are ``<kid>.<hex>``
_KID_LEN = 8

#: asterisk look-alikes people paste or type (NFKC already folds the full-width ``＊`` and the small ``﹡``)
_STARS = str.maketrans({"∗": "*", "⁎": "*", "✱": "*", "×": "*", "x": "*", "X": "*"})
_MASKED = re.compile(r"(?:\+(?P<cc>[1-9]\d{0,2}))?(?P<head>\d{3})(?P<stars>\*+)(?P<tail>\d{4})")

_MEMBERS = cast(sa.Table, Member.__table__)
_IDENTITIES = cast(sa.Table, Identity.__table__)


def looks_masked(raw: str) -> bool:
    """Whether a mobile search term is a masked pattern (it has an asterisk) rather than a whole number."""
    return "*" in unicodedata.normalize("NFKC", raw).translate(_STARS)


def parse_masked(raw: str) -> str:
    """The canonical masked form of a pattern (``138 **** 8000`` → ``138****8000``), or :class:`InvalidMobile`.

    A Chinese number (no prefix, ``+86`` or ``0086``) must hide exactly four digits, as platforms do; the
    pattern of a number elsewhere keeps its calling code as :func:`mask_mobile` prints it."""
    text = unicodedata.normalize("NFKC", raw).translate(_STARS)
    text = "".join(ch for ch in text if not ch.isspace() and ch not in "-()")
    if text.startswith("00"):
        text = "+" + text[2:]
    found = _MASKED.fullmatch(text)
    if found is None:
        raise InvalidMobile(
            "a masked mobile is the first 3 digits, asterisks and the last 4 digits, e.g. 138****8000",
            code="mobile.masked_form",
        )
    cc = found["cc"] or "86"
    head, stars, tail = found["head"], found["stars"], found["tail"]
    if cc == "86":
        if len(stars) != 4:
            raise InvalidMobile(
                "a masked Chinese mobile hides exactly 4 digits: 138****8000",
                code="mobile.masked_stars",
                params={"stars": len(stars)},
            )
        return f"{head}****{tail}"
    return f"+{cc} {head}{stars}{tail}"


def mask_name(name: str | None) -> str | None:
    """``张三丰`` → ``张**``: enough for a cashier to greet or an operator to recognise, too little to copy a
    customer list from. Every output that may not reveal a member's name shows this."""
    if not name:
        return None
    name = name.strip()
    return name[0] + "*" * max(len(name) - 1, 1) if len(name) > 1 else "*"


def masked_index(vault: Vault, e164: str) -> str:
    """The blind index of ``e164``'s masked form under the current key (what is stored on the member)."""
    return vault.blind_index(mask_mobile(e164), purpose=MOBILE_MASKED_PURPOSE)


def masked_lookup(vault: Vault, raw: str) -> list[str]:
    """Every index a pattern's members may be stored under (one per configured key), for ``IN``."""
    return vault.blind_indexes(parse_masked(raw), purpose=MOBILE_MASKED_PURPOSE)


def mobile_columns(vault: Vault, e164: str | None) -> dict[str, str | None]:
    """``mobile_enc`` and ``mobile_masked_index`` of a member whose profile mobile becomes ``e164``: the two
    are always written together."""
    if e164 is None:
        return {"mobile_enc": None, "mobile_masked_index": None}
    return {
        "mobile_enc": vault.encrypt(e164, context=MOBILE_CONTEXT),
        "mobile_masked_index": masked_index(vault, e164),
    }


# -------------------------------------------------------------------------------------------------------------
# backfill and rotation


@dataclass(slots=True)
class IndexReport:
    #: members' profile mobiles (re)indexed
    indexed: int = 0
    #: members whose mobile no configured key can decrypt (left as they are)
    unreadable: int = 0
    #: mobile identities whose number no configured key can decrypt (left as they are)
    unreadable_identities: int = 0
    #: indexes of members without a mobile any more, cleared
    cleared: int = 0
    #: mobile identities (re)indexed: a member's other numbers
    identities: int = 0


@dataclass(frozen=True, slots=True)
class _Indexed:
    """A table whose rows keep an encrypted mobile and the blind index of its masked form."""

    table: sa.Table
    number: str
    index: str
    #: which rows hold a mobile at all
    holds: Callable[[], Any] = lambda: sa.true()


_PROFILES = _Indexed(_MEMBERS, "mobile_enc", "mobile_masked_index")
# ``kind || '' = 'mobile'``, not ``kind = 'mobile'``: SQLite otherwise reads every mobile identity through the
# (kind, value) index and sorts them for each batch of the backfill (1,986 rows/s at 100,000 members, falling
# as the base grows) where the id order of the primary key reads a batch at once
_IDENTITY_ROWS = _Indexed(
    _IDENTITIES, "value_enc", "masked_index", lambda: _IDENTITIES.c.kind.concat("") == "mobile"
)


def _kid(column: Any) -> Any:
    return sa.func.substr(column, 1, _KID_LEN)


def _needs(rows: _Indexed, vault: Vault) -> Any:
    number, index = rows.table.c[rows.number], rows.table.c[rows.index]
    return sa.and_(rows.holds(), number.is_not(None), sa.or_(index.is_(None), _kid(index) != vault.kid))


async def count_unindexed(session: AsyncSession, vault: Vault) -> int:
    """How many mobiles (members' profiles and mobile identities) :func:`index_masked_mobiles` still has to
    (re)index."""
    total = 0
    for rows in (_PROFILES, _IDENTITY_ROWS):
        stmt = sa.select(sa.func.count()).select_from(rows.table).where(_needs(rows, vault))
        total += int((await session.execute(stmt)).scalar_one())
    return total


async def index_masked_mobiles(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    *,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
    limit: int | None = None,
) -> IndexReport:
    """(Re)write the masked index of every member's mobile and every mobile identity whose index is missing or
    stale, ``batch`` rows a transaction, in id order. Stopping it loses at most the batch in flight; running it
    again goes on. With ``limit``, it stops after about that many rows (the periodic job's share of a run)."""
    report = IndexReport()
    if limit is not None:
        batch = max(1, min(batch, limit))
    m = _MEMBERS.c
    async with sessions() as session, session.begin():
        cleared = await session.execute(
            sa.update(_MEMBERS)
            .where(m.mobile_enc.is_(None), m.mobile_masked_index.is_not(None))
            .values(mobile_masked_index=None)
        )
        report.cleared = int(getattr(cleared, "rowcount", 0) or 0)
    for rows in (_PROFILES, _IDENTITY_ROWS):
        spent = report.indexed + report.identities + report.unreadable + report.unreadable_identities
        left = None if limit is None else limit - spent
        if left is not None and left <= 0:
            break
        done = await _index_rows(sessions, vault, rows, batch, progress, left, report)
        if rows is _PROFILES:
            report.indexed += done
        else:
            report.identities += done
    return report


async def _index_rows(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    rows: _Indexed,
    batch: int,
    progress: Callable[[int], None] | None,
    limit: int | None,
    report: IndexReport,
) -> int:
    """One table's share of :func:`index_masked_mobiles`: how many rows it (re)indexed."""
    c = rows.table.c
    number = c[rows.number]
    done = seen = unreadable = 0
    after = 0
    while True:
        async with sessions() as session, session.begin():
            found: Sequence[Any] = (
                await session.execute(
                    sa.select(c.id, number.label("enc"))
                    .where(_needs(rows, vault), c.id > after)
                    .order_by(c.id)
                    .limit(batch if limit is None else max(1, min(batch, limit - seen)))
                )
            ).all()
            if not found:
                break
            changes = []
            for row in found:
                try:
                    e164 = vault.decrypt(row.enc, context=MOBILE_CONTEXT)
                except ValueError:
                    unreadable += 1
                    continue
                changes.append({"row_id": row.id, "enc": row.enc, "new": masked_index(vault, e164)})
            if changes:  # a row whose mobile changed meanwhile was indexed by that change
                await session.execute(
                    sa.update(rows.table)
                    .where(c.id == sa.bindparam("row_id"), number == sa.bindparam("enc"))
                    .values({rows.index: sa.bindparam("new")}),
                    changes,
                )
        after = found[-1].id
        done += len(changes)
        seen += len(found)
        if progress is not None:
            progress(len(changes))
        if limit is not None and seen >= limit:
            break
    if rows is _PROFILES:
        report.unreadable += unreadable
    else:
        report.unreadable_identities += unreadable
    return done
