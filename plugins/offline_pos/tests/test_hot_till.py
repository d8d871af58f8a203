"""The till's lookup and checkout answered before litestar (``tongcrm_offline_pos.hot``): the same requests,
through the hot path and with hot routes disabled, get the same status, body and headers — the plain cases
answered hot, and so the refusals the work raised (nobody holds the mobile, another store, an unknown till, a
refused receipt), every other case (bad body, another role, over the rate limit, over the size limit, a failure)
answered by the route — and a request is counted once against the till's limit and
its work done once, whichever path answers it."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from tongcrm.api.hot import HotAnswer
from tongcrm.config import Settings
from tongcrm.testing.database import TestDatabase
from tongcrm.testing.plugin import ApiClient
from tongcrm_offline_pos import api as pos_api
from tongcrm_offline_pos.api import MAX_BODY_BYTES, PosConfig
from tongcrm_offline_pos.ratelimit import TokenBucket

from .conftest import FakeClock, Receipts, add_store, make_host

LOOKUP = "/pos/v1/members/lookup"
RECEIPTS = "/pos/v1/receipts"
#: requests the till key may make: the scenario's requests fit, and the next ones are over the limit
BURST = 20

Answer = tuple[str, int, str, list[tuple[str, str]]]


class Spy:
    """Wraps the app's hot answers and records, per request to a till route, whether it answered."""

    def __init__(self, app: Any) -> None:
        self.answered: list[tuple[str, bool]] = []
        answers: dict[tuple[str, str], HotAnswer] = app.state.hot_answers
        for route in (("POST", LOOKUP), ("POST", RECEIPTS)):
            answers[route] = self._wrap(route[1], answers[route])

    def _wrap(self, path: str, original: HotAnswer) -> HotAnswer:
        async def spy(scope: Any, receive: Any) -> Any:
            response = await original(scope, receive)
            self.answered.append((path, response is not None))
            return response

        return spy


def _answer(label: str, response: Any) -> Answer:
    request_id = response.headers["x-request-id"]
    headers = [(k, v) for k, v in response.headers.multi_items() if k != "x-request-id"]
    return label, response.status_code, response.text.replace(request_id, "<request id>"), headers


async def _scenario(
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    settings: Settings,
    clock: FakeClock,
    *,
    hot: bool,
) -> tuple[list[Answer], list[tuple[str, bool]], int]:
    """The till's requests, plain and not, in one order; the answers, what the hot path answered, and the
    tokens left in the till key's bucket (its clock stands still: none come back)."""
    config = PosConfig(clock=clock)
    limiter = TokenBucket(1e-3, BURST, clock=lambda: 0.0)
    object.__setattr__(config, "limiter", limiter)
    host = make_host(config)
    async with make_client(host=host, role="pos", store_code="S1") as pos:
        await add_store(pos, host, settings, "S1", ("T01", "T02"))
        await add_store(pos, host, settings, "S2", ("T01",))
        analyst = await pos.create_key("analyst")
        spy = Spy(pos.app)
        if not hot:
            pos.app.state.hot_answers.clear()
        receipts = Receipts(clock)
        sale = receipts.sale((10_000, 2_000), member={"mobile": "13800138001"})
        requests: list[tuple[str, str, Any, dict[str, str]]] = [
            ("nobody yet (the key's first request)", LOOKUP, {"till": "T01", "mobile": "13800138001"}, {}),
            ("a sale to a new buyer", RECEIPTS, sale, {}),
            ("the buyer looked up", LOOKUP, {"till": "T01", "mobile": "13800138001"}, {}),
            ("the sale sent again", RECEIPTS, sale, {}),
            ("a return of a line", RECEIPTS, receipts.ret(sale, {1: 10_000}), {}),
            ("a known member's sale", RECEIPTS, receipts.sale((3_000,), member={"mobile": "13800138001"}), {}),
            ("points it does not have", RECEIPTS,
             receipts.sale((5_000,), member={"mobile": "13800138001"}, points=900_000, points_fen=5_000), {}),
            ("another store's receipt", RECEIPTS, {**receipts.sale((1_000,)), "store": "S2"}, {}),
            ("an unknown till", LOOKUP, {"till": "T99", "mobile": "13800138001"}, {}),
            ("a lookup naming nobody", LOOKUP, {"till": "T01"}, {}),
            ("a bad body", RECEIPTS, {**receipts.sale((1_000,)), "total_fen": "1000"}, {}),
            ("an unknown field", LOOKUP, {"till": "T01", "mobile": "13800138001", "x": 1}, {}),
            ("not JSON", RECEIPTS, b"{not json", {}),
            ("another media type", LOOKUP, {"till": "T01", "mobile": "13800138001"}, {"Content-Type": "text/plain"}),
            ("no body", LOOKUP, b"", {}),
            ("over the size limit", RECEIPTS, b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}', {}),
            ("a query string", LOOKUP + "?till=T01", {"till": "T01", "mobile": "13800138001"}, {}),
            ("another role", LOOKUP, {"till": "T01", "mobile": "13800138001"},
             {"Authorization": f"Bearer {analyst}"}),
            ("another role, cached", RECEIPTS, receipts.sale((1_000,)), {"Authorization": f"Bearer {analyst}"}),
        ]  # fmt: skip
        answers: list[Answer] = []
        for label, path, body, headers in requests:
            content = body if isinstance(body, bytes) else None
            kwargs: dict[str, Any] = {"content": content} if content is not None else {"json": body}
            if content is not None:
                headers = {**headers, "Content-Type": "application/json"}
            answers.append(_answer(label, await pos.post(path, headers=headers, **kwargs)))
        # the key's remaining requests, then the refusals of the rate limit
        for n in range(BURST):
            response = await pos.post(LOOKUP, json={"till": "T01", "mobile": "13800138001"})
            answers.append(_answer(f"lookup {n} at the limit", response))
            if response.status_code == 429:
                break
        buckets = list(limiter._buckets.values())  # the till key's alone: another role is never counted
        assert len(buckets) == 1
        return answers, spy.answered, int(buckets[0].tokens)


async def test_the_till_s_requests_get_the_same_answers_hot_and_through_litestar(
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    tongcrm_settings: Settings,
    tongcrm_db: TestDatabase,
    clock: FakeClock,
) -> None:
    hot, answered, hot_tokens = await _scenario(make_client, tongcrm_settings, clock, hot=True)
    await tongcrm_db.truncate()  # the same ids for the same rows in the second run
    cold, not_answered, cold_tokens = await _scenario(make_client, tongcrm_settings, clock, hot=False)

    assert [a[:2] for a in hot] == [a[:2] for a in cold]
    for one, other in zip(hot, cold, strict=True):
        assert one == other, one[0]
    statuses = {label: status for label, status, _, _ in hot}
    expected = {
        "nobody yet (the key's first request)": 404, "a sale to a new buyer": 201, "the buyer looked up": 200,
        "the sale sent again": 200, "a return of a line": 201, "a known member's sale": 201,
        "points it does not have": 409, "another store's receipt": 404, "an unknown till": 404,
        "a bad body": 400, "an unknown field": 400, "not JSON": 400, "another media type": 415, "no body": 400, "over the size limit": 413,
        "a query string": 400, "another role": 403, "another role, cached": 403,
    }  # fmt: skip
    assert {label: statuses[label] for label in expected} == expected
    assert 400 <= statuses["a lookup naming nobody"] < 500
    assert hot[-1][1] == 429 and "retry-after" in dict(hot[-1][3])
    # every till request was counted once: the key's burst is spent exactly when the 429 comes, both ways
    till_requests = len(hot) - 2  # not the analyst's two
    assert till_requests == BURST + 1 and hot_tokens == cold_tokens == 0

    # the plain cases were answered hot (the key's first request too: the hot path reads the key itself, as the
    # route would), and so were the plain refusals the work raised (the route's own problem response, compared
    # above)
    plain = {
        "nobody yet (the key's first request)", "a sale to a new buyer", "the buyer looked up", "the sale sent again", "a return of a line",
        "a known member's sale", "points it does not have", "another store's receipt", "an unknown till",
        "a lookup naming nobody",
    }  # fmt: skip
    assert [done for (_, done) in answered].count(True) >= len(plain)
    assert not any(done for (_, done) in not_answered)
    hot_labels = [label for label, *_ in hot if not label.startswith("lookup ")]
    offered = [label for label in hot_labels if label not in {"another role", "another role, cached"}]
    for label, (_, done) in zip(offered, answered, strict=False):
        assert done == (label in plain), label


async def test_a_refused_receipt_is_applied_once_and_answered_as_the_route_answers_it(
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    tongcrm_settings: Settings,
    clock: FakeClock,
    monkeypatch: Any,
) -> None:
    """A hot answer whose work raised a plain refusal answers the route's problem itself; what else it raised
    (a revoked key) it hands to the route, which answers without applying the receipt a second time."""
    applied: list[str] = []
    apply_receipt = pos_api.receipts.apply_receipt

    async def counted(*args: Any, **kwargs: Any) -> Any:
        applied.append(args[2].till)
        return await apply_receipt(*args, **kwargs)

    monkeypatch.setattr(pos_api.receipts, "apply_receipt", counted)
    host = make_host(PosConfig(clock=clock, rate_per_second=1000, burst=1000))
    async with make_client(host=host, role="pos", store_code="S1") as pos:
        await add_store(pos, host, tongcrm_settings, "S1", ("T01",))
        spy = Spy(pos.app)
        receipts = Receipts(clock)
        assert (await pos.post(LOOKUP, json={"till": "T01", "mobile": "13800138001"})).status_code == 404
        refused = await pos.post(
            RECEIPTS,
            json=receipts.sale((5_000,), member={"mobile": "13800138001"}, points=10, points_fen=100),
        )
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        # answered hot while the key is cached (test_hot_till's first test compares the bytes of both paths)
        assert applied == ["T01"] and spy.answered[-1][0] == RECEIPTS

        # not a refusal of the request: handed to the route, which answers it without the work
        async def failing(*args: Any, **kwargs: Any) -> Any:
            applied.append(args[2].till)
            raise RuntimeError("the database went away")

        monkeypatch.setattr(pos_api.receipts, "apply_receipt", failing)
        broken = await pos.post(RECEIPTS, json=receipts.sale((5_000,), member={"mobile": "13800138001"}))
        assert broken.status_code == 500, broken.text
        assert applied == ["T01", "T01"] and spy.answered[-1] == (RECEIPTS, False)
