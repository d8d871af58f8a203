"""Dependencies handlers ask for by name. Services get session factories and open their own unit of work."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import Provide
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.security import principal_of
from tongcrm.auth.service import Principal
from tongcrm.config import Settings
from tongcrm.counter import CounterService
from tongcrm.crypto import Vault
from tongcrm.membership import MembershipService
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.store import PluginStore
from tongcrm.replay.service import ReplayGuard


def _sessions(state: State) -> async_sessionmaker[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = state.sessions
    return sessions


def _read_sessions(state: State) -> async_sessionmaker[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = state.read_sessions
    return sessions


def _host(state: State) -> PluginHost:
    host: PluginHost = state.host
    return host


def _settings(state: State) -> Settings:
    settings: Settings = state.settings
    return settings


def _vault(state: State) -> Vault:
    vault: Vault = state.vault
    return vault


def _membership(state: State) -> MembershipService:
    service: MembershipService = state.membership
    return service


def _counter(state: State) -> CounterService:
    service: CounterService = state.counter
    return service


def _store(state: State) -> PluginStore:
    store: PluginStore = state.store
    return store


def _replay_guard(state: State) -> ReplayGuard:
    service: ReplayGuard = state.replay_guard
    return service


def _principal(request: Request[Any, Any, Any]) -> Principal:
    return principal_of(request)


dependencies: dict[str, Provide] = {
    "sessions": Provide(_sessions, sync_to_thread=False),
    "read_sessions": Provide(_read_sessions, sync_to_thread=False),
    "host": Provide(_host, sync_to_thread=False),
    "settings": Provide(_settings, sync_to_thread=False),
    "principal": Provide(_principal, sync_to_thread=False),
    "membership": Provide(_membership, sync_to_thread=False),
    "counter": Provide(_counter, sync_to_thread=False),
    "replay_guard": Provide(_replay_guard, sync_to_thread=False),
    "store": Provide(_store, sync_to_thread=False),
    "vault": Provide(_vault, sync_to_thread=False),
}
