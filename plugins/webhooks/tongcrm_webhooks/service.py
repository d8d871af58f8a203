"""What webhooks do, on the store facade alone: record events as messages, deliver them, keep the log.

Why the work is split in jobs the way it is:

- An event hook may only ``enqueue``. It asks for ``webhooks.record`` with a unique key per event, and the core
  writes that job in the transaction that marks the event delivered to this plugin: from the outbox on, every
  step is a committed row, so a process killed at any moment loses nothing (it is redone).
- ``webhooks.record`` writes the message (its body fixed once) and one delivery per subscribed endpoint, in one
  unit of work, idempotently (unique event id, unique message × endpoint), and asks for a delivery run.
- ``webhooks.deliver`` (also every few seconds) claims due deliveries by pushing their ``next_attempt_at`` past
  a lease, commits, sends outside any transaction, then records the attempt and the outcome. A runner killed
  mid-send leaves the claim to expire: the delivery is sent again (at least once; receivers dedupe by
  ``webhook-id``, which never changes for a message).
- An endpoint that has failed every attempt for :data:`DISABLE_AFTER` is disabled by tongcrm (its pending
  deliveries wait, they are not lost): a receiver that is gone for good should not be retried for ever, and
  the operator sees why on the endpoint. ``webhooks.prune`` (hourly) removes finished messages older than
  :data:`RETENTION` with their deliveries and attempts, so the log does not grow without bound.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from tongcrm.errors import Conflict, NotFound, Unprocessable
from tongcrm.logging import get_logger
from tongcrm.plugin.store import PluginStore, StoreWork
from tongcrm.plugin.types import SealedColumn

from tongcrm_webhooks import signing
from tongcrm_webhooks.models import ATTEMPTS, DELIVERIES, ENDPOINTS, MESSAGES, SECRETS, TABLES

#: domain event (hook name) → webhook event type
EVENT_TYPES: dict[str, str] = {
    "member_created": "member.created",
    "members_merged": "member.merged",
    "order_changed": "order.changed",
    "points_changed": "points.changed",
    "tier_changed": "tier.changed",
    "lifecycle_changed": "member.lifecycle_changed",
    "message_status": "message.status",
}
KNOWN_TYPES = frozenset(EVENT_TYPES.values())

log = get_logger(__name__)

RECORD_JOB = "webhooks.record"
DELIVER_JOB = "webhooks.deliver"
PRUNE_JOB = "webhooks.prune"

#: Wait before attempt n+1 after n failed attempts (Standard Webhooks suggests a schedule of this shape). After
#: the last one a delivery is dead: on the dead-letter list until an operator replays it.
RETRY_DELAYS: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(seconds=30),
    timedelta(minutes=2),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=6),
)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
#: How long a claimed delivery stays invisible to other runners (longer than a request may take).
CLAIM = timedelta(seconds=60)
TIMEOUT_SECONDS = 10.0
#: Deliveries one run sends at most, so a run stays short; the periodic run picks up the rest.
RUN_BATCH = 200
MAX_ROTATION_GRACE = timedelta(days=7)
MAX_URL = 2000
#: An endpoint whose attempts have all failed for this long is disabled (Standard Webhooks' providers use days).
DISABLE_AFTER = timedelta(days=5)
#: Messages whose every delivery is finished (delivered or dead) are removed this long after they were recorded.
RETENTION = timedelta(days=30)
#: Messages one prune transaction removes (with their deliveries and attempts), and transactions one run makes.
PRUNE_BATCH = 500
PRUNE_ROUNDS = 40


def message_id(event_id: int) -> str:
    """The ``webhook-id``: the same for every attempt and replay of the message."""
    return f"msg_{event_id}"


def retry_delay(attempts: int) -> timedelta | None:
    """Delay after ``attempts`` failed attempts, with ±10 % jitter; ``None`` when the delivery is out of tries."""
    if attempts >= MAX_ATTEMPTS:
        return None
    return RETRY_DELAYS[attempts - 1] * random.uniform(0.9, 1.1)


# ---------------------------------------------------------------------------------------------------------------
# endpoints


def check_url(url: str) -> str:
    problem = f"url must be an absolute http(s) URL of at most {MAX_URL} characters"
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port  # both raise on a malformed host or port
    except ValueError:
        raise Unprocessable(problem) from None
    if (
        parts.scheme not in ("http", "https")
        or not host
        or len(url) > MAX_URL
        or any(c.isspace() for c in url)
    ):
        raise Unprocessable(problem)
    return url


def check_types(types: Sequence[str]) -> list[str]:
    unknown = sorted(set(types) - KNOWN_TYPES)
    if unknown or not types:
        raise Unprocessable(
            f"event_types must name at least one of {', '.join(sorted(KNOWN_TYPES))}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    return sorted(set(types))


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: int
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    created_at: datetime
    updated_at: datetime
    secrets_in_force: int
    #: the first failed attempt since the last success; None while the latest attempt succeeded
    failing_since: datetime | None
    #: why tongcrm disabled it (it failed for longer than five days); None otherwise
    disabled_reason: str | None


@dataclass(frozen=True, slots=True)
class EndpointCreated:
    endpoint: Endpoint
    #: shown once: store it on the receiver to verify signatures
    secret: str


async def _endpoint(uow: StoreWork, endpoint_id: int) -> Endpoint:
    row = (await uow.rows.execute(sa.select(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id))).first()
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    count = len(await _secrets(uow, endpoint_id))
    return Endpoint(
        row.id,
        row.url,
        row.description,
        list(row.event_types),
        row.enabled,
        row.created_at,
        row.updated_at,
        count,
        row.failing_since,
        row.disabled_reason,
    )


async def _secrets(uow: StoreWork, endpoint_id: int) -> list[tuple[int, str]]:
    now = uow.clock()
    rows = await uow.rows.execute(
        sa.select(SECRETS.c.id, SECRETS.c.secret_sealed)
        .where(
            SECRETS.c.endpoint_id == endpoint_id,
            sa.or_(SECRETS.c.expires_at.is_(None), SECRETS.c.expires_at > now),
        )
        .order_by(SECRETS.c.id.desc())
    )
    return [(r.id, r.secret_sealed) for r in rows]


def _context(endpoint_id: int) -> str:
    return f"webhooks.endpoint.{endpoint_id}"


#: the signing secrets, each sealed bound to its endpoint (declared so that a key rotation re-seals them)
SEALED_SECRETS = SealedColumn("webhook secrets", SECRETS, "secret_sealed", _context, "endpoint_id")


async def _add_secret(store: PluginStore, uow: StoreWork, endpoint_id: int) -> str:
    secret = signing.new_secret()
    sealed = store.seal(secret, context=_context(endpoint_id))
    await uow.rows.execute(
        sa.insert(SECRETS).values(endpoint_id=endpoint_id, secret_sealed=sealed, created_at=uow.clock())
    )
    return secret


async def create_endpoint(
    store: PluginStore, *, url: str, event_types: Sequence[str], description: str = "", enabled: bool = True
) -> EndpointCreated:
    """A new endpoint and its first secret (returned once: it is kept sealed)."""
    check_url(url)
    types = check_types(event_types)
    async with store.unit_of_work(tables=TABLES) as uow:
        now = uow.clock()
        created = await uow.rows.execute(
            sa.insert(ENDPOINTS)
            .values(
                url=url,
                description=description,
                event_types=types,
                enabled=enabled,
                created_at=now,
                updated_at=now,
            )
            .returning(ENDPOINTS.c.id)
        )
        endpoint_id = int(created.scalar_one())
        secret = await _add_secret(store, uow, endpoint_id)
        return EndpointCreated(await _endpoint(uow, endpoint_id), secret)


async def list_endpoints(store: PluginStore) -> list[Endpoint]:
    async with store.unit_of_work(tables=TABLES, readonly=True) as uow:
        ids = (await uow.rows.execute(sa.select(ENDPOINTS.c.id).order_by(ENDPOINTS.c.id))).scalars().all()
        return [await _endpoint(uow, i) for i in ids]


async def get_endpoint(store: PluginStore, endpoint_id: int) -> Endpoint:
    async with store.unit_of_work(tables=TABLES, readonly=True) as uow:
        return await _endpoint(uow, endpoint_id)


async def update_endpoint(store: PluginStore, endpoint_id: int, changes: Mapping[str, Any]) -> Endpoint:
    values = dict(changes)
    if "url" in values:
        check_url(values["url"])
    if "event_types" in values:
        values["event_types"] = check_types(values["event_types"])
    if values.get("enabled") is True:  # enabled again: its failure streak and the reason it was disabled end
        values.update(failing_since=None, disabled_reason=None)
    async with store.unit_of_work(tables=TABLES) as uow:
        await _endpoint(uow, endpoint_id)
        if values:
            await uow.rows.execute(
                sa.update(ENDPOINTS)
                .where(ENDPOINTS.c.id == endpoint_id)
                .values(**values, updated_at=uow.clock())
            )
        if values.get("enabled") is True:
            await _resume(uow, endpoint_id)
        return await _endpoint(uow, endpoint_id)


async def _resume(uow: StoreWork, endpoint_id: int) -> None:
    """An endpoint enabled again gets what waited for it now, not at the next step of each retry schedule."""
    now = uow.clock()
    waiting = sa.and_(DELIVERIES.c.endpoint_id == endpoint_id, DELIVERIES.c.status == "pending")
    await uow.rows.execute(
        sa.update(DELIVERIES).where(waiting, DELIVERIES.c.next_attempt_at > now).values(next_attempt_at=now)
    )
    if (await uow.rows.execute(sa.select(sa.exists().where(waiting)))).scalar_one():
        await uow.enqueue(DELIVER_JOB, {}, unique_key=f"{DELIVER_JOB}:resume:{endpoint_id}:{now.isoformat()}")


async def delete_endpoint(store: PluginStore, endpoint_id: int) -> None:
    """Removes the endpoint with its secrets and its delivery log (its messages stay for other endpoints)."""
    async with store.unit_of_work(tables=TABLES) as uow:
        await _endpoint(uow, endpoint_id)
        ids = sa.select(DELIVERIES.c.id).where(DELIVERIES.c.endpoint_id == endpoint_id)
        await uow.rows.execute(sa.delete(ATTEMPTS).where(ATTEMPTS.c.delivery_id.in_(ids)))
        await uow.rows.execute(sa.delete(DELIVERIES).where(DELIVERIES.c.endpoint_id == endpoint_id))
        await uow.rows.execute(sa.delete(SECRETS).where(SECRETS.c.endpoint_id == endpoint_id))
        await uow.rows.execute(sa.delete(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id))


async def rotate_secret(store: PluginStore, endpoint_id: int, grace: timedelta) -> tuple[str, datetime]:
    """A new secret; the ones in force now keep signing until ``now + grace`` (both signatures are sent).
    Returns the new secret (once) and when the old ones stop."""
    if not timedelta(0) <= grace <= MAX_ROTATION_GRACE:
        raise Unprocessable(f"grace_seconds must be between 0 and {int(MAX_ROTATION_GRACE.total_seconds())}")
    async with store.unit_of_work(tables=TABLES) as uow:
        await _endpoint(uow, endpoint_id)
        until = uow.clock() + grace
        await uow.rows.execute(
            sa.update(SECRETS)
            .where(
                SECRETS.c.endpoint_id == endpoint_id,
                sa.or_(SECRETS.c.expires_at.is_(None), SECRETS.c.expires_at > until),
            )
            .values(expires_at=until)
        )
        return await _add_secret(store, uow, endpoint_id), until


# ---------------------------------------------------------------------------------------------------------------
# recording events


def event_body(event_type: str, event_id: int, occurred_at: str, data: Mapping[str, Any]) -> str:
    """The JSON body every endpoint gets for the event (Standard Webhooks' suggested envelope)."""
    envelope = {"type": event_type, "timestamp": occurred_at, "id": message_id(event_id), "data": dict(data)}
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


async def record(store: PluginStore, payload: Mapping[str, Any]) -> int:
    """The ``webhooks.record`` job: the event's message and one delivery per subscribed, enabled endpoint.
    Idempotent (a re-run adds nothing). Returns how many deliveries it created."""
    event_id = int(payload["event_id"])
    event_type = str(payload["type"])
    occurred_at = datetime.fromisoformat(payload["occurred_at"])
    async with store.unit_of_work(tables=TABLES) as uow:
        insert = uow.rows.insert(MESSAGES)
        await uow.rows.execute(
            insert.values(
                event_id=event_id,
                event_type=event_type,
                body=event_body(event_type, event_id, payload["occurred_at"], payload["data"]),
                occurred_at=occurred_at,
                created_at=uow.clock(),
            ).on_conflict_do_nothing(index_elements=["event_id"])
        )
        msg = (
            await uow.rows.execute(sa.select(MESSAGES.c.id).where(MESSAGES.c.event_id == event_id))
        ).scalar_one()
        endpoints = (
            await uow.rows.execute(
                sa.select(ENDPOINTS.c.id, ENDPOINTS.c.event_types).where(ENDPOINTS.c.enabled)
            )
        ).all()
        now = uow.clock()
        rows = [
            {"message_id": msg, "endpoint_id": e.id, "status": "pending", "attempts": 0, "next_attempt_at": now,
             "replays": 0, "created_at": now}
            for e in endpoints
            if event_type in e.event_types
        ]  # fmt: skip
        created = 0
        if rows:
            result = await uow.rows.execute(
                uow.rows.insert(DELIVERIES)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["message_id", "endpoint_id"])
            )
            created = max(int(result.rowcount or 0), 0)
            await uow.enqueue(DELIVER_JOB, {}, unique_key=f"{DELIVER_JOB}:message:{msg}")
        return created


# ---------------------------------------------------------------------------------------------------------------
# delivering


@dataclass(frozen=True, slots=True)
class _Claimed:
    delivery_id: int
    endpoint_id: int
    attempts: int
    url: str
    msg_id: str
    body: str
    secrets: tuple[str, ...]


async def _claim(store: PluginStore, limit: int) -> list[_Claimed]:
    """Due deliveries, made invisible to other runners for :data:`CLAIM` (a conditional update per row, so two
    runners never claim the same one)."""
    async with store.unit_of_work(tables=TABLES) as uow:
        now = uow.clock()
        due = sa.and_(DELIVERIES.c.status == "pending", DELIVERIES.c.next_attempt_at <= now)
        candidates = (
            await uow.rows.execute(
                sa.select(
                    DELIVERIES.c.id,
                    DELIVERIES.c.attempts,
                    DELIVERIES.c.endpoint_id,
                    MESSAGES.c.event_id,
                    MESSAGES.c.body,
                )
                .join(MESSAGES, MESSAGES.c.id == DELIVERIES.c.message_id)
                .join(ENDPOINTS, ENDPOINTS.c.id == DELIVERIES.c.endpoint_id)
                .where(due, ENDPOINTS.c.enabled)  # a disabled endpoint's deliveries wait for it
                .order_by(DELIVERIES.c.next_attempt_at, DELIVERIES.c.id)
                .limit(limit)
            )
        ).all()
        claimed: list[_Claimed] = []
        secrets_of: dict[int, tuple[str, ...]] = {}
        urls: dict[int, str] = {}
        for row in candidates:
            taken = await uow.rows.execute(
                sa.update(DELIVERIES)
                .where(DELIVERIES.c.id == row.id, due)
                .values(next_attempt_at=now + CLAIM)
            )
            if taken.rowcount != 1:
                continue
            if row.endpoint_id not in urls:
                urls[row.endpoint_id] = (
                    await uow.rows.execute(
                        sa.select(ENDPOINTS.c.url).where(ENDPOINTS.c.id == row.endpoint_id)
                    )
                ).scalar_one()
                secrets_of[row.endpoint_id] = tuple(
                    store.unseal(sealed, context=_context(row.endpoint_id))
                    for _, sealed in await _secrets(uow, row.endpoint_id)
                )
            claimed.append(
                _Claimed(
                    row.id,
                    row.endpoint_id,
                    row.attempts,
                    urls[row.endpoint_id],
                    message_id(row.event_id),
                    row.body,
                    secrets_of[row.endpoint_id],
                )
            )
        return claimed


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int


async def _send(http: httpx.AsyncClient, item: _Claimed, now: datetime) -> _Outcome:
    started = time.monotonic()
    try:
        headers = signing.headers(item.secrets, item.msg_id, int(now.timestamp()), item.body)
        response = await http.post(item.url, content=item.body.encode(), headers=headers)
    except (httpx.HTTPError, ValueError) as exc:
        return _Outcome(False, None, f"{type(exc).__name__}: {exc}"[:500], _ms(started))
    ok = 200 <= response.status_code < 300
    return _Outcome(ok, response.status_code, None if ok else f"HTTP {response.status_code}", _ms(started))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _settle(store: PluginStore, item: _Claimed, outcome: _Outcome, attempted_at: datetime) -> None:
    async with store.unit_of_work(tables=TABLES) as uow:
        now = uow.clock()
        attempts = item.attempts + 1
        await uow.rows.execute(
            sa.insert(ATTEMPTS).values(
                delivery_id=item.delivery_id,
                attempted_at=attempted_at,
                status_code=outcome.status_code,
                error=outcome.error,
                duration_ms=outcome.duration_ms,
            )
        )
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
        }
        if outcome.ok:
            values.update(status="delivered", delivered_at=now)
        elif (delay := retry_delay(attempts)) is None:
            values.update(status="dead")
        else:
            values.update(next_attempt_at=now + delay)
        # only while still pending: a concurrent replay or delete wins over a late settle
        await uow.rows.execute(
            sa.update(DELIVERIES)
            .where(DELIVERIES.c.id == item.delivery_id, DELIVERIES.c.status == "pending")
            .values(**values)
        )
        await _track_health(uow, item.endpoint_id, outcome.ok, attempted_at)


async def _track_health(uow: StoreWork, endpoint_id: int, ok: bool, attempted_at: datetime) -> None:
    """A success ends the endpoint's failure streak; a failure starts one or, once it is older than
    :data:`DISABLE_AFTER`, disables the endpoint with the reason."""
    endpoint = ENDPOINTS.c.id == endpoint_id
    if ok:
        await uow.rows.execute(
            sa.update(ENDPOINTS)
            .where(endpoint, ENDPOINTS.c.failing_since.is_not(None))
            .values(failing_since=None)
        )
        return
    await uow.rows.execute(
        sa.update(ENDPOINTS)
        .where(endpoint, ENDPOINTS.c.failing_since.is_(None))
        .values(failing_since=attempted_at)
    )
    now = uow.clock()
    disabled = await uow.rows.execute(
        sa.update(ENDPOINTS)
        .where(endpoint, ENDPOINTS.c.enabled, ENDPOINTS.c.failing_since <= now - DISABLE_AFTER)
        .values(
            enabled=False,
            disabled_reason=f"every attempt failed for {DISABLE_AFTER.days} days",
            updated_at=now,
        )
    )
    if disabled.rowcount == 1:
        log.warning("webhook endpoint disabled: it failed for too long", endpoint_id=endpoint_id)


async def deliver_due(
    store: PluginStore, *, http: httpx.AsyncClient | None = None, limit: int = RUN_BATCH
) -> int:
    """The ``webhooks.deliver`` job: send what is due, record each attempt. Returns how many were attempted."""
    own = http is None
    client = http or httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False)
    done = 0
    try:
        while done < limit:
            batch = await _claim(store, min(20, limit - done))
            if not batch:
                break
            for item in batch:
                attempted_at = store.clock()
                outcome = await _send(client, item, attempted_at)
                await _settle(store, item, outcome, attempted_at)
                done += 1
    finally:
        if own:
            await client.aclose()
    return done


# ---------------------------------------------------------------------------------------------------------------
# log, dead letters, replay


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    endpoint_id: int
    message_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    replays: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Attempt:
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


_DELIVERY_COLUMNS = (
    DELIVERIES.c.id,
    DELIVERIES.c.endpoint_id,
    MESSAGES.c.event_id,
    MESSAGES.c.event_type,
    DELIVERIES.c.status,
    DELIVERIES.c.attempts,
    DELIVERIES.c.next_attempt_at,
    DELIVERIES.c.last_status_code,
    DELIVERIES.c.last_error,
    DELIVERIES.c.delivered_at,
    DELIVERIES.c.replays,
    DELIVERIES.c.created_at,
)


def _delivery(row: Any) -> Delivery:
    return Delivery(
        row.id, row.endpoint_id, message_id(row.event_id), row.event_type, row.status, row.attempts,
        row.next_attempt_at if row.status == "pending" else None, row.last_status_code, row.last_error,
        row.delivered_at, row.replays, row.created_at,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DeliveryDetail:
    delivery: Delivery
    attempts: list[Attempt]


async def list_deliveries(
    store: PluginStore, *, endpoint_id: int | None, status: str | None, after: int | None, limit: int
) -> list[Delivery]:
    """The delivery log, newest first (keyset: ``after`` is the last id of the previous page)."""
    query = sa.select(*_DELIVERY_COLUMNS).join(MESSAGES, MESSAGES.c.id == DELIVERIES.c.message_id)
    if endpoint_id is not None:
        query = query.where(DELIVERIES.c.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(DELIVERIES.c.status == status)
    if after is not None:
        query = query.where(DELIVERIES.c.id < after)
    async with store.unit_of_work(tables=TABLES, readonly=True) as uow:
        rows = await uow.rows.execute(query.order_by(DELIVERIES.c.id.desc()).limit(limit))
        return [_delivery(r) for r in rows]


async def get_delivery(store: PluginStore, delivery_id: int) -> tuple[Delivery, list[Attempt]]:
    async with store.unit_of_work(tables=TABLES, readonly=True) as uow:
        return await _delivery_with_attempts(uow, delivery_id)


async def _delivery_with_attempts(uow: StoreWork, delivery_id: int) -> tuple[Delivery, list[Attempt]]:
    row = (
        await uow.rows.execute(
            sa.select(*_DELIVERY_COLUMNS)
            .join(MESSAGES, MESSAGES.c.id == DELIVERIES.c.message_id)
            .where(DELIVERIES.c.id == delivery_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"no webhook delivery {delivery_id}")
    attempts = await uow.rows.execute(
        sa.select(ATTEMPTS).where(ATTEMPTS.c.delivery_id == delivery_id).order_by(ATTEMPTS.c.id)
    )
    return _delivery(row), [Attempt(a.attempted_at, a.status_code, a.error, a.duration_ms) for a in attempts]


async def replay(store: PluginStore, delivery_id: int) -> tuple[Delivery, bool]:
    """Put a dead delivery back in the queue with a fresh set of attempts; the log keeps the old ones.

    Returns the delivery and whether it changed: replaying a delivery that is already pending again is a no-op
    (a retried request), replaying one that was delivered is a conflict."""
    async with store.unit_of_work(tables=TABLES) as uow:
        current, _ = await _delivery_with_attempts(uow, delivery_id)
        if current.status == "delivered":
            raise Conflict(f"webhook delivery {delivery_id} was delivered; there is nothing to replay")
        changed = current.status == "dead"
        if changed:
            await uow.rows.execute(
                sa.update(DELIVERIES)
                .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.status == "dead")
                .values(
                    status="pending",
                    attempts=0,
                    next_attempt_at=uow.clock(),
                    replays=DELIVERIES.c.replays + 1,
                )
            )
            await uow.enqueue(
                DELIVER_JOB, {}, unique_key=f"{DELIVER_JOB}:replay:{delivery_id}:{current.replays + 1}"
            )
        delivery, _ = await _delivery_with_attempts(uow, delivery_id)
        return delivery, changed


async def replay_dead(store: PluginStore, endpoint_id: int, since: datetime | None = None) -> int:
    """Put every dead delivery of an endpoint (recorded at or after ``since``) back in the queue with a fresh set
    of attempts, in one unit of work; returns how many. Repeating it replays nothing twice: a replayed delivery
    is pending, not dead."""
    async with store.unit_of_work(tables=TABLES) as uow:
        await _endpoint(uow, endpoint_id)
        dead = sa.and_(DELIVERIES.c.endpoint_id == endpoint_id, DELIVERIES.c.status == "dead")
        if since is not None:
            dead = sa.and_(dead, DELIVERIES.c.created_at >= since)
        now = uow.clock()
        result = await uow.rows.execute(
            sa.update(DELIVERIES)
            .where(dead)
            .values(status="pending", attempts=0, next_attempt_at=now, replays=DELIVERIES.c.replays + 1)
        )
        replayed = max(int(result.rowcount or 0), 0)
        if replayed:
            await uow.enqueue(
                DELIVER_JOB, {}, unique_key=f"{DELIVER_JOB}:replay-dead:{endpoint_id}:{now.isoformat()}"
            )
        return replayed


# ---------------------------------------------------------------------------------------------------------------
# retention


async def prune(store: PluginStore) -> int:
    """The ``webhooks.prune`` job: remove messages recorded more than :data:`RETENTION` ago whose deliveries are
    all finished (none pending), with their deliveries and attempts, :data:`PRUNE_BATCH` a transaction. A message
    with a pending delivery stays, however old. Returns how many messages went."""
    removed = 0
    for _ in range(PRUNE_ROUNDS):
        async with store.unit_of_work(tables=TABLES) as uow:
            pending = sa.exists().where(
                DELIVERIES.c.message_id == MESSAGES.c.id, DELIVERIES.c.status == "pending"
            )
            ids = (
                (
                    await uow.rows.execute(
                        sa.select(MESSAGES.c.id)
                        .where(MESSAGES.c.created_at < uow.clock() - RETENTION, ~pending)
                        .order_by(MESSAGES.c.id)
                        .limit(PRUNE_BATCH)
                    )
                )
                .scalars()
                .all()
            )
            if not ids:
                break
            deliveries = sa.select(DELIVERIES.c.id).where(DELIVERIES.c.message_id.in_(ids))
            await uow.rows.execute(sa.delete(ATTEMPTS).where(ATTEMPTS.c.delivery_id.in_(deliveries)))
            await uow.rows.execute(sa.delete(DELIVERIES).where(DELIVERIES.c.message_id.in_(ids)))
            await uow.rows.execute(sa.delete(MESSAGES).where(MESSAGES.c.id.in_(ids)))
        removed += len(ids)
        if len(ids) < PRUNE_BATCH:
            break
    if removed:
        log.info("webhook messages pruned", messages=removed, older_than_days=RETENTION.days)
    return removed
