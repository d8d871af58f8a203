"""Seeded, bulk generation of a member base for benchmarks: members with an encrypted mobile, and their
``mobile`` identities under the real blind index. Deterministic for a given seed and size.

    python tests/benchmarks/member_seed.py sqlite:///bench.sqlite3 1000000
"""

from __future__ import annotations

import asyncio
import importlib
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from tongcrm.crypto import Vault
from tongcrm.db import migrate
from tongcrm.db.base import metadata
from tongcrm.db.engine import create_engine
from tongcrm.db.models import import_models
from tongcrm.identity.models import Identity
from tongcrm.members.masked import masked_index
from tongcrm.members.models import Member
from tongcrm.members.phone import MOBILE_CONTEXT, MOBILE_INDEX_PURPOSE
from tongcrm.plugin.host import PluginHost

SECRET = "bench-secret-key-0123456789abcdef"
CHUNK = 20_000
#: The tables the member benchmarks touch (and what they reference).
MODEL_MODULES = (
    "tongcrm.auth.models",
    "tongcrm.jobs.models",
    "tongcrm.channels.models",
    "tongcrm.orders.models",
    "tongcrm.members.models",
    "tongcrm.identity.models",
    "tongcrm.consent.models",
    "tongcrm.audit.models",
)
PREFIXES = ("138", "139", "150", "151", "186", "187", "135", "136")


def mobile(i: int) -> str:
    """The i-th member's national number: distinct for i < 8·10^8."""
    return f"{PREFIXES[i % len(PREFIXES)]}{i // len(PREFIXES):08d}"


def rows(
    n: int, vault: Vault, seed: int, *, masked: bool = True
) -> Iterator[tuple[list[dict[str, object]], list[dict[str, object]]]]:
    rnd = random.Random(seed)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    cities = ["杭州", "上海", "北京", "深圳", "成都", None]
    for start in range(0, n, CHUNK):
        members, identities = [], []
        for i in range(start, min(n, start + CHUNK)):
            e164 = "+86" + mobile(i)
            # as ingest writes a verified mobile: the masked form's blind index on the member and its identity
            # (what searches by a platform's masked mobile read; it widens the rows a lookup reads)
            index = masked_index(vault, e164) if masked else None
            members.append(
                {
                    "id": i + 1,
                    "status": "active",
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                    "name": f"会员{i}",
                    "city": rnd.choice(cities),
                    "mobile_enc": vault.encrypt(e164, context=MOBILE_CONTEXT),
                    "mobile_masked_index": index,
                    "profile_meta": {},
                    "lifecycle_stage": "new",
                    "source_channel": rnd.choice(["taobao", "jd", "pos"]),
                }
            )
            identities.append(
                {
                    "id": i + 1,
                    "kind": "mobile",
                    "value": vault.blind_index(e164, purpose=MOBILE_INDEX_PURPOSE),
                    "value_enc": vault.encrypt(e164, context=MOBILE_CONTEXT),
                    "masked_index": index,
                    "member_id": i + 1,
                    "evidence": "seed",
                    "first_seen_at": now,
                    "last_seen_at": now,
                }
            )
        yield members, identities


async def _schema(engine: AsyncEngine) -> None:
    """The whole schema ``tongcrm db upgrade`` makes (the till's tables too), so that an app served on the seed
    starts as on a real installation: its start-up rehearsal reads the till's tables, and logged a failure on
    the members-only schema this made before. A database seeded before that (tables, no migration recorded) gets
    the tables it lacks."""
    async with engine.connect() as conn:
        seeded_before = await conn.run_sync(lambda c: sa.inspect(c).has_table("members"))
    if not seeded_before:
        await migrate.upgrade(engine, PluginHost(autoload=False))
        return
    import_models()
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


async def seed(url: str, n: int, *, seed: int = 42, masked: bool = True) -> float:
    """Create the schema and ``n`` members; returns seconds taken. ``masked=False``: without the masked mobile's
    indexes, as a base from before revisions 0024 and 0033 (the masked search benchmark backfills them)."""
    for name in MODEL_MODULES:
        importlib.import_module(name)
    started = time.perf_counter()
    vault = Vault(SECRET)
    engine = create_engine(url)
    try:
        await _schema(engine)
        members_t = Member.__table__
        identities_t = Identity.__table__
        for member_rows, identity_rows in rows(n, vault, seed, masked=masked):
            async with engine.begin() as conn:
                await conn.execute(sa.insert(members_t), member_rows)
                await conn.execute(sa.insert(identities_t), identity_rows)
        if engine.dialect.name == "postgresql":
            async with engine.begin() as conn:
                for table in ("members", "identities"):
                    sql = f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"  # noqa: S608
                    await conn.execute(sa.text(sql))
            # as after any bulk load: statistics for the planner, and the visibility map and hint bits set now
            # rather than by autovacuum and first readers in the middle of a measurement
            async with engine.connect() as conn:
                await (await conn.execution_options(isolation_level="AUTOCOMMIT")).execute(
                    sa.text("VACUUM ANALYZE")
                )
    finally:
        await engine.dispose()
    return time.perf_counter() - started


if __name__ == "__main__":
    took = asyncio.run(seed(sys.argv[1], int(sys.argv[2])))
    print(f"seeded {sys.argv[2]} members in {took:.1f}s")
