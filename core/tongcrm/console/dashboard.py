"""The console's dashboard page: :func:`tongcrm.dashboard.service.dashboard`, rendered."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from litestar import Request, Response, get

from tongcrm.channels.models import SyncState
from tongcrm.console.channel_pages import sync_error_detail, sync_error_text
from tongcrm.console.web import PREFIX, ConsoleController, context_of, page, render
from tongcrm.dashboard import service
from tongcrm.tiers import service as tiers


class DashboardPage(ConsoleController):
    path = PREFIX + "/dashboard"

    @get("/", opt=page())
    async def show(self, request: Request[Any, Any, Any]) -> Response[str]:
        async with request.app.state.read_sessions() as session, session.begin():
            figures = await service.dashboard(session)
            ladder = await tiers.active_ladder(session)
            codes = {
                int(account_id): code
                for account_id, code in await session.execute(
                    sa.select(SyncState.account_id, SyncState.last_error_code).where(
                        SyncState.last_error_code.is_not(None)
                    )
                )
            }
        # a sync error in the page's language from its code; its figure's value stays the API's English sentence
        lang = context_of(request).lang
        said = {
            a.id: (
                sync_error_text(lang, codes.get(a.id), a.last_error),
                sync_error_detail(lang, codes.get(a.id), a.last_error),
            )
            for a in figures.accounts
            if a.last_error
        }
        # tiers are counted by code; the page names them as the ladder does (金卡), as the member pages do
        names = {tier.code: tier.name for tier in ladder.tiers} if ladder else {}
        return render(
            request,
            "dashboard.html",
            {"d": figures, "tier_names": names, "sync_errors": said},
            title="dash.title",
        )
