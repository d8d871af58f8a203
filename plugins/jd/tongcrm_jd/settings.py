"""The settings of one JD channel account, as the core stores them (strings) and as the adapter uses them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tongcrm.plugin.types import SettingField

from tongcrm_jd.client import DEFAULT_GATEWAY

MAX_PAGE_SIZE = 100  # JOS refuses more (protocols.md §2.3)

SETTINGS: tuple[SettingField, ...] = (
    SettingField(
        "app_key",
        "App key of the JOS application (open.jd.com)",
        help_by_locale={"zh": "京东宙斯开放平台（JOS，open.jd.com）应用的 App Key"},
        labels={"zh": "应用 App Key"},
    ),
    SettingField(
        "app_secret",
        "App secret of the JOS application",
        secret=True,
        help_by_locale={"zh": "JOS 应用的 App Secret"},
        labels={"zh": "应用密钥（App Secret）"},
    ),
    SettingField(
        "access_token",
        "The shop's access token from JOS OAuth authorisation",
        secret=True,
        help_by_locale={
            "zh": "本店铺经 JOS OAuth 授权获得的 access_token：店铺在京东开放平台重新授权应用后获得"
        },
        labels={"zh": "店铺授权令牌（access token）"},
    ),
    SettingField(
        "gateway_url",
        "JOS gateway; change only for a sandbox or a test gateway",
        required=False,
        default=DEFAULT_GATEWAY,
        help_by_locale={"zh": "JOS 网关地址；仅在使用沙箱或测试网关时修改"},
        labels={"zh": "网关地址"},
    ),
    SettingField(
        "initial_sync_days",
        "How many days of orders the first sync fetches, counted back from now",
        required=False,
        default="30",
        help_by_locale={"zh": "首次同步拉取多少天内的订单（从现在往前算）"},
        labels={"zh": "首次同步天数"},
    ),
    SettingField(
        "page_size",
        f"Orders per API call, 1 to {MAX_PAGE_SIZE}",
        required=False,
        default="100",
        help_by_locale={"zh": f"每次调用接口拉取的订单数，1 到 {MAX_PAGE_SIZE}"},
        labels={"zh": "每页订单数"},
    ),
    SettingField(
        "calls_per_second",
        "The JOS app's call limit per second, shared by every shop of the app on every worker (0: none)",
        required=False,
        default="0",
        help_by_locale={"zh": "JOS 应用每秒调用上限，由该应用下所有店铺、所有 worker 共享（0：不限）"},
        labels={"zh": "每秒调用上限"},
    ),
)


@dataclass(frozen=True, slots=True)
class JdSettings:
    """Validated settings. ``repr`` leaves the secrets out so that a logged adapter never leaks them."""

    app_key: str
    app_secret: str
    access_token: str
    gateway_url: str
    initial_sync_days: int
    page_size: int
    calls_per_second: int = 0

    def __repr__(self) -> str:
        return (
            f"JdSettings(app_key={self.app_key!r}, gateway_url={self.gateway_url!r}, "
            f"initial_sync_days={self.initial_sync_days}, page_size={self.page_size})"
        )


def _int(raw: Mapping[str, str], name: str, low: int, high: int) -> int:
    default = next(f.default for f in SETTINGS if f.name == name)
    text = (raw.get(name) or default or "").strip()
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"setting {name} must be a whole number from {low} to {high}, got {text!r}")
    return int(text)


def parse_settings(raw: Mapping[str, str]) -> JdSettings:
    """Check and convert the stored strings; errors name the setting, never a secret's value."""
    for name in ("app_key", "app_secret", "access_token"):
        if not (raw.get(name) or "").strip():
            raise ValueError(f"setting {name} is required")
    gateway = (raw.get("gateway_url") or DEFAULT_GATEWAY).strip()
    if not gateway.startswith(("https://", "http://")):
        raise ValueError(f"setting gateway_url must be an http(s) URL, got {gateway!r}")
    return JdSettings(
        app_key=raw["app_key"].strip(),
        app_secret=raw["app_secret"].strip(),
        access_token=raw["access_token"].strip(),
        gateway_url=gateway,
        initial_sync_days=_int(raw, "initial_sync_days", 0, 3650),
        page_size=_int(raw, "page_size", 1, MAX_PAGE_SIZE),
        calls_per_second=_int(raw, "calls_per_second", 0, 100_000),
    )
