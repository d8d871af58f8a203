"""The store facade: a plugin's own tables and its own jobs, in units of work the core owns.

Channel plugins reach the member base through the counter, messengers through the inbox; a plugin that only
keeps state of its own (webhook subscriptions, delivery logs) needs neither, but still must never hold a
session. :class:`PluginStore` is that narrow door: ``unit_of_work(tables=...)`` begins a transaction, hands
back ``rows`` (statements on the named tables only, the counter's :class:`~tongcrm.counter.OwnRows`) and
``enqueue`` (a job written in the same transaction, so the plugin's rows and the work they imply commit
together), and commits when the block ends or rolls back when it raises.

``seal``/``unseal`` encrypt a value with the installation's key, bound to a context string, so a plugin can
keep secrets it generates (signing keys) encrypted at rest like the core's.

Routes ask for it as ``store: NamedDependency[PluginStore]``; job handlers get it on their
:class:`~tongcrm.plugin.types.PluginJobContext`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.crypto import Vault
from tongcrm.db.base import utcnow
from tongcrm.errors import PluginError
from tongcrm.jobs.queue import enqueue as enqueue_job

if TYPE_CHECKING:
    from tongcrm.counter import OwnRows

__all__ = ["PluginStore", "StoreWork"]


class StoreWork:
    """One unit of work on a plugin's own tables."""

    def __init__(
        self,
        session: AsyncSession,
        tables: Iterable[sa.Table],
        clock: Callable[[], datetime],
        *,
        readonly: bool,
    ) -> None:
        from tongcrm.counter import OwnRows  # the counter imports the job runner, which imports this module

        self._session = session
        self.rows: OwnRows = OwnRows(session, tables, readonly=readonly)
        self.clock = clock
        self.readonly = readonly

    @property
    def dialect(self) -> str:
        return self.rows.dialect

    async def enqueue(
        self,
        job_name: str,
        payload: Mapping[str, Any] | None = None,
        *,
        unique_key: str | None = None,
        delay_seconds: float = 0,
    ) -> bool:
        """Schedule a job when this unit of work commits; ``False`` when ``unique_key`` was already scheduled."""
        if self.readonly:
            raise PluginError("this unit of work is read-only")
        return await enqueue_job(
            self._session,
            job_name,
            payload,
            run_at=self.clock() + timedelta(seconds=delay_seconds),
            unique_key=unique_key,
        )

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        """A savepoint: what the block did is undone if it raises; the unit of work goes on."""
        async with self._session.begin_nested():
            yield


class PluginStore:
    """Made once per app (``app.state.store``) and once per job runner."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        vault: Vault | None,
        *,
        read_sessions: async_sessionmaker[AsyncSession] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._sessions = sessions
        self._read_sessions = read_sessions or sessions
        self._vault = vault
        self.clock: Callable[[], datetime] = clock or utcnow

    @asynccontextmanager
    async def unit_of_work(
        self, *, tables: Iterable[sa.Table], readonly: bool = False
    ) -> AsyncIterator[StoreWork]:
        """One transaction on ``tables``: committed when the block ends, rolled back when it raises."""
        factory = self._read_sessions if readonly else self._sessions
        async with factory() as session, session.begin():
            yield StoreWork(session, tables, self.clock, readonly=readonly)

    def _need_vault(self) -> Vault:
        if self._vault is None:
            raise PluginError("this store has no key to seal secrets with")
        return self._vault

    def seal(self, value: str, *, context: str) -> str:
        """``value`` encrypted with the installation's key, bound to ``context`` (where it is kept)."""
        return self._need_vault().encrypt(value, context=context)

    def unseal(self, token: str, *, context: str) -> str:
        return self._need_vault().decrypt(token, context=context)
