"""App factories the member benchmarks serve through :mod:`tongcrm.serving` (as ``tongcrm serve`` does): the
real app, and a bare litestar endpoint with no database as the ceiling."""

from __future__ import annotations

from litestar import Litestar, get
from tongcrm.app import create_app, settle_heap
from tongcrm.config import Settings
from tongcrm.logging import configure_logging
from tongcrm.plugin.host import PluginHost


def members_app(worker: int = 0) -> Litestar:
    """As ``tongcrm serve --no-jobs`` builds it (without plugins, which the member base does not need)."""
    configure_logging(json=True, level="WARNING")
    app = create_app(Settings.from_env(), PluginHost(autoload=False), run_jobs=False, configure_logs=False)
    settle_heap(app)
    return app


@get("/ping")
async def ping() -> dict[str, str]:
    return {"status": "ok"}


def bare_app(worker: int = 0) -> Litestar:
    return Litestar(route_handlers=[ping], debug=False)
