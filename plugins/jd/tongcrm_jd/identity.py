"""The identity kinds JD orders produce.

``jd.open_id`` is the buyer's ``open_id_buyer``: JD's replacement for the pin, one stable value per buyer (for
a given ISV app). It names one buyer account, so it is strong.

``jd.pin`` is the legacy buyer account name, still the only identifier on older orders and on accounts JD has
not migrated. It is also strong: a pin is the login name of exactly one JD account, never re-issued, and
unlike Taobao's ``oaid`` it names the buyer, not a receiver. Masked pins (``jd_***``) are not pins and are
never claimed. The adapter claims ``jd.pin`` only when ``open_id_buyer`` is absent, so the two kinds do not
link a buyer to itself; linking old pin-only history to an open_id member is left to the mobile claim or an
operator merge.
"""

from __future__ import annotations

from tongcrm.plugin.types import IdentityKindSpec

JD_OPEN_ID = IdentityKindSpec(
    name="jd.open_id",
    strong=True,
    description="JD buyer open_id (open_id_buyer), stable per buyer for the app that syncs the shop",
    labels={"zh": "京东买家 open_id"},
)
JD_PIN = IdentityKindSpec(
    name="jd.pin",
    strong=True,
    description="Legacy JD buyer pin (account name); claimed only for orders that carry no open_id_buyer",
    labels={"zh": "京东账号 pin"},
)

IDENTITY_KINDS: tuple[IdentityKindSpec, ...] = (JD_OPEN_ID, JD_PIN)
