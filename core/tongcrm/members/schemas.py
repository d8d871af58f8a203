"""Wire shapes of the member, merge, consent and audit API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from tongcrm.api.inputs import MAX_INT32, BodyId
from tongcrm.consent.models import ConsentEvent
from tongcrm.db.lengths import NOTE_MAX, fits
from tongcrm.members.models import Member, MemberTag

#: Where a consent was given, as long as the consent log keeps (a longer one was cut to 64 characters silently).
ConsentSource = Annotated[str, fits(ConsentEvent.source)]
#: The profile's text fields as long as their columns keep: a longer one is a 400 naming the field and the
#: bound (it was a 422 from the service, and the OpenAPI document stated no bound).
Name = Annotated[str, fits(Member.name)]
Gender = Annotated[str, fits(Member.gender)]
Province = Annotated[str, fits(Member.province)]
City = Annotated[str, fits(Member.city)]
#: A mobile as typed (spaces, a +86 prefix): normalised to E.164 by the service, which refuses a non-mobile.
Mobile = Annotated[str, msgspec.Meta(max_length=32)]
SourceChannel = Annotated[str, fits(Member.source_channel)]
SourceStore = Annotated[str, fits(Member.source_store)]
SourceCampaign = Annotated[str, fits(Member.source_campaign)]
Stage = Annotated[str, fits(Member.lifecycle_stage)]
Tag = Annotated[str, fits(MemberTag.tag)]
#: A person's note kept in a text column (a merge's reason, a consent's proof).
Note = Annotated[str, msgspec.Meta(max_length=NOTE_MAX)]


class MemberCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | None = None
    gender: Gender | None = None
    birthday: date | None = None
    province: Province | None = None
    city: City | None = None
    mobile: Mobile | None = None
    source_channel: SourceChannel | None = None
    source_store: SourceStore | None = None
    source_campaign: SourceCampaign | None = None
    referrer_id: BodyId | None = None
    lifecycle_stage: Stage = "prospect"
    tags: list[Tag] = msgspec.field(default_factory=list)


class MemberPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Only the fields present change; ``null`` clears a field. ``version`` may stand in for ``If-Match``."""

    name: Name | UnsetType | None = UNSET
    gender: Gender | UnsetType | None = UNSET
    birthday: date | UnsetType | None = UNSET
    province: Province | UnsetType | None = UNSET
    city: City | UnsetType | None = UNSET
    mobile: Mobile | UnsetType | None = UNSET
    source_channel: SourceChannel | UnsetType | None = UNSET
    source_store: SourceStore | UnsetType | None = UNSET
    source_campaign: SourceCampaign | UnsetType | None = UNSET
    referrer_id: BodyId | UnsetType | None = UNSET
    lifecycle_stage: Stage | UnsetType = UNSET
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
    tags: list[Tag]


class TagsOut(msgspec.Struct):
    member_id: int
    tags: list[str]


class MergeIn(msgspec.Struct, forbid_unknown_fields=True):
    survivor_id: BodyId
    absorbed_id: BodyId
    reason: Note


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
    purpose: Annotated[str, fits(ConsentEvent.purpose)]
    status: Annotated[str, fits(ConsentEvent.status)]
    source: ConsentSource
    signature: Annotated[str, fits(ConsentEvent.signature)] = "*"
    proof: Note = ""
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
