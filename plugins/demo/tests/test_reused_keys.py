"""``tongcrm demo --reuse`` prints the keys saved in ``demo-keys.txt``: one revoked since (the console's API-keys
page) or unknown to the database is replaced by a new key of its role before it is printed, on each backend."""

from __future__ import annotations

import sqlalchemy as sa
from tongcrm.audit.service import SYSTEM
from tongcrm.auth import audited
from tongcrm.auth.models import ApiKey
from tongcrm.auth.service import key_matches, key_prefix
from tongcrm.config import Settings
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.database import TestDatabase
from tongcrm_demo.runner import live_keys
from tongcrm_demo.story import Keys, key_label


async def test_a_revoked_or_unknown_saved_key_is_replaced_and_a_live_one_kept(
    tongcrm_db: TestDatabase, tongcrm_settings: Settings
) -> None:
    host = PluginHost(autoload=False)
    async with tongcrm_db.sessions() as session, session.begin():
        admin, _ = await audited.create(session, SYSTEM, "admin", host=host, label=key_label("admin"))
        operator, _ = await audited.create(
            session, SYSTEM, "operator", host=host, label=key_label("operator")
        )
        await audited.revoke(session, SYSTEM, operator.id)
    saved = Keys(admin=admin.key, operator=operator.key, pos={})
    kept, renewed = await live_keys(tongcrm_settings, host, saved)
    assert renewed == ["operator"] and kept.admin == admin.key and kept.operator != operator.key
    async with tongcrm_db.sessions() as session:
        rows = (await session.execute(sa.select(ApiKey).order_by(ApiKey.id))).scalars().all()
    assert [(r.role, r.label, r.revoked_at is None) for r in rows] == [
        ("admin", key_label("admin"), True),
        ("operator", key_label("operator"), False),
        ("operator", key_label("operator"), True),  # the new one
    ]
    # the key printed works; a key the database never saw (a folder copied beside another database) too
    new = rows[2]
    assert key_prefix(kept.operator) == new.prefix and key_matches(new.secret_hash, kept.operator)
    again, renewed_again = await live_keys(
        tongcrm_settings, host, Keys(admin="tck_00000000_nothing", operator=kept.operator, pos={})
    )
    assert (
        renewed_again == ["admin"]
        and again.operator == kept.operator
        and again.admin != "tck_00000000_nothing"
    )
