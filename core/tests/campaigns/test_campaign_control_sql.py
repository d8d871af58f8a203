"""The database draws the control group exactly as :func:`control.in_control` does, on both databases — the run's
audience is split by SQL, the reports and the scheduler's budget check split in Python, and they must agree."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from tongcrm.campaigns import control
from tongcrm.db.dialect import dialect_name
from tongcrm.testing.database import TestDatabase

#: Ids around the signed/unsigned edge of the 8-byte draw come up among these (about half the draws are negative
#: as a signed bigint), and a long seed exercises the hashed HMAC key.
IDS = [*range(1, 400), 2**31 - 1, 2**31, 2**40 + 7, 2**53 + 1, 2**62 + 3]


@pytest.mark.parametrize(
    ("seed", "bp"), [("", 1000), ("双11-seed", 5000), ("x" * 80, 1), ("s", 0), ("t", 4999)]
)
async def test_sql_draw_equals_python(tongcrm_db: TestDatabase, seed: str, bp: int) -> None:
    async with tongcrm_db.sessions() as session:
        dialect = dialect_name(session)
        ids = sa.union_all(*(sa.select(sa.literal(i, sa.BigInteger).label("id")) for i in IDS)).subquery(
            "ids"
        )
        drawn = (
            sa.select(ids.c.id, control.draw_sql(dialect, 42, ids.c.id, seed).label("draw"))
            .offset(0)
            .subquery()
        )
        rows = (
            await session.execute(sa.select(drawn.c.id, control.group_sql(dialect, drawn.c.draw, bp)))
        ).all()
    got = {int(i): grp for i, grp in rows}
    want = {i: control.CONTROL if control.in_control(42, i, bp, seed) else control.TREATMENT for i in IDS}
    assert got == want
    if bp >= 1000:  # a real share: both groups occur, so the comparison above was not vacuous
        assert set(got.values()) == {control.CONTROL, control.TREATMENT}
