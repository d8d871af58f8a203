"""Console page for the quarantine: per channel account, the records ingest could not apply, with their reason
and time and the record as received, from :func:`tongcrm.ingest.quarantine.list_quarantine` (the service behind
``GET /api/ingest/quarantine``), so it shows what the API shows to the roles the API shows it to. The records
stay sealed at rest; they are unsealed for the page as for the API."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get
from litestar.params import QueryParameter

from tongcrm.console.web import PREFIX, ConsoleController, page, render
from tongcrm.ingest import quarantine

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
    ) -> Response[str]:
        state = request.app.state
        account = account.strip() or None if account else None
        async with state.read_sessions() as session, session.begin():
            accounts = await quarantine.counts_by_account(session)
            records = await quarantine.list_quarantine(
                session, state.vault, account=account, limit=PAGE_SIZE, offset=offset
            )
        return render(
            request,
            "quarantine.html",
            {"accounts": accounts, "account": account, "q": records},
            title="quar.title",
        )
