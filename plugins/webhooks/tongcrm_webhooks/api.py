"""Admin routes under ``/api/webhooks``: endpoints and their secrets, the delivery log, dead letters, replay.

Creating, changing and deleting endpoints is for admins (an endpoint sends member events out of tongcrm);
replaying a dead letter is for admins and operators; everyone who may read may read the log.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_204_NO_CONTENT
from msgspec import UNSET, UnsetType
from tongcrm.api.inputs import PathId, QueryId, problems
from tongcrm.api.security import READ_ROLES, WRITE_ROLES, requires
from tongcrm.auth.service import Role
from tongcrm.plugin.store import PluginStore

from tongcrm_webhooks import service
from tongcrm_webhooks.service import (
    MAX_ROTATION_GRACE,
    MAX_URL,
    Delivery,
    DeliveryDetail,
    Endpoint,
    EndpointCreated,
)

Url = Annotated[str, msgspec.Meta(min_length=8, max_length=MAX_URL)]
EventTypes = Annotated[
    list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(min_length=1, max_length=20)
]
Description = Annotated[str, msgspec.Meta(max_length=200)]
Status = Literal["pending", "delivered", "dead"]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="rows per page")]


class EndpointIn(msgspec.Struct, forbid_unknown_fields=True):
    url: Url
    event_types: EventTypes
    description: Description = ""
    enabled: bool = True


class EndpointPatch(msgspec.Struct, forbid_unknown_fields=True):
    url: Url | UnsetType = UNSET
    event_types: EventTypes | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET

    def changes(self) -> dict[str, object]:
        return {f: getattr(self, f) for f in self.__struct_fields__ if getattr(self, f) is not UNSET}


class RotateIn(msgspec.Struct, forbid_unknown_fields=True):
    #: how long the secrets in force now keep signing next to the new one
    grace_seconds: Annotated[int, msgspec.Meta(ge=0, le=int(MAX_ROTATION_GRACE.total_seconds()))] = 86_400


class RotateOut(msgspec.Struct):
    secret: str
    previous_expire_at: datetime


class ReplayDeadIn(msgspec.Struct, forbid_unknown_fields=True):
    #: only dead deliveries recorded at or after this moment (an aware date-time); all of them when absent
    since: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


class ReplayDeadOut(msgspec.Struct):
    #: how many dead deliveries went back in the queue (0 when there were none: a repeated request)
    replayed: int


class ReplayOut(msgspec.Struct):
    delivery: Delivery
    #: false when it was already back in the queue (a repeated request)
    replayed: bool


class WebhooksController(Controller):
    path = "/api/webhooks"
    tags = ["webhooks"]

    @get("/event-types", opt=requires(*READ_ROLES), summary="Event types an endpoint can subscribe to")
    async def event_types(self) -> list[str]:
        return sorted(service.KNOWN_TYPES)

    @post(
        "/endpoints",
        opt={**requires(Role.ADMIN), **problems(422)},
        summary="Subscribe a URL to event types; answers its signing secret once",
    )
    async def create_endpoint(
        self, data: JSONBody[EndpointIn], store: NamedDependency[PluginStore]
    ) -> EndpointCreated:
        return await service.create_endpoint(
            store,
            url=data.url,
            event_types=data.event_types,
            description=data.description,
            enabled=data.enabled,
        )

    @get("/endpoints", opt=requires(*READ_ROLES), summary="Webhook endpoints")
    async def list_endpoints(self, store: NamedDependency[PluginStore]) -> list[Endpoint]:
        return await service.list_endpoints(store)

    @get(
        "/endpoints/{endpoint_id:int}",
        opt={**requires(*READ_ROLES), **problems(404)},
        summary="A webhook endpoint",
    )
    async def get_endpoint(self, endpoint_id: PathId, store: NamedDependency[PluginStore]) -> Endpoint:
        return await service.get_endpoint(store, endpoint_id)

    @patch(
        "/endpoints/{endpoint_id:int}",
        opt={**requires(Role.ADMIN), **problems(404, 422)},
        summary="Change an endpoint's URL, event types, description or enabled flag",
    )
    async def update_endpoint(
        self, endpoint_id: PathId, data: JSONBody[EndpointPatch], store: NamedDependency[PluginStore]
    ) -> Endpoint:
        return await service.update_endpoint(store, endpoint_id, data.changes())

    @delete(
        "/endpoints/{endpoint_id:int}",
        opt={**requires(Role.ADMIN), **problems(404)},
        status_code=HTTP_204_NO_CONTENT,
        summary="Remove an endpoint with its secrets and delivery log",
    )
    async def delete_endpoint(self, endpoint_id: PathId, store: NamedDependency[PluginStore]) -> None:
        await service.delete_endpoint(store, endpoint_id)

    @post(
        "/endpoints/{endpoint_id:int}/rotate-secret",
        opt={**requires(Role.ADMIN), **problems(404, 422)},
        status_code=200,
        summary="A new signing secret; the old one keeps signing alongside until the grace period ends",
    )
    async def rotate_secret(
        self, endpoint_id: PathId, data: JSONBody[RotateIn], store: NamedDependency[PluginStore]
    ) -> RotateOut:
        secret, until = await service.rotate_secret(store, endpoint_id, timedelta(seconds=data.grace_seconds))
        return RotateOut(secret, until)

    @get(
        "/deliveries", opt=requires(*READ_ROLES), summary="The delivery log, newest first (keyset pagination)"
    )
    async def list_deliveries(
        self,
        store: NamedDependency[PluginStore],
        endpoint_id: QueryId = None,
        status: Annotated[Status | None, QueryParameter(description="pending, delivered or dead")] = None,
        after: QueryId = None,
        limit: Limit = 50,
    ) -> list[Delivery]:
        return await service.list_deliveries(
            store, endpoint_id=endpoint_id, status=status, after=after, limit=limit
        )

    @get("/dead-letters", opt=requires(*READ_ROLES), summary="Deliveries out of attempts, newest first")
    async def dead_letters(
        self,
        store: NamedDependency[PluginStore],
        endpoint_id: QueryId = None,
        after: QueryId = None,
        limit: Limit = 50,
    ) -> list[Delivery]:
        return await service.list_deliveries(
            store, endpoint_id=endpoint_id, status="dead", after=after, limit=limit
        )

    @get(
        "/deliveries/{delivery_id:int}",
        opt={**requires(*READ_ROLES), **problems(404)},
        summary="A delivery with every attempt",
    )
    async def get_delivery(self, delivery_id: PathId, store: NamedDependency[PluginStore]) -> DeliveryDetail:
        delivery, attempts = await service.get_delivery(store, delivery_id)
        return DeliveryDetail(delivery, attempts)

    @post(
        "/deliveries/{delivery_id:int}/replay",
        opt={**requires(*WRITE_ROLES), **problems(404, 409)},
        status_code=200,
        summary="Send a dead letter again, with a fresh set of attempts (idempotent)",
    )
    async def replay(self, delivery_id: PathId, store: NamedDependency[PluginStore]) -> ReplayOut:
        delivery, changed = await service.replay(store, delivery_id)
        return ReplayOut(delivery, changed)

    @post(
        "/endpoints/{endpoint_id:int}/replay-dead",
        opt={**requires(*WRITE_ROLES), **problems(404)},
        status_code=200,
        summary="Send every dead letter of an endpoint again (since a moment), each with a fresh set of attempts",
    )
    async def replay_dead(
        self, endpoint_id: PathId, data: JSONBody[ReplayDeadIn], store: NamedDependency[PluginStore]
    ) -> ReplayDeadOut:
        return ReplayDeadOut(await service.replay_dead(store, endpoint_id, data.since))
