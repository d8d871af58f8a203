"""Fixtures for core tests: the in-memory channel of the test kit, on a hermetic plugin host."""

from __future__ import annotations

import pytest
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.memory import MemoryChannel


@pytest.fixture
def memory_channel() -> MemoryChannel:
    return MemoryChannel()


@pytest.fixture
def memory_host(memory_channel: MemoryChannel) -> PluginHost:
    host = PluginHost(autoload=False)
    host.register(memory_channel.plugin(), "memory")
    return host
