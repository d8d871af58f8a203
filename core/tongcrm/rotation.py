"""Moving what is stored under old secret keys to the current one, so that an old key can be retired.

Rotating ``TONGCRM_SECRET_KEY`` is three steps: set the new secret and list the old one in
``TONGCRM_OLD_SECRET_KEYS`` (everything stays readable and findable: reads try every key); run
``tongcrm keys rotate`` (this module); when ``tongcrm keys status`` shows nothing left under the old key, drop it
from ``TONGCRM_OLD_SECRET_KEYS``.

What is moved: members' encrypted mobiles, mobile identities (blind index and ciphertext together), the
encrypted secrets of channel and messenger accounts, and SMS opt-outs, which are found by blind index and keep
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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.audit import service as audit
from tongcrm.audit.service import SYSTEM, Actor
from tongcrm.channels.models import ChannelAccount
from tongcrm.channels.service import SECRETS_CONTEXT as CHANNEL_SECRETS
from tongcrm.crypto import Vault
from tongcrm.identity.models import Identity
from tongcrm.members.models import Member
from tongcrm.members.phone import MOBILE_CONTEXT, MOBILE_INDEX_PURPOSE
from tongcrm.messaging.models import MessengerAccount, SmsOptOut
from tongcrm.messaging.service import SECRETS_CONTEXT as MESSENGER_SECRETS

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
    context: str


_CIPHERTEXTS = (
    _Ciphertexts("member mobiles", _MEMBERS, "mobile_enc", MOBILE_CONTEXT),
    _Ciphertexts(
        "channel account secrets", cast(sa.Table, ChannelAccount.__table__), "secrets", CHANNEL_SECRETS
    ),
    _Ciphertexts(
        "messenger account secrets", cast(sa.Table, MessengerAccount.__table__), "secrets", MESSENGER_SECRETS
    ),
)
MOBILE_IDENTITIES = "mobile identities"
OPT_OUTS = "sms opt-outs"


def _cipher_kid(column: Any) -> Any:
    return sa.func.substr(column, 4, _KID_LEN)


def _index_kid(column: Any) -> Any:
    return sa.func.substr(column, 1, _KID_LEN)


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """How many stored values each key id holds, per kind of value; ``current`` is the key new values use."""

    current: str
    by_store: dict[str, dict[str, int]]
    #: opt-outs under an old key whose number no member identity has: they cannot be moved
    stranded_opt_outs: int

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


async def key_usage(session: AsyncSession, vault: Vault) -> KeyUsage:
    by_store: dict[str, dict[str, int]] = {}

    async def count(name: str, kid: Any, table: Any, *where: Any) -> None:
        rows = (
            await session.execute(
                sa.select(kid, sa.func.count()).select_from(table).where(*where).group_by(kid)
            )
        ).all()
        by_store[name] = {str(k): int(n) for k, n in rows}

    for store in _CIPHERTEXTS:
        column = store.table.c[store.column]
        await count(store.name, _cipher_kid(column), store.table, column.is_not(None))
    await count(
        MOBILE_IDENTITIES, _index_kid(_IDENTITIES.c.value), _IDENTITIES, _IDENTITIES.c.kind == "mobile"
    )
    await count(OPT_OUTS, _index_kid(_OPT_OUTS.c.mobile_index), _OPT_OUTS)
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
    return KeyUsage(vault.kid, by_store, int(stranded))


async def rotate(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    *,
    batch: int = 500,
    actor: Actor = SYSTEM,
    progress: Callable[[str, int], None] | None = None,
) -> RotationReport:
    """Move everything movable to the current key, ``batch`` rows a transaction."""
    report = RotationReport()
    for store in _CIPHERTEXTS:
        await _rotate_ciphertexts(sessions, vault, store, batch, report, progress)
    await _rotate_mobile_identities(sessions, vault, batch, report, progress)
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


async def _rotate_ciphertexts(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    store: _Ciphertexts,
    batch: int,
    report: RotationReport,
    progress: Callable[[str, int], None] | None,
) -> None:
    table, column = store.table, store.table.c[store.column]
    key = table.primary_key.columns.values()[0]
    after: Any = None
    while True:
        async with sessions() as session, session.begin():
            query = sa.select(key, column).where(column.is_not(None), _cipher_kid(column) != vault.kid)
            if after is not None:
                query = query.where(key > after)
            rows = (await session.execute(query.order_by(key).limit(batch))).all()
            if not rows:
                return
            moved = 0
            for row_id, old in rows:
                try:
                    new = vault.encrypt(vault.decrypt(old, context=store.context), context=store.context)
                except ValueError:
                    report.add(report.unreadable, store.name, 1)
                    continue
                result = await session.execute(
                    sa.update(table).where(key == row_id, column == old).values({store.column: new})
                )
                moved += result.rowcount  # type: ignore[attr-defined]
            after = rows[-1][0]
        report.add(report.moved, store.name, moved)
        if progress is not None:
            progress(store.name, moved)


async def _rotate_mobile_identities(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    batch: int,
    report: RotationReport,
    progress: Callable[[str, int], None] | None,
) -> None:
    ids = _IDENTITIES.c
    after = 0
    while True:
        async with sessions() as session, session.begin():
            rows = (
                await session.execute(
                    sa.select(ids.id, ids.value, ids.value_enc)
                    .where(ids.kind == "mobile", _index_kid(ids.value) != vault.kid, ids.id > after)
                    .order_by(ids.id)
                    .limit(batch)
                )
            ).all()
            if not rows:
                return
            moved = opt_outs = 0
            for row in rows:
                try:
                    e164 = vault.decrypt(row.value_enc or "", context=MOBILE_CONTEXT)
                except ValueError:
                    report.add(report.unreadable, MOBILE_IDENTITIES, 1)
                    continue
                new_index = vault.blind_index(e164, purpose=MOBILE_INDEX_PURPOSE)
                taken = (
                    await session.execute(
                        sa.select(ids.id).where(
                            ids.kind == "mobile", ids.value == new_index, ids.id != row.id
                        )
                    )
                ).first()
                if taken is not None:
                    report.conflicts.append(row.id)
                    continue
                result = await session.execute(
                    sa.update(_IDENTITIES)
                    .where(ids.id == row.id, ids.value == row.value)
                    .values(value=new_index, value_enc=vault.encrypt(e164, context=MOBILE_CONTEXT))
                )
                if not result.rowcount:  # type: ignore[attr-defined]
                    continue
                moved += 1
                opt_outs += await _move_opt_outs(session, row.value, new_index, vault, e164)
            after = rows[-1].id
        report.add(report.moved, MOBILE_IDENTITIES, moved)
        report.add(report.moved, OPT_OUTS, opt_outs)
        if progress is not None:
            progress(MOBILE_IDENTITIES, moved)


async def _rotate_opt_outs(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    batch: int,
    report: RotationReport,
    progress: Callable[[str, int], None] | None,
) -> None:
    """Opt-outs that keep their number: re-indexed from it (the rest moved with their identity, or are stranded)."""
    o = _OPT_OUTS.c
    after: tuple[str, str] = ("", "")
    while True:
        async with sessions() as session, session.begin():
            rows = (
                await session.execute(
                    sa.select(o.mobile_index, o.signature, o.mobile_enc)
                    .where(
                        o.mobile_enc.is_not(None),
                        _index_kid(o.mobile_index) != vault.kid,
                        sa.tuple_(o.mobile_index, o.signature) > sa.tuple_(*after),
                    )
                    .order_by(o.mobile_index, o.signature)
                    .limit(batch)
                )
            ).all()
            if not rows:
                return
            moved = 0
            for row in rows:
                try:
                    e164 = vault.decrypt(row.mobile_enc, context=MOBILE_CONTEXT)
                except ValueError:
                    report.add(report.unreadable, OPT_OUTS, 1)
                    continue
                new_index = vault.blind_index(e164, purpose=MOBILE_INDEX_PURPOSE)
                moved += await _move_opt_outs(
                    session, row.mobile_index, new_index, vault, e164, row.signature
                )
            after = (rows[-1].mobile_index, rows[-1].signature)
        report.add(report.moved, OPT_OUTS, moved)
        if progress is not None:
            progress(OPT_OUTS, moved)


async def _move_opt_outs(
    session: AsyncSession,
    old_index: str,
    new_index: str,
    vault: Vault,
    e164: str,
    signature: str | None = None,
) -> int:
    """Re-key the opt-outs of one number (of one ``signature``, or all); an opt-out already recorded under the new
    index is kept as it is. They keep the number encrypted under the current key from then on."""
    o = _OPT_OUTS.c
    query = sa.select(o.signature).where(o.mobile_index == old_index)
    if signature is not None:
        query = query.where(o.signature == signature)
    signatures = (await session.execute(query)).scalars().all()
    for each in signatures:
        exists = (
            await session.execute(
                sa.select(o.signature).where(o.mobile_index == new_index, o.signature == each)
            )
        ).first()
        same = sa.and_(o.mobile_index == old_index, o.signature == each)
        if exists is None:
            await session.execute(
                sa.update(_OPT_OUTS)
                .where(same)
                .values(mobile_index=new_index, mobile_enc=vault.encrypt(e164, context=MOBILE_CONTEXT))
            )
        else:
            await session.execute(sa.delete(_OPT_OUTS).where(same))
    return len(signatures)
