"""Hook implementations of the jd plugin; tongcrm loads this module through the `tongcrm` entry point."""

from __future__ import annotations

from tongcrm.plugin import hookimpl
from tongcrm.plugin.types import ChannelCapability, ChannelSpec

from tongcrm_jd.adapter import create_adapter
from tongcrm_jd.identity import IDENTITY_KINDS
from tongcrm_jd.settings import SETTINGS

JD_CHANNEL = ChannelSpec(
    name="jd",
    display_name="JD (京东)",
    display_names={"zh": "京东"},
    settings=SETTINGS,
    factory=create_adapter,
    identity_kinds=IDENTITY_KINDS,
    # the shop re-authorises the JOS app and brings back a new access token; the app's key stays
    reauthorise=("access_token",),
    # the adapter's horizon stops at ChannelContext.until, so a long backfill can be synced in windows
    capabilities=frozenset({ChannelCapability.FETCH_ORDERS, ChannelCapability.BACKFILL_WINDOWS}),
)


@hookimpl
def channels() -> list[ChannelSpec]:
    return [JD_CHANNEL]
