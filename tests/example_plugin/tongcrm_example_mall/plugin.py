"""Hook implementations of the example_mall plugin; tongcrm loads this module through its entry point."""

from __future__ import annotations

from collections.abc import Sequence

from tongcrm.plugin import hookimpl
from tongcrm.plugin.types import ChannelSpec, IdentityKindSpec, SettingField

from tongcrm_example_mall.adapter import adapter_from_context

CHANNEL = ChannelSpec(
    name="example_mall",
    display_name="Example Mall",
    settings=(
        SettingField("api_key", "the shop's API key"),
        SettingField("api_secret", "the shop's API secret", secret=True),
        SettingField(
            "gateway_url", "the platform's API base URL", required=False, default="https://api.example.com"
        ),
        SettingField("page_size", "orders per page", required=False, default="50"),
    ),
    factory=adapter_from_context,
    identity_kinds=(
        IdentityKindSpec("example_mall.buyer_id", strong=True, description="Example Mall buyer id"),
    ),
)


@hookimpl
def channels() -> Sequence[ChannelSpec]:
    return [CHANNEL]
