"""App factories the POS checkout benchmark serves through :mod:`tongcrm.serving`: tongcrm with the POS plugin
(its till rate limit raised out of the way), and a bare litestar endpoint taking the same receipts (the ceiling)."""

from __future__ import annotations

from typing import Any

from litestar import Litestar, post
from litestar.params import JSONBody
from tongcrm.app import create_app, settle_heap
from tongcrm.config import Settings
from tongcrm.logging import configure_logging
from tongcrm.plugin.host import PluginHost
from tongcrm_offline_pos.api import PosConfig
from tongcrm_offline_pos.plugin import OfflinePosPlugin


def pos_app(worker: int = 0) -> Litestar:
    """As ``tongcrm serve --no-jobs`` builds it, with the POS plugin alone."""
    configure_logging(json=True, level="WARNING")
    host = PluginHost(autoload=False)
    host.register(OfflinePosPlugin(PosConfig(rate_per_second=10_000, burst=10_000)), "offline_pos")
    app = create_app(Settings.from_env(), host, run_jobs=False, configure_logs=False)
    settle_heap(app)
    return app


@post("/pos/v1/receipts", status_code=201)
async def receipt(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
    return {"status": "applied", "sequence": data.get("sequence")}


def ceiling_app(worker: int = 0) -> Litestar:
    return Litestar([receipt], debug=False)
