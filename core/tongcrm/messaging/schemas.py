"""Request and response bodies of the messaging API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from tongcrm.api.inputs import BodyId, SettingsIn
from tongcrm.channels.models import ChannelAccount
from tongcrm.db.lengths import NOTE_MAX, column_length, fits
from tongcrm.messaging.models import Message, MessageTemplate, MessengerAccount

#: The longest campaign name a send takes: it is logged as the flow ``campaign.<name>``.
CAMPAIGN_MAX = column_length(Message.flow) - len("campaign.")

#: The longest a care flow may wait before its message (seconds).
MAX_DELAY_SECONDS = 365 * 24 * 3600


class MessengerAccountIn(msgspec.Struct, forbid_unknown_fields=True):
    messenger: Annotated[str, fits(MessengerAccount.messenger)]
    name: Annotated[str, fits(MessengerAccount.name)]
    settings: SettingsIn = {}


class MessengerAccountOut(msgspec.Struct):
    id: int
    messenger: str
    name: str
    settings: dict[str, str]
    secrets_set: list[str]
    status: str
    status_code: str
    status_detail: str
    paused_at: datetime | None
    #: Admins only: the token the gateway's callback URLs must carry (``?token=``).
    callback_token: str | None = None


class TemplateIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, fits(MessageTemplate.name)]
    account: Annotated[str, fits(MessengerAccount.name)]
    purpose: Annotated[str, fits(MessageTemplate.purpose)]
    signature: Annotated[str, fits(MessageTemplate.signature)]
    template_code: Annotated[str, fits(MessageTemplate.template_code)]
    text: Annotated[str, msgspec.Meta(max_length=NOTE_MAX)]
    variables: list[Annotated[str, msgspec.Meta(max_length=64)]] | None = None
    defaults: dict[str, Annotated[str, msgspec.Meta(max_length=NOTE_MAX)]] = {}


class TemplateOut(msgspec.Struct):
    id: int
    name: str
    account_id: int
    purpose: str
    signature: str
    template_code: str
    text: str
    variables: list[str]
    defaults: dict[str, str]


class MessageOut(msgspec.Struct):
    id: int
    flow: str
    member_id: int
    order_id: int | None
    template_id: int
    account_id: int
    purpose: str
    status: str
    reason: str
    code: str
    detail: str
    provider_id: str | None
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    finished_at: datetime | None
    held_out: bool = False


class SettleIn(msgspec.Struct, forbid_unknown_fields=True):
    """Settle in-doubt messages (``tongcrm.messaging.settle``): what became of them, as the operator found out."""

    message_ids: Annotated[list[BodyId], msgspec.Meta(min_length=1, max_length=1000)]
    #: ``sent`` (it went out), ``failed`` (it did not; not sent again) or ``resend`` (queue it again).
    outcome: Literal["sent", "failed", "resend"]
    #: How the outcome was established (the gateway's console, the member): kept in the audit log.
    note: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    #: Required for ``resend``: a message in doubt may have been delivered, so a resend may send it twice.
    resend_confirmed: bool = False


class SettleOut(msgspec.Struct):
    outcome: str
    messages: list[MessageOut]


class CampaignSendIn(msgspec.Struct, forbid_unknown_fields=True):
    #: logged as the flow ``campaign.<campaign>``, as long as the send log keeps
    campaign: Annotated[str, msgspec.Meta(min_length=1, max_length=CAMPAIGN_MAX)]
    template: Annotated[str, fits(MessageTemplate.name)]
    member_ids: list[BodyId]
    #: Not before this moment (the policy still holds marketing to the quiet hours).
    not_before: datetime | None = None
    #: Percentage of the members kept as the control group (0–50, two decimals): a deterministic sample by
    #: HMAC of campaign and member under ``holdout_seed``; use the same values in every request of a campaign.
    holdout_percent: float = 0.0
    holdout_seed: Annotated[str, msgspec.Meta(max_length=64)] = ""


class CampaignSendOut(msgspec.Struct):
    flow: str
    requested: int
    queued: int
    #: Of the newly queued, how many were assigned to the hold-out group.
    held_out: int = 0


class CampaignStatusOut(msgspec.Struct):
    flow: str
    statuses: dict[str, int]
    #: Members assigned to the hold-out group, and of those the eligible ones held out (reason ``hold-out``).
    assigned_holdout: int
    held_out: int
    #: Members outside the hold-out whom the message reached (sent or delivered).
    treatment_reached: int


#: The API's unit stays the second; the console enters and shows the same delay in minutes, hours or days.
DELAY_HELP = (
    "Whole seconds from the flow's anchor to the message (0 to a year; the console enters minutes, hours or "
    "days and converts); omitted: the flow's default delay."
)


class FlowConfigIn(msgspec.Struct, forbid_unknown_fields=True):
    template: Annotated[str, fits(MessageTemplate.name)]
    channel_account: Annotated[str, fits(ChannelAccount.name)] | None = None
    enabled: bool = True
    #: At most a year: a care message later than that has lost its occasion (and the column is 32-bit).
    delay_seconds: Annotated[int, msgspec.Meta(ge=0, le=MAX_DELAY_SECONDS, description=DELAY_HELP)] | None = (
        None
    )


class FlowConfigOut(msgspec.Struct):
    flow: str
    channel_account_id: int | None
    enabled: bool
    delay_seconds: Annotated[int, msgspec.Meta(description=DELAY_HELP)]
    template_id: int


class FlowReportOut(msgspec.Struct):
    flow: str
    title: str
    configured: bool
    statuses: dict[str, int]
    reminded_orders: int | None = None
    paid_after_reminder: int | None = None
    recovered_fen: int | None = None
