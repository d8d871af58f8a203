"""Moving what is stored under old secret keys to the current one, so that an old key can be retired.

Rotating ``TONGCRM_SECRET_KEY`` is three steps: set the new secret and list the old one in
``TONGCRM_OLD_SECRET_KEYS`` (everything stays readable and findable: reads try every key); run
``tongcrm keys rotate`` (this module); when ``tongcrm keys status`` shows nothing left under the old key, drop it
from ``TONGCRM_OLD_SECRET_KEYS``.

What is moved: members' encrypted mobiles and the blind indexes of their masked forms
(:mod:`tongcrm.members.masked`, which also writes the ones missing), mobile identities (blind index, masked
index and ciphertext together), the encrypted secrets of channel and messenger accounts, the sealed raw bodies (quarantined platform records, SMS
replies and unparseable gateway entries, :mod:`tongcrm.privacy.sealed`; one stored before sealing existed is
in plain text, counted under ``clear``, and is sealed by the rotation), what plugins sealed and declared through
the ``sealed_columns`` hook (e.g. webhook signing secrets), and SMS opt-outs, which are found by blind index and keep
their number encrypted beside it. An opt-out recorded before its number was kept (revision 0004) moves with the
mobile identity that has the same index, in the same transaction, so that it is never left findable only under
a key that is about to go; one of a number no member has cannot be re-indexed (its number is stored nowhere)
and ``status`` counts those: while any remain, keep the old key listed or they stop being honoured.

Each batch is one transaction that rewrites a row only if it still holds the value read (a concurrent change
wins; the next run picks the row up), so the command can be stopped and run again at any time. A mobile
identity whose new index another identity already has (one number claimed twice, under two keys) is left alone
and reported: that is two members for one number, for an operator to merge.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit import service as audit
from tongcrm.audit.service import SYSTEM, Actor
from tongcrm.channels.models import ChannelAccount, QuarantinedRecord
from tongcrm.channels.service import SECRETS_CONTEXT as CHANNEL_SECRETS
from tongcrm.crypto import Vault
from tongcrm.errors import PluginError
from tongcrm.identity.models import Identity
from tongcrm.members import masked
from tongcrm.members.models import Member
from tongcrm.members.phone import MOBILE_CONTEXT, MOBILE_INDEX_PURPOSE
from tongcrm.messaging.models import InboundRecord, MessengerAccount, SmsOptOut
from tongcrm.messaging.service import SECRETS_CONTEXT as MESSENGER_SECRETS
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import SealedColumn
from tongcrm.privacy.sealed import INBOUND_PAYLOAD, QUARANTINE_PAYLOAD, is_sealed

#: key ids are 8 hex characters: ciphertexts are ``v1.<kid>.…``, blind indexes ``<kid>.…``
_KID_LEN = 8

_MEMBERS = cast(sa.Table, Member.__table__)
_IDENTITIES = cast(sa.Table, Identity.__table__)
_OPT_OUTS = cast(sa.Table, SmsOptOut.__table__)


@dataclass(frozen=True, slots=True)
class _Ciphertexts:
    """A column of ciphertexts that can be re-encrypted row by row."""

    name: str
    table: sa.Table
    column: str
    context: str | Callable[[Any], str]
    #: values stored in plain text before the column was encrypted are sealed by the rotation
    seals_clear: bool = False
    #: when ``context`` is a function: the column of the row it is a function of
    context_column: str | None = None

    def context_of(self, value: Any) -> str:
        return self.context(value) if callable(self.context) else self.context

    @classmethod
    def of(cls, declared: SealedColumn) -> _Ciphertexts:
        return cls(
            declared.name, declared.table, declared.column, declared.context, False, declared.context_column
        )


_CIPHERTEXTS = (
    _Ciphertexts("member mobiles", _MEMBERS, "mobile_enc", MOBILE_CONTEXT),
    _Ciphertexts(
        "channel account secrets", cast(sa.Table, ChannelAccount.__table__), "secrets", CHANNEL_SECRETS
    ),
    _Ciphertexts(
        "messenger account secrets", cast(sa.Table, MessengerAccount.__table__), "secrets", MESSENGER_SECRETS
    ),
    _Ciphertexts(
        "quarantined records",
        cast(sa.Table, QuarantinedRecord.__table__),
        "payload",
        QUARANTINE_PAYLOAD,
        True,
    ),
    _Ciphertexts(
        "sms inbound payloads", cast(sa.Table, InboundRecord.__table__), "payload", INBOUND_PAYLOAD, True
    ),
)


def _stores(host: PluginHost | None) -> tuple[_Ciphertexts, ...]:
    """The core's encrypted columns and the ones installed plugins declared (``sealed_columns``)."""
    if host is None:
        return _CIPHERTEXTS
    declared = tuple(_Ciphertexts.of(column) for column in host.sealed_columns())
    taken = {core.name for core in _CIPHERTEXTS} | {
        MOBILE_IDENTITIES,
        OPT_OUTS,
        MASKED_MOBILES,
        MASKED_IDENTITIES,
    }
    for store in declared:
        if store.name in taken:
            raise PluginError(f"sealed column {store.name!r} has the name of one of the core's")
    return _CIPHERTEXTS + declared


#: the key id ``status`` reports for values stored in plain text
CLEAR = "clear"
MOBILE_IDENTITIES = "mobile identities"
MASKED_MOBILES = "member masked mobiles"
MASKED_IDENTITIES = "identity masked mobiles"
OPT_OUTS = "sms opt-outs"


def _cipher_kid(column: Any) -> Any:
    return sa.func.substr(column, 4, _KID_LEN)


def _is_cipher(column: Any) -> Any:
    return sa.and_(column.like("v1.%"), sa.func.substr(column, 4 + _KID_LEN, 1) == ".")


def _stored_kid(store: _Ciphertexts) -> Any:
    column = store.table.c[store.column]
    if not store.seals_clear:
        return _cipher_kid(column)
    return sa.case((_is_cipher(column), _cipher_kid(column)), else_=sa.literal(CLEAR))


def _to_move(store: _Ciphertexts, vault: Vault) -> Any:
    column = store.table.c[store.column]
    if not store.seals_clear:
        return sa.and_(column.is_not(None), _cipher_kid(column) != vault.kid)
    return sa.and_(
        column.is_not(None), column != "", sa.or_(~_is_cipher(column), _cipher_kid(column) != vault.kid)
    )


def _index_kid(column: Any) -> Any:
    return sa.func.substr(column, 1, _KID_LEN)


Progress = Callable[[str, int], None] | None
#: one page of rows to move: (session, position after the last page) → rows, in order of position
Page = Callable[[AsyncSession, Any], Awaitable[Sequence[Any]]]
#: moves one page (in its transaction) → how many values moved under each store name
Move = Callable[[AsyncSession, Sequence[Any]], Awaitable[dict[str, int]]]


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """How many stored values each key id holds, per kind of value; ``current`` is the key new values use."""

    current: str
    by_store: dict[str, dict[str, int]]
    #: opt-outs under an old key whose number no member identity has: they cannot be moved
    stranded_opt_outs: int
    #: members with a mobile whose masked-mobile index is missing or under an old key (``keys rotate`` or
    #: ``member index-masked`` writes them)
    unindexed_masked_mobiles: int = 0

    def left_on_old_keys(self) -> int:
        return sum(n for counts in self.by_store.values() for kid, n in counts.items() if kid != self.current)


@dataclass(slots=True)
class RotationReport:
    moved: dict[str, int] = field(default_factory=dict)
    #: values no configured key could read (their key is not listed any more)
    unreadable: dict[str, int] = field(default_factory=dict)
    #: mobile identities left alone because another identity already has their new index
    conflicts: list[int] = field(default_factory=list)

    def add(self, counts: dict[str, int], name: str, n: int) -> None:
        if n:
            counts[name] = counts.get(name, 0) + n


async def key_usage(session: AsyncSession, vault: Vault, host: PluginHost | None = None) -> KeyUsage:
    by_store: dict[str, dict[str, int]] = {}

    async def count(name: str, kid: Any, table: Any, *where: Any) -> None:
        rows = (
            await session.execute(
                sa.select(kid, sa.func.count()).select_from(table).where(*where).group_by(kid)
            )
        ).all()
        by_store[name] = {str(k): int(n) for k, n in rows}

    for store in _stores(host):
        column = store.table.c[store.column]
        where = [column.is_not(None), column != ""] if store.seals_clear else [column.is_not(None)]
        await count(store.name, _stored_kid(store), store.table, *where)
    await count(
        MOBILE_IDENTITIES, _index_kid(_IDENTITIES.c.value), _IDENTITIES, _IDENTITIES.c.kind == "mobile"
    )
    await count(OPT_OUTS, _index_kid(_OPT_OUTS.c.mobile_index), _OPT_OUTS)
    await count(
        MASKED_MOBILES,
        _index_kid(_MEMBERS.c.mobile_masked_index),
        _MEMBERS,
        _MEMBERS.c.mobile_masked_index.is_not(None),
    )
    await count(
        MASKED_IDENTITIES,
        _index_kid(_IDENTITIES.c.masked_index),
        _IDENTITIES,
        _IDENTITIES.c.masked_index.is_not(None),
    )
    stranded = (
        await session.execute(
            sa.select(sa.func.count())
            .select_from(_OPT_OUTS)
            .where(
                _index_kid(_OPT_OUTS.c.mobile_index) != vault.kid,
                _OPT_OUTS.c.mobile_enc.is_(None),
                ~sa.exists().where(
                    _IDENTITIES.c.kind == "mobile", _IDENTITIES.c.value == _OPT_OUTS.c.mobile_index
                ),
            )
        )
    ).scalar_one()
    return KeyUsage(vault.kid, by_store, int(stranded), await masked.count_unindexed(session, vault))


async def rotate(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    *,
    batch: int = 500,
    actor: Actor = SYSTEM,
    progress: Progress = None,
    host: PluginHost | None = None,
) -> RotationReport:
    """Move everything movable to the current key, ``batch`` rows a transaction (with ``host``: the plugins'
    sealed columns too)."""
    report = RotationReport()
    for store in _stores(host):
        await _rotate_ciphertexts(sessions, vault, store, batch, report, progress)
    # identities first: their move rewrites their masked index too, so the indexing below only has the ones
    # missing (rows older than revision 0033, conflicts left under the old key) to write
    await _rotate_mobile_identities(sessions, vault, batch, report, progress)
    indexed = await masked.index_masked_mobiles(
        sessions,
        vault,
        batch=batch,
        progress=None if progress is None else lambda n: progress(MASKED_MOBILES, n),
    )
    report.add(report.moved, MASKED_MOBILES, indexed.indexed)
    report.add(report.moved, MASKED_IDENTITIES, indexed.identities)
    report.add(report.unreadable, MASKED_MOBILES, indexed.unreadable)
    report.add(report.unreadable, MASKED_IDENTITIES, indexed.unreadable_identities)
    await _rotate_opt_outs(sessions, vault, batch, report, progress)
    if report.moved:
        async with sessions() as session, session.begin():
            audit.record(
                session,
                actor,
                "keys.rotate",
                "secret_key",
                vault.kid,
                after={
                    "moved": report.moved,
                    "unreadable": report.unreadable,
                    "conflicts": len(report.conflicts),
                },
            )
    return report


async def _in_batches(
    sessions: async_sessionmaker[AsyncSession],
    name: str,
    page: Page,
    move: Move,
    position: Callable[[Any], Any],
    start: Any,
    report: RotationReport,
    progress: Progress,
) -> None:
    """Page through what is left under old keys, one transaction a page, until a page comes back empty."""
    after = start
    while True:
        async with sessions() as session, session.begin():
            rows = await page(session, after)
            if not rows:
                return
            moved = await move(session, rows)
        after = position(rows[-1])
        for store, n in moved.items():
            report.add(report.moved, store, n)
        if progress is not None:
            progress(name, moved.get(name, 0))


async def _rotate_ciphertexts(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    store: _Ciphertexts,
    batch: int,
    report: RotationReport,
    progress: Progress,
) -> None:
    table, column = store.table, store.table.c[store.column]
    key = table.primary_key.columns.values()[0]
    bound_to = table.c[store.context_column] if store.context_column else sa.null()

    async def page(session: AsyncSession, after: Any) -> Sequence[Any]:
        query = sa.select(key, column, bound_to).where(_to_move(store, vault))
        if after is not None:
            query = query.where(key > after)
        return (await session.execute(query.order_by(key).limit(batch))).all()

    async def move(session: AsyncSession, rows: Sequence[Any]) -> dict[str, int]:
        changes = []
        for row_id, old, bound in rows:
            context = store.context_of(bound)
            try:
                clear = old if store.seals_clear and not is_sealed(old) else None
                text = clear if clear is not None else vault.decrypt(old, context=context)
                new = vault.encrypt(text, context=context)
            except ValueError:
                report.add(report.unreadable, store.name, 1)
                continue
            changes.append({"row_id": row_id, "old": old, "new": new})
        if changes:  # one statement for the page; a row changed meanwhile keeps its newer value
            await session.execute(
                sa.update(table)
                .where(key == sa.bindparam("row_id"), column == sa.bindparam("old"))
                .values({store.column: sa.bindparam("new")}),
                changes,
            )
        return {store.name: len(changes)}

    await _in_batches(sessions, store.name, page, move, lambda row: row[0], None, report, progress)


async def _rotate_mobile_identities(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    batch: int,
    report: RotationReport,
    progress: Progress,
) -> None:
    ids = _IDENTITIES.c

    async def page(session: AsyncSession, after: int) -> Sequence[Any]:
        query = (
            sa.select(ids.id, ids.value, ids.value_enc)
            .where(ids.kind == "mobile", _index_kid(ids.value) != vault.kid, ids.id > after)
            .order_by(ids.id)
            .limit(batch)
        )
        return (await session.execute(query)).all()

    async def move(session: AsyncSession, rows: Sequence[Any]) -> dict[str, int]:
        numbers: dict[str, str] = {}  # old index → number
        for row in rows:
            try:
                numbers[row.value] = vault.decrypt(row.value_enc or "", context=MOBILE_CONTEXT)
            except ValueError:
                report.add(report.unreadable, MOBILE_IDENTITIES, 1)
        renamed = {
            old: vault.blind_index(e164, purpose=MOBILE_INDEX_PURPOSE) for old, e164 in numbers.items()
        }
        taken = set(
            (
                await session.execute(
                    sa.select(ids.value).where(ids.kind == "mobile", ids.value.in_(list(renamed.values())))
                )
            ).scalars()
        )
        changes = [
            {"row_id": row.id, "old": row.value, "new": renamed[row.value],
             "enc": vault.encrypt(numbers[row.value], context=MOBILE_CONTEXT),
             "masked": masked.masked_index(vault, numbers[row.value])}
            for row in rows
            if row.value in renamed and renamed[row.value] not in taken
        ]  # fmt: skip
        report.conflicts.extend(row.id for row in rows if renamed.get(row.value) in taken)
        if changes:
            await session.execute(
                sa.update(_IDENTITIES)
                .where(ids.id == sa.bindparam("row_id"), ids.value == sa.bindparam("old"))
                .values(
                    value=sa.bindparam("new"),
                    value_enc=sa.bindparam("enc"),
                    masked_index=sa.bindparam("masked"),
                ),
                changes,
            )
        moved = {old: new for old, new in renamed.items() if new not in taken}
        opt_outs = await _move_opt_outs(session, vault, moved, numbers)
        return {MOBILE_IDENTITIES: len(changes), OPT_OUTS: opt_outs}

    await _in_batches(sessions, MOBILE_IDENTITIES, page, move, lambda row: row.id, 0, report, progress)


async def _rotate_opt_outs(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    batch: int,
    report: RotationReport,
    progress: Progress,
) -> None:
    """Opt-outs that keep their number: re-indexed from it (the rest moved with their identity, or are stranded)."""
    o = _OPT_OUTS.c

    async def page(session: AsyncSession, after: tuple[str, str]) -> Sequence[Any]:
        query = (
            sa.select(o.mobile_index, o.signature, o.mobile_enc)
            .where(
                o.mobile_enc.is_not(None),
                _index_kid(o.mobile_index) != vault.kid,
                sa.tuple_(o.mobile_index, o.signature) > sa.tuple_(*after),
            )
            .order_by(o.mobile_index, o.signature)
            .limit(batch)
        )
        return (await session.execute(query)).all()

    async def move(session: AsyncSession, rows: Sequence[Any]) -> dict[str, int]:
        numbers: dict[str, str] = {}
        for row in rows:
            try:
                numbers[row.mobile_index] = vault.decrypt(row.mobile_enc, context=MOBILE_CONTEXT)
            except ValueError:
                report.add(report.unreadable, OPT_OUTS, 1)
        renamed = {
            old: vault.blind_index(e164, purpose=MOBILE_INDEX_PURPOSE) for old, e164 in numbers.items()
        }
        return {OPT_OUTS: await _move_opt_outs(session, vault, renamed, numbers)}

    await _in_batches(
        sessions,
        OPT_OUTS,
        page,
        move,
        lambda row: (row.mobile_index, row.signature),
        ("", ""),
        report,
        progress,
    )


async def _move_opt_outs(
    session: AsyncSession, vault: Vault, renamed: dict[str, str], numbers: dict[str, str]
) -> int:
    """Re-key every opt-out of the numbers in ``renamed`` (old index → new index), in three statements; an opt-out
    already recorded under the new index is kept as it is. They keep the number encrypted under the current key
    from then on."""
    if not renamed:
        return 0
    o = _OPT_OUTS.c
    found = (
        await session.execute(sa.select(o.mobile_index, o.signature).where(o.mobile_index.in_(list(renamed))))
    ).all()
    if not found:
        return 0
    present = {
        (index, signature)
        for index, signature in await session.execute(
            sa.select(o.mobile_index, o.signature).where(o.mobile_index.in_(list(renamed.values())))
        )
    }
    keep, drop = [], []
    for old, signature in found:
        target = {"old": old, "sig": signature}
        if (renamed[old], signature) in present:
            drop.append(target)
        else:
            keep.append(
                {**target, "new": renamed[old], "enc": vault.encrypt(numbers[old], context=MOBILE_CONTEXT)}
            )
    same = sa.and_(o.mobile_index == sa.bindparam("old"), o.signature == sa.bindparam("sig"))
    if keep:
        await session.execute(
            sa.update(_OPT_OUTS)
            .where(same)
            .values(mobile_index=sa.bindparam("new"), mobile_enc=sa.bindparam("enc")),
            keep,
        )
    if drop:
        await session.execute(sa.delete(_OPT_OUTS).where(same), drop)
    return len(found)
