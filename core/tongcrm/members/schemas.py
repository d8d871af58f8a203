"""Wire shapes of the member, merge, consent and audit API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from tongcrm.api.inputs import MAX_INT32, BodyId
from tongcrm.consent.models import ConsentEvent
from tongcrm.db.lengths import fits

#: Where a consent was given, as long as the consent log keeps (a longer one was cut to 64 characters silently).
ConsentSource = Annotated[str, fits(ConsentEvent.source)]


class MemberCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    gender: str | None = None
    birthday: date | None = None
    province: str | None = None
    city: str | None = None
    mobile: str | None = None
    source_channel: str | None = None
    source_store: str | None = None
    source_campaign: str | None = None
    referrer_id: BodyId | None = None
    lifecycle_stage: str = "prospect"
    tags: list[str] = msgspec.field(default_factory=list)


class MemberPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Only the fields present change; ``null`` clears a field. ``version`` may stand in for ``If-Match``."""

    name: str | UnsetType | None = UNSET
    gender: str | UnsetType | None = UNSET
    birthday: date | UnsetType | None = UNSET
    province: str | UnsetType | None = UNSET
    city: str | UnsetType | None = UNSET
    mobile: str | UnsetType | None = UNSET
    source_channel: str | UnsetType | None = UNSET
    source_store: str | UnsetType | None = UNSET
    source_campaign: str | UnsetType | None = UNSET
    referrer_id: BodyId | UnsetType | None = UNSET
    lifecycle_stage: str | UnsetType = UNSET
    version: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT32)] | UnsetType = UNSET

    def changes(self) -> dict[str, Any]:
        return {
            f: getattr(self, f)
            for f in self.__struct_fields__
            if f != "version" and getattr(self, f) is not UNSET
        }


class MemberOut(msgspec.Struct):
    id: int
    status: str
    merged_into_id: int | None
    version: int
    name: str | None
    gender: str | None
    birthday: date | None
    province: str | None
    city: str | None
    #: Masked (``138****8000``) unless revealed.
    mobile: str | None
    source_channel: str | None
    source_store: str | None
    source_campaign: str | None
    referrer_id: int | None
    lifecycle_stage: str
    tags: list[str]
    created_at: datetime
    updated_at: datetime


class IdentityOut(msgspec.Struct):
    id: int
    kind: str
    #: For ``mobile``: the masked number (revealed on request), never the blind index.
    value: str
    account_id: int | None
    first_seen_at: datetime
    last_seen_at: datetime
    evidence: str


class ConsentStateOut(msgspec.Struct):
    purpose: str
    signature: str
    status: str
    source: str
    recorded_at: datetime


class OrderOut(msgspec.Struct):
    id: int
    account_id: int
    external_id: str
    channel: str
    status: str
    store_code: str | None
    paid_fen: int
    refunded_fen: int
    placed_at: datetime


class MemberViewOut(msgspec.Struct):
    member: MemberOut
    identities: list[IdentityOut]
    consents: list[ConsentStateOut]
    recent_orders: list[OrderOut]
    sections: dict[str, Any]
    redirected_from: int | None = None


class MemberPage(msgspec.Struct):
    items: list[MemberOut]
    #: Pass as ``after`` for the next page; ``null`` on the last page.
    next_cursor: int | None


class TagsIn(msgspec.Struct, forbid_unknown_fields=True):
    tags: list[str]


class TagsOut(msgspec.Struct):
    member_id: int
    tags: list[str]


class MergeIn(msgspec.Struct, forbid_unknown_fields=True):
    survivor_id: BodyId
    absorbed_id: BodyId
    reason: str


class MergeOut(msgspec.Struct):
    id: int
    survivor_id: int
    absorbed_id: int
    status: str
    actor: str
    reason: str
    evidence: list[Any]
    moved: dict[str, int]
    created_at: datetime
    undone_at: datetime | None
    undone_by: str | None


class ConsentIn(msgspec.Struct, forbid_unknown_fields=True):
    purpose: str
    status: str
    source: ConsentSource
    signature: str = "*"
    proof: str = ""
    at: datetime | None = None


class ConsentEventOut(msgspec.Struct):
    id: int
    purpose: str
    signature: str
    status: str
    source: str
    proof: str
    actor: str
    recorded_at: datetime


class ConsentOut(msgspec.Struct):
    member_id: int
    states: list[ConsentStateOut]
    history: list[ConsentEventOut]


class ContactCheckOut(msgspec.Struct):
    member_id: int
    purpose: str
    signature: str
    allowed: bool


class AuditOut(msgspec.Struct):
    id: int
    at: datetime
    actor: str
    actor_key_id: int | None
    role: str
    action: str
    object_type: str
    object_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    #: set when the entry's content was redacted (PIPL erasure): ``before``/``after`` are then gone
    redacted_at: datetime | None = None


class AuditPage(msgspec.Struct):
    items: list[AuditOut]
    next_cursor: int | None
