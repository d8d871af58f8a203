"""Every text the API takes into a bounded column is refused when longer than the column keeps: a 400 naming the
field and the limit, on both databases (it was a 500 on PostgreSQL and stored whole on SQLite). The limits are read
from the columns (:mod:`tongcrm.db.lengths`), so they cannot drift from them."""

from __future__ import annotations

from typing import Any

import pytest
from tongcrm.consent.models import ConsentEvent
from tongcrm.db.lengths import check_fits, column_length, fits
from tongcrm.entitlements.models import EntitlementUsage
from tongcrm.errors import Unprocessable
from tongcrm.messaging.models import MessageTemplate, MessengerAccount
from tongcrm.tiers.models import MemberTier, TierLadder

#: (method, path, body without the field, field, the column that keeps it)
ROUTES: list[tuple[str, str, dict[str, Any], str, Any]] = [
    ("PUT", "/api/tiers/ladder", {"ladder": {}}, "reason", TierLadder.reason),
    ("POST", "/api/tiers/preview", {"ladder": {}}, "reason", TierLadder.reason),
    (
        "PUT",
        "/api/members/{m}/tier/override",
        {"tier": "gold", "until": "2099-01-01"},
        "reason",
        MemberTier.override_reason,
    ),
    (
        "PUT",
        "/api/members/{m}/tier/override",
        {"until": "2099-01-01", "reason": "x"},
        "tier",
        MemberTier.override_code,
    ),
    (
        "POST",
        "/api/members/{m}/consents",
        {"purpose": "marketing", "status": "opt_in"},
        "source",
        ConsentEvent.source,
    ),
    ("POST", "/api/entitlements/grants/1/usages", {}, "usage_key", EntitlementUsage.usage_key),
    (
        "POST",
        "/api/entitlements/grants/1/usages",
        {"usage_key": "o-1"},
        "reference",
        EntitlementUsage.reference,
    ),
    (
        "POST",
        "/api/members/{m}/entitlements/free_shipping/usages",
        {},
        "usage_key",
        EntitlementUsage.usage_key,
    ),
    ("POST", "/api/messenger-accounts", {"messenger": "sms"}, "name", MessengerAccount.name),
]
_TEMPLATE = {
    "name": "t",
    "account": "sms",
    "purpose": "service",
    "signature": "s",
    "template_code": "c",
    "text": "x",
}
ROUTES += [
    (
        "POST",
        "/api/message-templates",
        {k: v for k, v in _TEMPLATE.items() if k != f},
        f,
        getattr(MessageTemplate, f),
    )
    for f in ("name", "signature", "template_code")
]


async def test_a_text_longer_than_its_column_is_a_400_naming_the_field_and_the_limit(
    make_client: Any,
) -> None:
    async with make_client(role="admin") as api:
        r = await api.post("/api/members", json={"name": "x"})
        m = r.json()["id"]
        for method, path, body, field, column in ROUTES:
            limit = column_length(column)
            url = path.format(m=m)
            r = await api.request(method, url, json={**body, field: "a" * (limit + 1)})
            assert r.status_code == 400, (url, field, r.text)
            assert field in r.json()["detail"] and str(limit) in r.json()["detail"], (url, r.text)
            # as long as the column keeps is not refused for its length (the route may refuse it otherwise)
            r = await api.request(method, url, json={**body, field: "a" * limit})
            assert r.status_code < 500 and f"length <= {limit}" not in r.text, (url, field, r.text)


async def test_lone_surrogates_in_a_body_are_a_400(make_client: Any) -> None:
    """A JSON ``\\ud800`` cannot be encoded to UTF-8 for either database."""
    async with make_client(role="admin") as api:
        r = await api.post(
            "/api/members", content=b'{"name": "a\\ud800b"}', headers={"content-type": "application/json"}
        )
        assert 400 <= r.status_code < 500, r.text


@pytest.mark.parametrize("column", [TierLadder.reason, ConsentEvent.source, EntitlementUsage.usage_key])
def test_the_bounds_are_read_from_the_columns(column: Any) -> None:
    limit = column.property.columns[0].type.length
    assert column_length(column) == limit and fits(column).max_length == limit
    check_fits("a" * limit, "f", column)
    with pytest.raises(Unprocessable, match=f"f is longer than {limit} characters"):
        check_fits("a" * (limit + 1), "f", column)
