"""The till's two hottest requests, its member lookup and its checkout, answered before litestar in their plain
case (see :mod:`tongcrm.api.hot`): per receipt, litestar's routing, request object, keyword-argument and
signature models and hooks around the two handlers cost a large share of the serving process's time.

The answers run the routes' own work (:func:`~tongcrm_offline_pos.api.find_member`,
:func:`~tongcrm_offline_pos.api.take_receipt`) with the same input: a till key cached with the ``pos`` role,
the till's rate limit taken (once, whichever path serves the request), and the body decoded and validated
exactly as the route decodes it. Anything else (no or an unknown key, another role, over the limit, a query
string, a body the route refuses or over its size) falls through to litestar before any work, and the route
refuses it as always. Once the work has begun it is not run again: a plain refusal it raised (nobody holds the
mobile, an unknown till, another store, a receipt refused) is answered here with the route's own problem
response (:meth:`tongcrm.api.hot.HotTarget.refusal`), and anything else (a revoked key, a database error) is
handed to the route, which answers it as it would have (see :func:`tongcrm.api.security.hand_over`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from litestar.types import Receive, Scope
from tongcrm.api.hot import Caller, HotAnswer, HotTarget
from tongcrm.api.responses import EncodedJSON
from tongcrm.api.security import hand_over
from tongcrm.counter import CounterService
from tongcrm.plugin.types import HotRouteSpec

from tongcrm_offline_pos.api import PREFIX, PosConfig, find_member, receipt_status, take_receipt

#: The work of a hot request: (config, counter, caller, body) to the answer's content and status.
_Work = Callable[[PosConfig, CounterService, Caller, Any], Awaitable[tuple[Any, int]]]


def hot_routes(config: PosConfig) -> tuple[HotRouteSpec, ...]:
    """The till API's hot routes, for the plugin's ``RouteSpec.hot``."""
    return (
        HotRouteSpec("POST", f"{PREFIX}/members/lookup", partial(_answer, config, _lookup)),
        HotRouteSpec("POST", f"{PREFIX}/receipts", partial(_answer, config, _checkout)),
    )


async def _lookup(config: PosConfig, counter: CounterService, caller: Caller, data: Any) -> tuple[Any, int]:
    return await find_member(config, counter, caller.principal, data, caller.confirm), 200


async def _checkout(config: PosConfig, counter: CounterService, caller: Caller, data: Any) -> tuple[Any, int]:
    result = await take_receipt(config, counter, caller.principal, data, caller.confirm)
    return result, receipt_status(result)


def _answer(config: PosConfig, work: _Work, target: HotTarget) -> HotAnswer:
    """The hot answer of the route ``target`` names: ``work`` for a plain request, as its handler does it."""
    counter: CounterService = target.app.state.counter

    async def answer(scope: Scope, receive: Receive) -> EncodedJSON | None:
        caller = await target.caller(scope)
        if caller is None:
            return None
        data = await target.json(scope, receive)
        if data is None:
            return None
        try:
            content, status = await work(config, counter, caller, data)
        except Exception as exc:
            # a plain refusal (nobody holds the mobile, an unknown till) is answered here as the route answers
            # it; anything else is the route's to answer, without doing the work again
            refused = target.refusal(scope, exc)
            if refused is None:
                hand_over(scope, exc)
            return refused
        return target.answer(content, status)

    return answer
