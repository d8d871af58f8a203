"""Shared helpers for the member-base tests: a plugin host with test identity kinds, a vault and a clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tongcrm.crypto import Vault
from tongcrm.identity.service import ResolutionContext
from tongcrm.plugin import hookimpl
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import IdentityKindSpec

SECRET = "test-secret-key-0123456789abcdef"


class TestKinds:
    """A plugin declaring one strong and one weak identity kind."""

    __test__ = False

    @hookimpl
    def identity_kinds(self) -> list[IdentityKindSpec]:
        return [
            IdentityKindSpec("shop.uid", strong=True, description="a shop's buyer id"),
            IdentityKindSpec("shop.oaid", strong=False, description="a receiver id that changes weekly"),
        ]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 11, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def make_host() -> PluginHost:
    host = PluginHost(autoload=False)
    host.register(TestKinds(), "testkinds")
    return host


@pytest.fixture
def vault() -> Vault:
    return Vault(SECRET)


@pytest.fixture
def ctx(vault: Vault) -> ResolutionContext:
    return ResolutionContext(host=make_host(), vault=vault, clock=Clock())
