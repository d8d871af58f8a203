"""Console page for the quarantine: per channel account, the records ingest could not apply, with their reason
and time and the record as received, from :func:`tongcrm.ingest.quarantine.list_quarantine` (the service behind
``GET /api/ingest/quarantine``), so it shows what the API shows to the roles the API shows it to. The records
stay sealed at rest; the page shows each one's shape, and an admin may reveal the records of a page
(``?reveal=payload``, audited as on the API)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.params import QueryParameter

from tongcrm.console.web import PREFIX, ConsoleController, actor_of, page, render
from tongcrm.ingest import quarantine
from tongcrm.members.service import REVEAL_ROLES

PAGE_SIZE = 50
MAX_OFFSET = 1_000_000


class QuarantinePage(ConsoleController):
    path = PREFIX + "/quarantine"

    @get("/", opt=page())
    async def show(
        self,
        request: Request[Any, Any, Any],
        account: Annotated[str | None, QueryParameter(max_length=64)] = None,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
        reveal: Annotated[str | None, QueryParameter(max_length=20)] = None,
    ) -> Response[str]:
        state = request.app.state
        account = account.strip() or None if account else None
        actor = actor_of(request)
        revealing = quarantine.check_reveal(reveal, actor)
        async with (state.sessions if revealing else state.read_sessions)() as session, session.begin():
            accounts = await quarantine.counts_by_account(session)
            records = await quarantine.list_quarantine(
                session,
                state.vault,
                account=account,
                limit=PAGE_SIZE,
                offset=offset,
                actor=actor,
                reveal=revealing,
            )
        return render(
            request,
            "quarantine.html",
            {
                "accounts": accounts,
                "account": account,
                "q": records,
                "may_reveal": actor.role in REVEAL_ROLES,
            },
            title="quar.title",
        )
