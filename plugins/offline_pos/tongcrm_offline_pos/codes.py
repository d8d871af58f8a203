"""Dynamic member codes: what a member shows from a phone at the till instead of saying a mobile number aloud.

A code is 18 digits: ``8``, the member id in 11 digits, and a 6-digit one-time password (HOTP, RFC 4226
truncation over HMAC-SHA256) for the current 30-second step. The per-member secret is never stored: it is the
Vault's keyed HMAC of the member id under a purpose of its own, so it rotates with ``TONGCRM_SECRET_KEY`` (codes
made under an old key stay valid while that key is listed in ``TONGCRM_OLD_SECRET_KEYS``).

A code is accepted for its own step and the one after (30–60 s), and only once: the first use writes
``(member_id, step)`` into ``pos_code_uses``, whose primary key refuses a second use at any till, in any
process.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import sqlalchemy as sa
from tongcrm.counter import OwnRows
from tongcrm.crypto import Vault
from tongcrm.errors import Conflict, NotFound

from tongcrm_offline_pos.models import PosCodeUse

STEP_SECONDS = 30
#: Steps after its own that a code is still accepted for.
GRACE_STEPS = 1
DIGITS = 6
PREFIX = "8"
CODE_LENGTH = 1 + 11 + DIGITS
_PURPOSE = "offline_pos.member_code.v1"


@dataclass(frozen=True, slots=True)
class IssuedCode:
    code: str
    member_id: int
    step: int
    expires_at: datetime


def step_of(at: datetime) -> int:
    return int(at.timestamp()) // STEP_SECONDS


def _otp(secret: str, step: int) -> str:
    digest = hmac.new(secret.encode(), step.to_bytes(8, "big"), hashlib.sha256).digest()
    offset = digest[-1] & 0x0F
    number = int.from_bytes(digest[offset : offset + 4], "big") & 0x7FFFFFFF
    return f"{number % 10**DIGITS:0{DIGITS}d}"


def issue(vault: Vault, member_id: int, at: datetime) -> IssuedCode:
    """The code a member's phone shows at ``at`` (the member app's backend calls this through the API)."""
    if not 0 < member_id < 10**11:
        raise ValueError("member id out of range for a member code")
    step = step_of(at)
    secret = vault.blind_index(str(member_id), purpose=_PURPOSE)
    code = f"{PREFIX}{member_id:011d}{_otp(secret, step)}"
    expires = datetime.fromtimestamp((step + 1 + GRACE_STEPS) * STEP_SECONDS, UTC)
    return IssuedCode(code, member_id, step, expires)


def verify(vault: Vault, code: str, at: datetime) -> tuple[int, int] | None:
    """``(member_id, step)`` when ``code`` is genuine and not expired at ``at``; ``None`` otherwise."""
    code = code.strip()
    if len(code) != CODE_LENGTH or not code.isdigit() or not code.startswith(PREFIX):
        return None
    member_id = int(code[1:12])
    given = code[12:]
    now_step = step_of(at)
    secrets = vault.blind_indexes(str(member_id), purpose=_PURPOSE)
    for step in range(now_step - GRACE_STEPS, now_step + 1):
        for secret in secrets:
            if hmac.compare_digest(_otp(secret, step), given):
                return member_id, step
    return None


async def consume(
    rows: OwnRows, vault: Vault, code: str, *, at: datetime, account_id: int, till_code: str
) -> int:
    """The member a code names, recording its one use. 404 for an unknown or expired code, 409 for a used one."""
    found = verify(vault, code, at)
    if found is None:
        raise NotFound("this member code is unknown or has expired: ask the member to refresh it")
    member_id, step = found
    table = cast(sa.Table, PosCodeUse.__table__)
    stmt = (
        rows.insert(table)
        .values(member_id=member_id, step=step, account_id=account_id, till_code=till_code, used_at=at)
        .on_conflict_do_nothing(index_elements=["member_id", "step"])
        .returning(table.c.member_id)
    )
    if (await rows.execute(stmt)).first() is None:
        raise Conflict("this member code was already used: ask the member to show a fresh one")
    return member_id
