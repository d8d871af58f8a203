"""``GET /api/dashboard``: the console dashboard's figures as JSON, from the same service function."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.security import READ_ROLES, requires
from tongcrm.dashboard import service
from tongcrm.dashboard.service import Dashboard


class DashboardController(Controller):
    path = "/api/dashboard"
    tags = ["dashboard"]
    opt = requires(*READ_ROLES)

    @get(
        "/",
        summary="Members by channel overlap, tiers, lifecycle stages, points liability and expiry, sync status "
        "per channel account, message volume and refusals (7/30 days), quarantine",
    )
    async def show(self, read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]) -> Dashboard:
        async with read_sessions() as session, session.begin():
            return await service.dashboard(session)
