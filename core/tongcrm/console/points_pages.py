"""The points adjustment page: grant or deduct a member's points with a reason, from the member 360 page.

It is ``POST /api/members/{id}/points/adjustments`` for an operator without a terminal: the same service
(:func:`tongcrm.points.service.adjust`) under the same once-per-key guard (:func:`tongcrm.points.service.idempotent`)
in one unit of work, with the session's key as the actor (``apikey:<id>``, as the API's ledger entries name it)
and the same roles (operators and admins; analysts see the balance but no form, and the guard refuses their
POST). The form carries an idempotency key drawn when the page was rendered, so a double submit, a reload of
the POST or a retry after a lost answer adjusts once: the repeat finds the stored result and shows the same
adjustment. A refusal (a deduction beyond the balance, an expiry in the past, no reason) shows the form again
with what was typed and the service's reason; nothing was stored, so the same key may be sent again.
"""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from litestar import Request, Response, get, post
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.api.inputs import PathId
from tongcrm.audit.service import Actor
from tongcrm.console.forms import form_fields, principal_of
from tongcrm.console.problems import explain_text
from tongcrm.console.web import (
    PREFIX,
    ConsoleController,
    action,
    context_of,
    page,
    problem_text,
    redirect,
    render,
)
from tongcrm.db.base import utcnow
from tongcrm.db.engine import transaction
from tongcrm.db.lengths import column_length
from tongcrm.errors import NotFound, TongcrmError, Unprocessable
from tongcrm.members import service as members
from tongcrm.members.models import Member
from tongcrm.points import service as points
from tongcrm.points.ledger import MAX_ENTRY_POINTS
from tongcrm.points.models import PointsEntry
from tongcrm.points.schemas import BalanceOut, EntryOut

#: The ledger's reason column holds this many characters (read from it, so the form cannot drift from it).
MAX_REASON = column_length(PointsEntry.reason)
#: Ledger entries shown above the form (the newest), enough to see what was adjusted last.
RECENT = 5
#: The idempotency key of a form this console drew: its prefix names where the adjustment came from.
KEY_PREFIX = "console-"
DIRECTIONS = ("grant", "deduct")


def new_key() -> str:
    """A fresh idempotency key for one adjustment form (unguessable, so no two forms share one)."""
    return KEY_PREFIX + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class AdjustForm:
    """The form as typed (kept on a refusal) and the key it carries."""

    direction: str = ""
    points: str = ""
    reason: str = ""
    expires_on: str = ""
    key: str = ""

    @classmethod
    def of(cls, fields: dict[str, str]) -> AdjustForm:
        return cls(
            direction=fields.get("direction", "")[:10],
            points=fields.get("points", "")[:40],
            reason=fields.get("reason", "")[: MAX_REASON + 1],
            expires_on=fields.get("expires_on", "")[:10],
            key=fields.get("idempotency_key", "")[:100],
        )


@dataclass(frozen=True, slots=True)
class Adjustment:
    """What the form asks for, in the API's terms (``AdjustmentIn``: signed points, reason, expiry)."""

    points: int
    reason: str
    expires_at: datetime | None

    def body(self) -> dict[str, Any]:
        """The request as the API's idempotency guard hashes it (``msgspec.to_builtins(AdjustmentIn)``)."""
        return {
            "points": self.points,
            "reason": self.reason,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


def whole_points(text: str) -> int:
    """A positive whole number of points as an operator types it: ``1000``, ``1,000``, ``１０００`` or
    ``1 000`` (full-width digits and commas are folded; no decimals, no sign: the direction says that)."""
    folded = unicodedata.normalize("NFKC", text).replace(",", "").replace(" ", "").strip()
    if not folded.isascii() or not folded.isdigit():
        raise Unprocessable(
            f"points: {text.strip()!r} is not a whole number of points",
            code="points.not_whole",
            params={"value": text.strip()},
        )
    value = int(folded)
    if value <= 0:
        raise Unprocessable(
            "points: give a number above 0 (the direction says grant or deduct)", code="points.not_positive"
        )
    if value > MAX_ENTRY_POINTS:
        raise Unprocessable(
            f"points: one adjustment moves at most {MAX_ENTRY_POINTS:,} points",
            code="points.entry_too_large",
            params={"max": MAX_ENTRY_POINTS},
        )
    return value


def parse(form: AdjustForm, tz: Any) -> Adjustment:
    """The form's adjustment, or :class:`Unprocessable` naming the field that is wrong. The service checks
    again (a reason, a future expiry, the balance); these are the checks only a form needs."""
    if form.direction not in DIRECTIONS:
        raise Unprocessable("direction: choose grant or deduct", code="points.direction")
    amount = whole_points(form.points)
    reason = form.reason.strip()
    if not reason:
        raise Unprocessable(
            "reason: say why the points are adjusted (it is kept in the ledger)",
            code="points.reason_required",
        )
    if len(reason) > MAX_REASON:
        raise Unprocessable(
            f"reason: at most {MAX_REASON} characters",
            code="points.reason_too_long",
            params={"max": MAX_REASON, "length": len(reason)},
        )
    expires_at = None
    if form.expires_on.strip():
        if form.direction == "deduct":
            raise Unprocessable(
                "expires on: a deduction takes existing points; only a grant has an expiry",
                code="points.expiry_on_deduct",
            )
        try:
            day = date.fromisoformat(form.expires_on.strip())
        except ValueError as exc:
            raise Unprocessable(
                f"expires on: {form.expires_on!r} is not a date like 2027-01-31",
                code="points.expiry_not_date",
                params={"value": form.expires_on},
            ) from exc
        # valid through the day chosen, in the programme's zone: the lot expires as the next day begins
        expires_at = datetime.combine(day + timedelta(days=1), time.min, tzinfo=tz).astimezone(UTC)
    return Adjustment(amount if form.direction == "grant" else -amount, reason, expires_at)


@dataclass(frozen=True, slots=True)
class PointsView:
    member: members.MemberSummary
    balance: BalanceOut
    recent: list[EntryOut]
    #: Set when the id asked for was merged: the page is the survivor's.
    redirected_from: int | None


async def points_view(request: Request[Any, Any, Any], member_id: int) -> PointsView:
    """The member (masked, as every page shows it), its balance and newest entries; a merged member's id
    shows the member it was merged into, as the 360 page does."""
    state = request.app.state
    async with state.read_sessions() as session, session.begin():
        live = await members.resolve_live_id(session, member_id)
        if live is None:
            raise NotFound(f"no member {member_id}")
        row = (await session.execute(sa.select(Member).where(Member.id == live))).scalar_one()
        summary = (await members.summaries(session, state.vault, [row]))[0]
        statement = await points.statement(session, live, tz=state.settings.tz, limit=RECENT)
    return PointsView(summary, statement.balance, statement.entries, None if live == member_id else member_id)


async def adjust_once(
    session: AsyncSession, ctx: points.PointsContext, member_id: int, change: Adjustment, key: str
) -> tuple[int, bool]:
    """The API's adjustment: at most once per ``key`` (the ledger entry's id, and whether this was a repeat)."""
    result, replayed = await points.idempotent(
        session,
        key=key,
        kind="adjustment",
        member_id=member_id,
        body=change.body(),
        now=ctx.clock(),
        action=lambda: points.adjust(
            session, ctx, member_id, change.points, key=key, reason=change.reason, expires=change.expires_at
        ),
    )
    return result.entry_id, replayed


async def _page(
    request: Request[Any, Any, Any],
    member_id: int,
    form: AdjustForm,
    *,
    problem: str | None = None,
    status_code: int = 200,
) -> Response[str]:
    view = await points_view(request, member_id)
    return render(
        request,
        "points_adjust.html",
        {"v": view, "form": form, "problem": problem, "max_reason": MAX_REASON},
        title="adjust.title",
        status_code=status_code,
    )


class PointsAdjustPage(ConsoleController):
    path = PREFIX + "/members/{member_id:int}/points/adjust"

    @get("/", opt=page())
    async def show(self, request: Request[Any, Any, Any], member_id: PathId) -> Response[str]:
        """The balance and, for operators and admins, the form (with a fresh idempotency key)."""
        return await _page(request, member_id, AdjustForm(key=new_key()))

    @post("/", opt=action())
    async def adjust(self, request: Request[Any, Any, Any], member_id: PathId) -> Response[Any]:
        """Grant or deduct once per form; then the 360 page with the new entry marked."""
        form = AdjustForm.of(await form_fields(request))
        if not form.key.startswith(KEY_PREFIX):
            # a form this console did not draw (or one without its key): a new key, nothing done
            form = AdjustForm(form.direction, form.points, form.reason, form.expires_on, new_key())
            lang = context_of(request).lang
            no_key = "the form had no idempotency key: check and send it again"
            return await _page(
                request, member_id, form, problem=explain_text(lang, no_key, "points.no_key"), status_code=400
            )
        state = request.app.state
        ctx = points.PointsContext(
            clock=utcnow,
            tz=state.settings.tz,
            actor=f"apikey:{principal_of(request).key_id}",
            auditor=Actor.of(principal_of(request)),
        )
        try:
            change = parse(form, state.settings.tz)
            async with transaction(state.sessions) as session:
                entry_id, _ = await adjust_once(session, ctx, member_id, change, form.key)
        except TongcrmError as exc:
            if exc.status_code >= 500 or exc.status_code == 404:
                raise
            if "idempotency_key" in exc.extra:
                # this form already adjusted, with other values: a fresh form, so a second adjustment is
                # a deliberate one
                form = AdjustForm(form.direction, form.points, form.reason, form.expires_on, new_key())
            return await _page(
                request, member_id, form, problem=problem_text(request, exc), status_code=exc.status_code
            )
        return redirect(request, f"{PREFIX}/members/{member_id}?adjusted={entry_id}")
