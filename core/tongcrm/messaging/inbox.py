"""What a messenger plugin's callback routes get from the core: authentication of the gateway's callback and
recording of receipts and replies, each in one core-owned transaction. Plugins never see a session.

A plugin's router declares ``dependencies={"inbox": Provide(provide_inbox, sync_to_thread=False)}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from litestar.datastructures import State
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.crypto import Vault
from tongcrm.errors import Unauthorized
from tongcrm.messaging import service
from tongcrm.messaging.policy import PolicyConfig
from tongcrm.plugin.types import DeliveryReceipt, InboundReply
from tongcrm.programme.service import SettingsCache


@dataclass(frozen=True, slots=True)
class Inbox:
    sessions: async_sessionmaker[AsyncSession]
    vault: Vault
    config: PolicyConfig

    @property
    def opt_out_keywords(self) -> tuple[str, ...]:
        return self.config.opt_out_keywords

    async def authenticate(self, messenger: str, account_name: str, token: str) -> int:
        """The messenger account's id when ``token`` is its callback token; :class:`Unauthorized` otherwise
        (the same answer for an unknown account and a wrong token)."""
        if not token or not service.check_callback_token(self.vault, account_name, token):
            raise Unauthorized("unknown account or wrong callback token")
        async with self.sessions() as session:
            account = await service.get_account(session, account_name) if account_name else None
        if account is None or account.messenger != messenger:
            raise Unauthorized("unknown account or wrong callback token")
        return account.id

    async def record_receipts(
        self, account_id: int, receipts: Sequence[DeliveryReceipt], errors: Sequence[tuple[str, str]] = ()
    ) -> service.InboundResult:
        async with self.sessions() as session, session.begin():
            return await service.record_receipts(session, self.vault, account_id, receipts, errors)

    async def record_replies(
        self,
        account_id: int,
        replies: Sequence[tuple[InboundReply, str | None]],
        errors: Sequence[tuple[str, str]] = (),
    ) -> service.InboundResult:
        """``replies``: each reply with the opt-out keyword it matched (``None``: an ordinary reply)."""
        async with self.sessions() as session, session.begin():
            return await service.record_replies(session, self.vault, account_id, replies, errors)


async def provide_inbox(state: State) -> Inbox:
    """The inbox with the programme settings in force (the opt-out keywords), read through the app's
    short-lived cache so a burst of reply pushes does not read them once each."""
    cache: SettingsCache = state.programme_settings
    return Inbox(state.sessions, state.vault, (await cache.get()).policy())
