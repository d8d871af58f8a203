"""Every console page and the menu. Add a page's controller to :data:`PAGES` and its entry to :data:`NAV`."""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from tongcrm.api.problems import FILES_OPT
from tongcrm.auth.service import Role
from tongcrm.console.admin import AuditPage, KeyPages
from tongcrm.console.auth import SignInPages, root
from tongcrm.console.backfill_pages import BackfillPages
from tongcrm.console.campaign_pages import CalendarPage, CampaignPages, CareFlowPage
from tongcrm.console.care_flow_settings import CareFlowSettingsPage
from tongcrm.console.channel_pages import ChannelAccountPages, ChannelsPage
from tongcrm.console.dashboard import DashboardPage
from tongcrm.console.favicon import favicon
from tongcrm.console.import_pages import ImportPages
from tongcrm.console.members import MemberPages
from tongcrm.console.points_pages import PointsAdjustPage
from tongcrm.console.programme_pages import PointsRulesPage, TiersPage
from tongcrm.console.quarantine_page import QuarantinePage
from tongcrm.console.segment_pages import SegmentPages
from tongcrm.console.web import PREFIX, NavItem, console_guard, exception_handlers, public_page, set_nav

#: Console page controllers (each a :class:`tongcrm.console.web.ConsoleController`).
PAGES: tuple[ControllerRouterHandler, ...] = (
    SignInPages,
    MemberPages,
    PointsAdjustPage,
    AuditPage,
    KeyPages,
    DashboardPage,
    SegmentPages,
    CampaignPages,
    CareFlowPage,
    CareFlowSettingsPage,
    CalendarPage,
    PointsRulesPage,
    TiersPage,
    ChannelsPage,
    ChannelAccountPages,
    BackfillPages,
    QuarantinePage,
    ImportPages,
)

#: The menu, in order; an entry shows to the roles it names.
NAV: tuple[NavItem, ...] = (
    NavItem("nav.dashboard", PREFIX + "/dashboard"),
    NavItem("nav.members", PREFIX + "/members"),
    NavItem("nav.segments", PREFIX + "/segments"),
    NavItem("nav.campaigns", PREFIX + "/campaigns"),
    NavItem("nav.calendar", PREFIX + "/calendar"),
    NavItem("nav.care_settings", PREFIX + "/care-flows/settings"),
    NavItem("nav.points_rules", PREFIX + "/points/rules"),
    NavItem("nav.tiers", PREFIX + "/tiers"),
    NavItem("nav.channels", PREFIX + "/channels"),
    NavItem("nav.quarantine", PREFIX + "/quarantine"),
    NavItem("nav.imports", PREFIX + "/imports"),
    NavItem("nav.audit", PREFIX + "/audit", frozenset({Role.ADMIN})),
    NavItem("nav.keys", PREFIX + "/keys", frozenset({Role.ADMIN})),
)

STATIC = Path(__file__).parent / "static"


def console_handlers() -> list[ControllerRouterHandler]:
    """What the app mounts: ``/`` (a redirect), ``/favicon.ico``, the console pages and their static files."""
    set_nav(NAV)
    static = create_static_files_router(
        path=PREFIX + "/static",
        directories=[STATIC],
        guards=[console_guard],
        opt={**public_page(), FILES_OPT: True},
        include_in_schema=False,
        cache_control=None,
    )
    pages = Router(path="/", route_handlers=list(PAGES), exception_handlers=exception_handlers)
    return [root, favicon, pages, static]
