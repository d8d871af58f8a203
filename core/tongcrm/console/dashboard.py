"""The console's dashboard page: :func:`tongcrm.dashboard.service.dashboard`, rendered."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from tongcrm.console.web import PREFIX, ConsoleController, page, render
from tongcrm.dashboard import service


class DashboardPage(ConsoleController):
    path = PREFIX + "/dashboard"

    @get("/", opt=page())
    async def show(self, request: Request[Any, Any, Any]) -> Response[str]:
        async with request.app.state.read_sessions() as session, session.begin():
            figures = await service.dashboard(session)
        return render(request, "dashboard.html", {"d": figures}, title="dash.title")
