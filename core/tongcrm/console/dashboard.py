"""The console's dashboard page: :func:`tongcrm.dashboard.service.dashboard`, rendered."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from tongcrm.console.web import PREFIX, ConsoleController, page, render
from tongcrm.dashboard import service
from tongcrm.tiers import service as tiers


class DashboardPage(ConsoleController):
    path = PREFIX + "/dashboard"

    @get("/", opt=page())
    async def show(self, request: Request[Any, Any, Any]) -> Response[str]:
        async with request.app.state.read_sessions() as session, session.begin():
            figures = await service.dashboard(session)
            ladder = await tiers.active_ladder(session)
        # tiers are counted by code; the page names them as the ladder does (金卡), as the member pages do
        names = {tier.code: tier.name for tier in ladder.tiers} if ladder else {}
        return render(request, "dashboard.html", {"d": figures, "tier_names": names}, title="dash.title")
