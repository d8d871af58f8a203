"""Dynamic member codes: what a member shows from a phone at the till instead of saying a mobile number aloud.

A code is 18 digits — ``8`` and 17 random digits (about 56 bits) — short enough for a QR code or a Code 128
barcode on a phone screen, and the same shape tills scanned before. It is a random token, not a function of
the member: issuing one stores its SHA-256 with the member id and an expiry (:class:`PosMemberCode`), and a
till's lookup finds the member by that hash. So a code says nothing about who holds it (no member id in it,
in any encoding), two codes of one member have nothing in common, and there is no key that could leak or
rotate it away. Only the hash is stored, so whoever reads the database cannot use a live code.

Why not an encryption of (member id, time step) under the Vault's key, which needs no row per code: an
authenticated encryption adds a nonce and a tag (28 bytes with AES-GCM, some 70 digits); a single-block
cipher with redundancy still makes 39 digits, too long for a till's 1D scanner. Storing a row costs one small
insert when the member app asks for a code (every 30 s while a member shows one), and the lookup writes the
row's use in the same statement that finds it, as the use was written before.

A code is accepted for its own 30-second step and the one after (30–60 s), and only once: the lookup marks the
row used in a conditional UPDATE, which in any process, at any till, succeeds for exactly one caller. Codes are
deleted an hour after they expire, when codes are issued.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import sqlalchemy as sa
from tongcrm.counter import OwnRows
from tongcrm.errors import Conflict, NotFound

from tongcrm_offline_pos.models import PosMemberCode

STEP_SECONDS = 30
#: Steps after its own that a code is still accepted for.
GRACE_STEPS = 1
PREFIX = "8"
RANDOM_DIGITS = 17
CODE_LENGTH = len(PREFIX) + RANDOM_DIGITS
#: How long an expired code's row is kept (a margin for clocks of several processes), then deleted.
KEEP_EXPIRED = timedelta(hours=1)
_TABLE = cast(sa.Table, PosMemberCode.__table__)


@dataclass(frozen=True, slots=True)
class IssuedCode:
    code: str
    member_id: int
    expires_at: datetime


def step_of(at: datetime) -> int:
    return int(at.timestamp()) // STEP_SECONDS


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def well_formed(code: str) -> bool:
    return len(code) == CODE_LENGTH and code.isdigit() and code.startswith(PREFIX)


async def issue(rows: OwnRows, member_id: int, at: datetime) -> IssuedCode:
    """A new code for the member, valid until the end of the step after ``at``'s (stores its hash)."""
    expires = datetime.fromtimestamp((step_of(at) + 1 + GRACE_STEPS) * STEP_SECONDS, UTC)
    await rows.execute(sa.delete(_TABLE).where(_TABLE.c.expires_at < at - KEEP_EXPIRED))
    while (
        True
    ):  # a clash of 17 random digits with a live code is all but impossible; draw again if it happens
        code = PREFIX + f"{secrets.randbelow(10**RANDOM_DIGITS):0{RANDOM_DIGITS}d}"
        stmt = (
            rows.insert(_TABLE)
            .values(code_hash=code_hash(code), member_id=member_id, issued_at=at, expires_at=expires)
            .on_conflict_do_nothing(index_elements=["code_hash"])
            .returning(_TABLE.c.code_hash)
        )
        if (await rows.execute(stmt)).first() is not None:
            return IssuedCode(code, member_id, expires)


async def consume(rows: OwnRows, code: str, *, at: datetime, account_id: int, till_code: str) -> int:
    """The member a code names, recording its one use. 404 for an unknown or expired code, 409 for a used one."""
    code = code.strip()
    unknown = NotFound("this member code is unknown or has expired: ask the member to refresh it")
    if not well_formed(code):
        raise unknown
    digest = code_hash(code)
    used = (
        await rows.execute(
            sa.update(_TABLE)
            .where(_TABLE.c.code_hash == digest, _TABLE.c.used_at.is_(None), _TABLE.c.expires_at > at)
            .values(used_at=at, account_id=account_id, till_code=till_code)
            .returning(_TABLE.c.member_id)
        )
    ).first()
    if used is not None:
        return int(used.member_id)
    row = (
        await rows.execute(
            sa.select(_TABLE.c.used_at).where(_TABLE.c.code_hash == digest, _TABLE.c.expires_at > at)
        )
    ).first()
    if row is None:
        raise unknown
    raise Conflict("this member code was already used: ask the member to show a fresh one")
