"""Values read once per transaction and kept on the session until it ends.

For data that is read many times in one unit of work and changes rarely (the active tier ladder, the active
earning rules): inside one transaction the first read is as good as any later one. Keyed by the session's root
transaction, so a session that lives across transactions never sees an old value; whoever changes the data
in the same transaction calls :func:`forget`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.db.direct import HELD


def get(session: AsyncSession, key: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``key`` was put in this transaction, else ``(False, None)``."""
    cached = session.info.get(key)
    transaction = _transaction(session)
    if transaction is not None and cached is not None and cached[0] is transaction:
        return True, cached[1]
    return False, None


def put(session: AsyncSession, key: str, value: Any) -> None:
    session.info[key] = (_transaction(session), value)


def _transaction(session: AsyncSession) -> object | None:
    """What a value is kept under: the unit of work's held connection (:mod:`tongcrm.db.held`: its
    transaction is the driver's, whether or not the ORM began on it), else the session's root transaction."""
    held: object | None = session.info.get(HELD)
    return held if held is not None else session.sync_session.get_transaction()


def forget(session: AsyncSession, key: str) -> None:
    session.info.pop(key, None)
