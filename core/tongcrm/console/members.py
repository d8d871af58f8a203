"""Member search and the member 360 page, and undoing a merge from it.

Every figure comes from the service functions the API's controllers call (members, orders, points, tiers,
entitlements, messaging, merges), so roles, masking and audit records are the API's: the mobile is masked unless
an admin reveals it (audited, as ``?reveal=mobile,name`` on the API), and the undo is an operator's or admin's write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from litestar import Request, Response, get, post
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from tongcrm.api.inputs import MAX_ID, PathId
from tongcrm.audit import service as audit
from tongcrm.auth.service import Role
from tongcrm.channels.models import ChannelAccount
from tongcrm.console.forms import form_fields
from tongcrm.console.web import (
    PREFIX,
    ConsoleController,
    action,
    actor_of,
    page,
    problem_text,
    redirect,
    render,
)
from tongcrm.db.base import utcnow
from tongcrm.entitlements import service as entitlements
from tongcrm.errors import BadRequest, NotFound, Unprocessable
from tongcrm.members import merge as merging
from tongcrm.members import service as members
from tongcrm.messaging import service as messaging
from tongcrm.orders import service as orders
from tongcrm.points import service as points
from tongcrm.tiers import service as tiers
from tongcrm.tiers.ladder import describe_amount

PAGE_SIZE = 20
MAX_OFFSET = 1_000_000

#: Optional text filters of the search form (bounded: they reach SQL).
Text = Annotated[str | None, QueryParameter(max_length=200)]


class MemberPages(ConsoleController):
    path = PREFIX + "/members"

    @get("/", opt=page())
    async def search(
        self,
        request: Request[Any, Any, Any],
        mobile: Text = None,
        identity: Text = None,
        name: Text = None,
        after: Annotated[int | None, QueryParameter(ge=0, le=MAX_ID)] = None,
    ) -> Response[str]:
        """Search by mobile, ``kind:value`` identity or name prefix; without a filter, the newest members."""
        return await _search(request, SearchForm.of(mobile, identity, name, after), reveal=False)

    @post("/reveal", opt=action(Role.ADMIN))
    async def reveal(self, request: Request[Any, Any, Any]) -> Response[str]:
        """The same page of results with names and mobiles in full: admins only, a CSRF-checked POST (the
        guard) because it writes the ``member.reveal`` audit record the API's ``?reveal=`` writes."""
        form = {k: v[:200] for k, v in (await form_fields(request)).items()}
        after = form.get("after", "")
        searched = SearchForm.of(
            form.get("mobile"),
            form.get("identity"),
            form.get("name"),
            int(after) if after.isdigit() and int(after) <= MAX_ID else None,
        )
        return await _search(request, searched, reveal=True)

    @get("/{member_id:int}", opt=page())
    async def member(
        self,
        request: Request[Any, Any, Any],
        member_id: PathId,
        orders_cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
        points_offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
        reveal: Annotated[str | None, QueryParameter(max_length=20)] = None,
        undone: Annotated[int | None, QueryParameter(ge=0, le=MAX_ID)] = None,
        adjusted: Annotated[int | None, QueryParameter(ge=0, le=MAX_ID)] = None,
    ) -> Response[str]:
        state = request.app.state
        actor = actor_of(request)
        revealing = members.check_reveal([f.strip() for f in (reveal or "").split(",") if f.strip()], actor)
        # a reveal is audited, so it needs a session that can write (as on the API)
        factory = state.sessions if revealing else state.read_sessions
        async with factory() as session, session.begin(), _held_rows(session):
            view = await members.member_view(session, state.vault, member_id, actor, reveal=revealing)
            data = await member_360(session, state.settings, view, orders_cursor, points_offset)
        return render(
            request,
            "member.html",
            {
                "v": view,
                "d": data,
                "revealing": revealing,
                "undone": undone,
                "points_offset": points_offset,
                "adjusted": adjusted,
            },
            title="m360.title",
        )

    @post("/merges/{merge_id:int}/undo", opt=action())
    async def undo_merge(self, request: Request[Any, Any, Any], merge_id: PathId) -> Response[Any]:
        """Split a merge back (operators and admins, CSRF-checked by the guard), then show the survivor."""
        state = request.app.state
        async with state.sessions() as session, session.begin():
            record = await merging.undo_merge(
                session, merge_id, actor=actor_of(request), at=utcnow(), tz=state.settings.tz
            )
        return redirect(request, f"{PREFIX}/members/{record.survivor_id}?undone={record.absorbed_id}")


@dataclass(frozen=True, slots=True)
class SearchForm:
    """The search's filters as typed (blank ones dropped), carried by the reveal form and the pager."""

    mobile: str | None
    identity: str | None
    name: str | None
    after: int | None

    @classmethod
    def of(cls, mobile: str | None, identity: str | None, name: str | None, after: int | None) -> SearchForm:
        def clean(value: str | None) -> str | None:
            return value.strip() or None if value else None

        return cls(clean(mobile), clean(identity), clean(name), after)


async def _search(request: Request[Any, Any, Any], form: SearchForm, *, reveal: bool) -> Response[str]:
    """One page of results, masked or (for an admin's reveal) in full and audited as the API audits it."""
    actor = actor_of(request)
    if reveal:
        members.check_reveal(list(members.REVEALED_FIELDS), actor)  # the one rule, as on the API
    found: list[members.MemberSummary] = []
    cursor: int | None = None
    problem: str | None = None
    try:
        found, cursor = await _find(request, form, reveal=reveal)
    except (BadRequest, Unprocessable) as exc:
        # a number or pattern the search cannot read: the search page again, the typed text kept and the
        # reason beside it (the bare error page dropped the form: the operator had to go back and retype)
        problem = problem_text(request, exc)
    return render(
        request,
        "members.html",
        {
            "found": found,
            "cursor": cursor,
            "problem": problem,
            "revealing": reveal,
            "may_reveal": actor.role in members.REVEAL_ROLES,
            "form": {
                "mobile": form.mobile or "",
                "identity": form.identity or "",
                "name": form.name or "",
                "after": "" if form.after is None else str(form.after),
            },
        },
        status_code=422 if problem else 200,
        title="members.title",
    )


async def _find(
    request: Request[Any, Any, Any], form: SearchForm, *, reveal: bool
) -> tuple[list[members.MemberSummary], int | None]:
    """The members the search finds (one page) and the next page's cursor."""
    state = request.app.state
    actor = actor_of(request)
    found: list[members.MemberSummary] = []
    cursor: int | None = None
    async with (state.sessions if reveal else state.read_sessions)() as session, session.begin():
        if form.identity:
            try:
                member = await members.lookup(session, state.vault, state.host, identity=form.identity)
            except NotFound:
                member = None
            if member is not None:
                found = await members.summaries(session, state.vault, [member], reveal=reveal)
                if reveal:
                    audit.record(
                        session, actor, "member.reveal", "member", member.id,
                        after={"fields": list(members.REVEALED_FIELDS), "member_ids": [member.id]},
                    )  # fmt: skip
        else:
            query = members.MemberQuery(
                status="active", name=form.name, mobile=form.mobile, after_id=form.after, limit=PAGE_SIZE
            )
            found, cursor = await members.list_members(session, state.vault, query, actor, reveal=reveal)
    return found, cursor


@asynccontextmanager
async def _held_rows(session: AsyncSession) -> AsyncIterator[None]:
    """Keep every row this read loads in the session's identity map until the page is built.

    The member view, points statement, tier status and entitlements each look the member (and its tier row and
    balance) up by primary key. The identity map holds objects weakly, and the services hand back summaries, so
    the loaded rows were collected between calls and each service read them again. Holding them for this one
    read transaction (whose pages are bounded) turns the repeats into identity-map hits.
    """
    held: list[object] = []

    def keep(_: Session, instance: object) -> None:
        held.append(instance)

    sa.event.listen(session.sync_session, "loaded_as_persistent", keep)
    try:
        yield
    finally:
        sa.event.remove(session.sync_session, "loaded_as_persistent", keep)
        held.clear()


@dataclass(frozen=True, slots=True)
class Projection:
    """The next tier and what is missing, said in the operator's language where the shortfall is one spend."""

    tier: str
    amount: str | None
    message: str


@dataclass(frozen=True, slots=True)
class Member360:
    accounts: dict[int, str]
    orders: list[Any]
    orders_next: str | None
    statement: Any
    tier: tiers.TierStatus | None
    projection: Projection | None
    tier_history: list[Any]
    entitlements: entitlements.MemberEntitlements | None
    messages: list[Any]
    merges: list[Any]


async def member_360(
    session: AsyncSession,
    settings: Any,
    view: members.MemberView,
    orders_cursor: str | None,
    points_offset: int,
) -> Member360:
    """Everything the 360 page shows beyond :func:`tongcrm.members.service.member_view`, each part from its
    domain's service; the long lists (orders, ledger) are pages, so a member with years of orders costs what a
    new one does."""
    live = view.member.id
    accounts = {
        int(i): str(n) for i, n in await session.execute(sa.select(ChannelAccount.id, ChannelAccount.name))
    }
    page_orders, orders_next = await orders.list_orders(
        session, orders.OrderQuery(member_id=live, cursor=orders_cursor, limit=PAGE_SIZE)
    )
    statement = await points.statement(session, live, tz=settings.tz, limit=PAGE_SIZE, offset=points_offset)
    ctx = tiers.TierContext.of(settings)
    status: tiers.TierStatus | None = None
    held: entitlements.MemberEntitlements | None = None
    if await tiers.active_ladder(session) is not None:
        status = await tiers.status(session, ctx, live)
        held = await entitlements.for_member(session, ctx, live)
    projection = None
    if status is not None and status.next is not None:
        ways = status.next.ways
        single_spend = len(ways) == 1 and len(ways[0]) == 1 and ways[0][0].metric == "spend_fen"
        amount = describe_amount("spend_fen", ways[0][0].missing) if single_spend else None
        projection = Projection(status.next.tier.name, amount, status.next.message)
    page = Member360(
        accounts=accounts,
        orders=page_orders,
        orders_next=orders_next,
        statement=statement,
        tier=status,
        projection=projection,
        tier_history=await tiers.history(session, live, limit=PAGE_SIZE),
        entitlements=held,
        messages=await messaging.list_messages(
            session, messaging.MessageQuery(member_id=live, limit=PAGE_SIZE)
        ),
        merges=await merging.list_merges(session, member_id=live, limit=PAGE_SIZE),
    )
    return page
