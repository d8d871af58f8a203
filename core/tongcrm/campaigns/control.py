"""Control-group assignment: which members of a campaign's audience are deliberately not messaged.

The assignment is a pure function of (campaign id, seed, member id): HMAC-SHA256 keyed by the seed, the first
8 bytes as an integer, compared modulo 10 000 with the share in basis points. Hence

* **stable**: a member is in the same group in every run of the campaign, in every process, after restarts;
* **unbiased**: the hash knows nothing about the member, so the two groups are comparable (tested with a
  chi-square over generated audiences);
* **reproducible** by an analyst who knows the seed; it needs no secrecy, so it does not use the instance's
  secret key (rotating that must not reshuffle a running campaign).

The share is at most 50 %: a control larger than the treatment makes the campaign the experiment's minority.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BIT

__all__ = [
    "CONTROL",
    "MAX_BP",
    "SQLITE_FUNCTION",
    "TREATMENT",
    "bucket",
    "draw_sql",
    "group_sql",
    "in_control",
    "share_bp",
    "split",
]

TREATMENT = "treatment"
CONTROL = "control"
MAX_BP = 5_000
_SCALE = 10_000


def share_bp(percent: float) -> int:
    """A control share in percent (0–50, at most two decimals) as basis points; ValueError saying why not."""
    if not 0 <= percent <= MAX_BP / 100:
        raise ValueError(f"the control share is {percent:g} %; it must lie between 0 and {MAX_BP / 100:g} %")
    points = round(percent * 100)
    if abs(points - percent * 100) > 1e-6:
        raise ValueError("the control share has at most two decimals")
    return points


#: The SQLite function (registered on every SQLite connection by :mod:`tongcrm.db.engine`) giving :func:`bucket`.
SQLITE_FUNCTION = "tongcrm_control_bucket"
_BLOCK = 64  # SHA-256's block size: an HMAC key is padded (or first hashed) to it
_TWO_64_MOD_SCALE = 2**64 % _SCALE


def _key(seed: str) -> bytes:
    return f"tongcrm.campaign-control:{seed}".encode()


def bucket(campaign_id: int, member_id: int, seed: str = "") -> int:
    """The member's place, 0–9 999, in the campaign's control draw; below the share in basis points is control."""
    digest = hmac.new(_key(seed), f"{campaign_id}:{member_id}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % _SCALE


def in_control(campaign_id: int, member_id: int, bp: int, seed: str = "") -> bool:
    return bp > 0 and bucket(campaign_id, member_id, seed) < bp


def _pads(seed: str) -> tuple[bytes, bytes]:
    """HMAC's inner and outer keys (RFC 2104), so the database can compute the HMAC with its plain SHA-256."""
    key = _key(seed)
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def draw_sql(
    dialect: str, campaign_id: int, member_id: sa.ColumnElement[int], seed: str = ""
) -> sa.ColumnElement[int]:
    """The member's draw as a SQL expression, for :func:`group_sql` — :func:`in_control` computed by the
    database, so a run's audience is frozen and split by one ``INSERT … SELECT`` instead of a million HMACs in
    Python.

    PostgreSQL has SHA-256 but no HMAC (without pgcrypto), so the HMAC is built from the inner and outer keys,
    and the draw is the first 8 digest bytes as a *signed* bigint (PostgreSQL has no unsigned one);
    :func:`group_sql` brings it to the unsigned value's remainder. Select it in a subquery behind a fence
    (``OFFSET 0``) so the digest is computed once per member, not once per use. SQLite calls :func:`bucket`
    through a registered function. Tested equal to :func:`in_control` on both databases."""
    if dialect != "postgresql":
        return getattr(sa.func, SQLITE_FUNCTION)(campaign_id, member_id, seed)  # type: ignore[no-any-return]
    inner, outer = _pads(seed)
    message = sa.func.convert_to(sa.literal(f"{campaign_id}:") + sa.cast(member_id, sa.Text), "UTF8")

    def cat(a: sa.ColumnElement[bytes], b: sa.ColumnElement[bytes]) -> sa.ColumnElement[bytes]:
        return a.op("||", return_type=sa.LargeBinary)(b)

    pad_in, pad_out = sa.literal(inner, sa.LargeBinary), sa.literal(outer, sa.LargeBinary)
    digest = sa.func.sha256(cat(pad_out, sa.func.sha256(cat(pad_in, message))))
    hex_text = sa.literal("x") + sa.func.encode(sa.func.substring(digest, 1, 8), "hex")
    return sa.cast(sa.cast(hex_text, BIT(64)), sa.BigInteger)


def group_sql(dialect: str, draw: sa.ColumnElement[int], bp: int) -> sa.ColumnElement[str]:
    """``'control'`` or ``'treatment'`` from a :func:`draw_sql` column and the share in basis points."""
    if bp <= 0:
        return sa.literal(TREATMENT, sa.String(16))
    place: sa.ColumnElement[int] = draw
    if dialect == "postgresql":  # the signed draw's unsigned remainder: add 2**64 mod 10 000 when negative
        place = (draw % _SCALE + _SCALE + sa.case((draw < 0, _TWO_64_MOD_SCALE), else_=0)) % _SCALE
    return sa.case(
        (place < bp, sa.literal(CONTROL, sa.String(16))), else_=sa.literal(TREATMENT, sa.String(16))
    )


def split(campaign_id: int, member_ids: Iterable[int], bp: int, seed: str = "") -> list[int]:
    """The members of ``member_ids`` that are in the control group."""
    return [m for m in member_ids if in_control(campaign_id, m, bp, seed)]
