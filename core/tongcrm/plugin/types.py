"""What plugins hand to tongcrm, and what tongcrm hands back to them.

Hooks are synchronous and return these small frozen dataclasses; the async work lives in the adapter objects
the dataclasses carry (``ChannelAdapter``, ``Messenger``, ``EntitlementProvider``). Keeping the records plain
and frozen lets the core validate them in one place (:mod:`tongcrm.plugin.host`) and lets third parties test
them without a database.

Money is integer fen, points are integers, and every datetime is timezone-aware. Normalised records are
validated in ``__post_init__`` so that a plugin bug surfaces where it is made, not three tables later.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import sqlalchemy as sa

if TYPE_CHECKING:
    from litestar.types import ControllerRouterHandler

    from tongcrm.api.hot import HotRoute
    from tongcrm.plugin.store import PluginStore

__all__ = [
    "BuyerProfile",
    "CallGate",
    "ChannelAdapter",
    "ChannelCapability",
    "ChannelContext",
    "ChannelSpec",
    "DeliveryReceipt",
    "DomainEvent",
    "EntitlementProvider",
    "EntitlementProviderSpec",
    "FulfilmentRequest",
    "FulfilmentResult",
    "HotRouteSpec",
    "IdentityClaim",
    "IdentityKindSpec",
    "InboundReply",
    "JobSpec",
    "LineRefundStatus",
    "MemberMatch",
    "Messenger",
    "MessengerContext",
    "MessengerSpec",
    "MigrationLocation",
    "NormalisedOrder",
    "OrderLine",
    "OrderPage",
    "OrderStatus",
    "OutboundMessage",
    "PluginJobContext",
    "PushBatch",
    "PushSource",
    "QuarantinedRecord",
    "ResolutionDecision",
    "RouteSpec",
    "SealedColumn",
    "SendOutcome",
    "SendRateGate",
    "SendResult",
    "SettingField",
    "Shipment",
    "validate_name",
]

_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


def validate_name(name: str, what: str) -> str:
    """Names are the keys operators type and plugins collide on, so they are kept lowercase and boring."""
    if not _NAME.match(name):
        raise ValueError(f"{what} name {name!r} must be lowercase letters, digits, '_' and '.' separators")
    return name


#: The longest text the core stores for these fields (their columns' lengths; ``test_plugin_types`` holds the two
#: alike). A longer value is refused where the record is built, so the channel quarantines that record: PostgreSQL
#: would otherwise refuse the whole page's statement, and SQLite, which does not enforce lengths, would store it.
ORDER_TEXT_LIMITS = {"external_id": 64, "platform_status": 64, "store_code": 64}
LINE_TEXT_LIMITS = {"external_id": 64, "title": 300, "sku": 100, "category": 100}
#: The same limits as names, for :class:`OrderLine`'s check of a line that fits (one expression, no loop).
_LINE_EXTERNAL_ID, _LINE_TITLE, _LINE_SKU, _LINE_CATEGORY = (
    LINE_TEXT_LIMITS[n] for n in ("external_id", "title", "sku", "category")
)
#: :data:`ORDER_TEXT_LIMITS` as names, for :class:`NormalisedOrder`'s check of an order that fits.
_ORDER_EXTERNAL_ID, _ORDER_PLATFORM_STATUS, _ORDER_STORE_CODE = (
    ORDER_TEXT_LIMITS[n] for n in ("external_id", "platform_status", "store_code")
)


def refuse_longer_than_stored(value: str | None, name: str, limit: int, what: str = "") -> None:
    """``ValueError`` for a text longer than its column (``limit``), named ``name`` (after ``what``, if given)."""
    if value is not None and len(value) > limit:
        said = f"{what}: {name}" if what else name
        raise ValueError(f"{said} is {len(value)} characters long, more than the {limit} stored")


def _fits(record: Any, limits: dict[str, int], kind: str) -> None:
    """Every text of ``limits`` within its column; the message names the record (``kind`` and its external
    id), built only for a refusal: formatted for every line and order, it was a visible share of a page's
    normalising (issue #22)."""
    for name, limit in limits.items():
        value = getattr(record, name)
        if value is not None and len(value) > limit:
            refuse_longer_than_stored(value, name, limit, f"{kind} {record.external_id[:64]}")


def _refuse_amounts(record: Any, names: tuple[str, ...], what: str) -> None:
    """Each amount of ``names`` an ``int`` and not negative, refused in that order (``what``: the record, for the
    message); called only for a record whose amounts failed the quick check, so the message is built then."""
    for name in names:
        value = getattr(record, name)
        if type(value) is not int:
            raise ValueError(f"{what}: {name} must be an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{what}: {name} must not be negative")


def _aware(value: datetime | None, what: str) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{what} must be a timezone-aware datetime, got naive {value!r}")


# --------------------------------------------------------------------------------------------------------------
# settings

#: a language tag as the console names its languages: ``zh``, ``en``, ``zh-Hant``
_LOCALE = re.compile(r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")


@dataclass(frozen=True, slots=True)
class SettingField:
    """One setting of a channel account or messenger (app key, secret, gateway URL...).

    ``secret`` settings are encrypted at rest, never echoed back by the API or CLI, and never logged.
    ``help`` is English (the API, the CLI and the English console show it); ``help_by_locale`` gives it in other
    languages for the console's operators, keyed by language (``{"zh": "…"}``): see :meth:`help_for`.
    ``labels`` names the setting per language on the console's forms (``{"zh": "卖家授权码（SessionKey）"}``), as
    :attr:`ChannelSpec.display_names` names the channel; without one the form shows :attr:`name`.
    """

    name: str
    help: str
    required: bool = True
    secret: bool = False
    default: str | None = None
    choices: tuple[str, ...] = ()
    help_by_locale: Mapping[str, str] = field(default_factory=dict, hash=False)
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        validate_name(self.name, "setting")
        if self.choices and self.default is not None and self.default not in self.choices:
            raise ValueError(f"default {self.default!r} of setting {self.name!r} is not one of its choices")
        for what, texts in (("help", self.help_by_locale), ("label", self.labels)):
            for locale, text in texts.items():
                if not _LOCALE.fullmatch(locale) or not isinstance(text, str) or not text.strip():
                    raise ValueError(
                        f"{what} of setting {self.name!r} in {locale!r}: a language code (zh, zh-Hant) and"
                        " some text"
                    )

    def help_for(self, locale: str) -> str:
        """The help in ``locale`` (``zh-CN`` falls back to ``zh``), else the English ``help``."""
        return _in_locale(self.help_by_locale, locale) or self.help

    def label_in(self, locale: str) -> str:
        """The setting's name on a form in ``locale`` (``zh-CN`` falls back to ``zh``), else :attr:`name`."""
        return _in_locale(self.labels, locale) or self.name


def _in_locale(texts: Mapping[str, str], locale: str) -> str | None:
    """The text of ``locale`` or of the nearest language it narrows (``zh-Hant-TW`` → ``zh-Hant`` → ``zh``)."""
    tag = locale.strip()
    while tag:
        if tag in texts:
            return texts[tag]
        tag = tag.rpartition("-")[0]
    return None


# --------------------------------------------------------------------------------------------------------------
# identity


@dataclass(frozen=True, slots=True)
class IdentityKindSpec:
    """A kind of identity claim (``taobao.ouid``, ``jd.open_id``, ``pos.card``...).

    ``strong`` kinds identify one person and may merge two members that both carry them; weak kinds are
    recorded as evidence only (a Taobao ``oaid`` names a receiver for a week, not a buyer).
    """

    name: str
    strong: bool
    description: str
    #: the kind's name in other languages, by the console's language code (``{"zh": "淘宝 open_uid"}``): what a
    #: member's page shows for it. A language not named shows :attr:`name`.
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        validate_name(self.name, "identity kind")

    def label_in(self, lang: str) -> str:
        """The kind as a page in ``lang`` names it (``zh-CN`` falling back to ``zh``, as a setting's label does),
        else its :attr:`name`."""
        return _in_locale(self.labels, lang) or self.name


@dataclass(frozen=True, slots=True)
class IdentityClaim:
    """A statement by a channel that this buyer is known to it under (kind, value)."""

    kind: str
    value: str
    evidence: str = ""

    def __post_init__(self) -> None:
        if not self.value or not self.value.strip():
            raise ValueError(f"identity claim of kind {self.kind!r} has an empty value")


@dataclass(frozen=True, slots=True)
class MemberMatch:
    """A live member that one of the claims being resolved already points at."""

    member_id: int
    kind: str
    value: str
    strong: bool
    member_created_at: datetime


@dataclass(frozen=True, slots=True)
class ResolutionDecision:
    """What a ``resolve_member`` policy decided for one claim set.

    Either ``member_id`` names the member to attach the claims to (and ``merge_from`` lists members to merge
    into it), or ``create`` asks for a new member.
    """

    member_id: int | None = None
    merge_from: tuple[int, ...] = ()
    create: bool = False
    reason: str = ""

    def __post_init__(self) -> None:
        if self.create == (self.member_id is not None):
            raise ValueError("a resolution decision either names a member or asks to create one")
        if self.create and self.merge_from:
            raise ValueError("a decision that creates a member cannot merge others into it")


@dataclass(frozen=True, slots=True)
class BuyerProfile:
    """What a channel knows of the buyer beyond identity claims; blank fields are simply unknown."""

    name: str | None = None
    mobile: str | None = None
    province: str | None = None
    city: str | None = None


# --------------------------------------------------------------------------------------------------------------
# orders


class OrderStatus(enum.StrEnum):
    """The normalised order lifecycle every channel maps onto."""

    CREATED = "created"
    PAID = "paid"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    COMPLETED = "completed"
    CLOSED = "closed"
    REFUNDED = "refunded"


class LineRefundStatus(enum.StrEnum):
    NONE = "none"
    REQUESTED = "requested"
    REFUSED = "refused"
    REFUNDED = "refunded"


@dataclass(frozen=True, slots=True)
class OrderLine:
    external_id: str
    title: str
    quantity: int
    unit_price_fen: int
    amount_fen: int
    sku: str | None = None
    category: str | None = None
    refund_status: LineRefundStatus = LineRefundStatus.NONE
    refunded_fen: int = 0

    def __post_init__(self) -> None:
        # A line that passes every check, tested in one expression (every line of every page is built here, and
        # the loop below with its getattr was most of a line's cost, issue #22); any other is checked one
        # rule at a time, in the order and with the messages of the refusal.
        quantity, unit, amount, refunded = (
            self.quantity,
            self.unit_price_fen,
            self.amount_fen,
            self.refunded_fen,
        )
        sku, category = self.sku, self.category
        if (
            type(quantity) is int
            and type(unit) is int
            and type(amount) is int
            and type(refunded) is int
            and quantity >= 0
            and unit >= 0
            and 0 <= refunded <= amount
            and type(self.external_id) is str
            and len(self.external_id) <= _LINE_EXTERNAL_ID
            and type(self.title) is str
            and len(self.title) <= _LINE_TITLE
            and (sku is None or (type(sku) is str and len(sku) <= _LINE_SKU))
            and (category is None or (type(category) is str and len(category) <= _LINE_CATEGORY))
        ):
            return
        _refuse_amounts(
            self, ("quantity", "unit_price_fen", "amount_fen", "refunded_fen"), f"line {self.external_id}"
        )
        _fits(self, LINE_TEXT_LIMITS, "line")
        if self.refunded_fen > self.amount_fen:
            raise ValueError(
                f"line {self.external_id}: refunded {self.refunded_fen} exceeds paid {self.amount_fen}"
            )


_MAX_TRACKING_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Shipment:
    """One parcel of an order as the channel reports it: which carrier took it, under which tracking (waybill)
    number, and when. Channel-neutral: a channel fills what its platform gives and leaves the rest blank.

    ``carrier_name`` is the company as people read it (Taobao's ``logistics_company``, e.g. "圆通速递");
    ``carrier_code`` is the platform's id for it (JD's ``logisticsId``). ``line_ids`` name the order lines in
    the parcel (``OrderLine.external_id``); empty means the whole order, or that the platform does not say.
    Tracking numbers identify a delivery to a person: core stores them for care messages and never logs them.
    """

    tracking_number: str
    carrier_name: str | None = None
    carrier_code: str | None = None
    shipped_at: datetime | None = None
    line_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        number = self.tracking_number
        if not isinstance(number, str) or not number.strip() or number != number.strip():
            raise ValueError("shipment tracking number must be a non-blank string without surrounding space")
        if len(number) > _MAX_TRACKING_LENGTH:
            raise ValueError(f"shipment tracking number is longer than {_MAX_TRACKING_LENGTH} characters")
        _aware(self.shipped_at, "shipment shipped_at")
        if len(set(self.line_ids)) != len(self.line_ids):
            raise ValueError("shipment names a line twice")


@dataclass(frozen=True, slots=True)
class NormalisedOrder:
    """One order as every channel must describe it.

    ``modified_at`` is the platform's version: the core applies a record only if it is newer than what it
    holds, which is what makes late and duplicated records harmless.
    """

    external_id: str
    status: OrderStatus
    created_at: datetime
    modified_at: datetime
    total_fen: int
    paid_fen: int
    claims: tuple[IdentityClaim, ...]
    lines: tuple[OrderLine, ...]
    paid_at: datetime | None = None
    shipped_at: datetime | None = None
    completed_at: datetime | None = None
    post_fee_fen: int = 0
    discount_fen: int = 0
    store_code: str | None = None
    buyer: BuyerProfile = field(default_factory=BuyerProfile)
    platform_status: str = ""
    #: Parcels shipped so far (tracking numbers for the shipping notice); empty before shipment or when the
    #: channel does not report them. A newer record replaces the list as a whole.
    shipments: tuple[Shipment, ...] = ()

    def __post_init__(self) -> None:
        # Each group of checks is tested in one expression first (every order of every page is built here, and
        # the loops with their getattr were a visible share of normalising, issue #22); only an order that fails
        # one is checked rule by rule, in the order and with the messages of the refusal.
        external_id = self.external_id
        total, paid, post_fee, discount = self.total_fen, self.paid_fen, self.post_fee_fen, self.discount_fen
        if not (
            external_id
            and type(total) is int
            and type(paid) is int
            and type(post_fee) is int
            and type(discount) is int
            and total >= 0
            and paid >= 0
            and post_fee >= 0
            and discount >= 0
        ):
            if not external_id:
                raise ValueError("order has no external id")
            _refuse_amounts(
                self, ("total_fen", "paid_fen", "post_fee_fen", "discount_fen"), f"order {external_id}"
            )
        for value in (self.created_at, self.modified_at, self.paid_at, self.shipped_at, self.completed_at):
            if value is not None and (value.tzinfo is None or value.utcoffset() is None):
                for name in ("created_at", "modified_at", "paid_at", "shipped_at", "completed_at"):
                    # the message only when it is needed: formatting it for every time of every order was a
                    # tenth of an imported order's parsing (issue #22)
                    _aware(getattr(self, name), f"order {external_id}: {name}")
        platform_status, store_code = self.platform_status, self.store_code
        if not (
            type(external_id) is str
            and len(external_id) <= _ORDER_EXTERNAL_ID
            and (
                platform_status is None
                or (type(platform_status) is str and len(platform_status) <= _ORDER_PLATFORM_STATUS)
            )
            and (store_code is None or (type(store_code) is str and len(store_code) <= _ORDER_STORE_CODE))
        ):
            _fits(self, ORDER_TEXT_LIMITS, "order")
        if not isinstance(self.status, OrderStatus):
            raise ValueError(f"order {external_id}: unknown status {self.status!r}")
        known = {line.external_id for line in self.lines}
        if len(known) != len(self.lines):
            raise ValueError(f"order {external_id}: duplicate line ids")
        if not self.shipments:
            return
        numbers: set[tuple[str | None, str]] = set()
        for shipment in self.shipments:
            if not isinstance(shipment, Shipment):
                raise ValueError(f"order {self.external_id}: shipments must be Shipment records")
            if not known.issuperset(shipment.line_ids):
                raise ValueError(f"order {self.external_id}: a shipment names a line the order does not have")
            key = (shipment.carrier_code or shipment.carrier_name, shipment.tracking_number)
            if key in numbers:
                raise ValueError(f"order {self.external_id}: the same shipment is listed twice")
            numbers.add(key)


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    """A platform record the adapter could not normalise. The core keeps and reports it; it is never dropped."""

    external_id: str | None
    reason: str
    payload: str


@dataclass(frozen=True, slots=True)
class OrderPage:
    """One page of a sync. ``next_cursor`` is opaque to the core; it is stored in the same transaction as the
    page's effects, so a crash replays at most this page."""

    orders: tuple[NormalisedOrder, ...]
    next_cursor: str
    has_more: bool
    quarantined: tuple[QuarantinedRecord, ...] = ()
    #: Optional: every platform change before this moment has now been delivered. Lets operators see sync
    #: lag; must never move backwards.
    watermark: datetime | None = None

    def __post_init__(self) -> None:
        _aware(self.watermark, "page watermark")


@dataclass(frozen=True, slots=True)
class PushBatch:
    """Orders a channel learned about from its push channel (e.g. TMC messages), in their current state.

    The core applies them exactly like a sync page — forward only, so a late or repeated push changes nothing —
    records ``message_ids`` as seen, commits, and only then calls ``ack_push`` so the platform stops redelivering.
    The sync cursor is not touched: sync stays the safety net for anything a push missed.
    """

    orders: tuple[NormalisedOrder, ...]
    message_ids: tuple[str, ...]
    quarantined: tuple[QuarantinedRecord, ...] = ()


@runtime_checkable
class PushSource(Protocol):
    """Implemented by adapters of channels with the ``push`` capability."""

    async def fetch_push(self) -> PushBatch: ...

    async def ack_push(self, batch: PushBatch) -> None: ...


class ChannelCapability(enum.StrEnum):
    FETCH_ORDERS = "fetch_orders"
    PUSH = "push"
    #: Each account of the channel is a physical store and its name is the store code orders carry, so the
    #: core can list stores (the console) without knowing which plugin sells in person.
    STORE = "store"
    #: The adapter honours :attr:`ChannelContext.until`, so a backfill of the channel can be cut into windows
    #: synced in parallel. Without it a backfill is one window that runs to the live horizon.
    BACKFILL_WINDOWS = "backfill_windows"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ChannelContext:
    """What the core gives an adapter: the account's settings (secrets decrypted), a clock, and nothing else.

    Adapters read "now" from ``clock`` so that tests and backfills can move time.
    """

    account_name: str
    settings: Mapping[str, str]
    clock: Callable[[], datetime] = _utcnow
    #: With no cursor, start the sync here instead of the adapter's default look-back (``tongcrm sync --since``).
    since: datetime | None = None
    #: A backfill window's end: an adapter of a channel with the ``backfill_windows`` capability treats it as
    #: its horizon (it reports ``has_more=False`` once everything modified before ``until`` was delivered), so
    #: that one long period can be cut into windows that different workers sync at once.
    until: datetime | None = None
    #: Call windows shared by every worker (``None`` outside the core's sync, e.g. in a plugin's own tests).
    #: An adapter whose platform meters an app key acquires ``"<platform>:<app key>"`` before each call.
    call_gate: CallGate | None = None


@runtime_checkable
class ChannelAdapter(Protocol):
    """The object a channel plugin's factory returns for one channel account."""

    async def fetch_orders(self, cursor: str | None) -> OrderPage:
        """Return the page after ``cursor`` (``None``: start from the beginning of the sync window)."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A sales channel (Taobao, JD, a store till...)."""

    name: str
    display_name: str
    settings: tuple[SettingField, ...]
    factory: Callable[[ChannelContext], ChannelAdapter]
    capabilities: frozenset[ChannelCapability] = frozenset({ChannelCapability.FETCH_ORDERS})
    identity_kinds: tuple[IdentityKindSpec, ...] = ()
    #: The settings a re-authorisation renews (the shop's OAuth access token, not the app's key): what an
    #: operator is asked for when the account ``needs_reauth``. Empty: every secret setting.
    reauthorise: tuple[str, ...] = ()
    #: ``display_name`` in other languages, by the console's language code (``{"zh": "线下门店（POS）"}``): what
    #: a Chinese page shows for the channel. A language not named shows ``display_name``.
    display_names: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: The longest account name this channel takes, when its names are written into bounded places (a store's
    #: code goes into its receipts' keys and its tills' consent source ``pos:STORE:TILL``): creating a longer
    #: one is refused (400) naming the bound, so an account that exists can always be used. None: the core's
    #: own bound (100, the column).
    max_account_name: int | None = None

    def __post_init__(self) -> None:
        validate_name(self.name, "channel")
        if self.max_account_name is not None and not 1 <= self.max_account_name <= 100:
            raise ValueError(f"channel {self.name!r}: max_account_name must be 1 to 100")
        names = [s.name for s in self.settings]
        if len(names) != len(set(names)):
            raise ValueError(f"channel {self.name!r} declares a setting twice")
        unknown = sorted(set(self.reauthorise) - set(names))
        if unknown:
            raise ValueError(f"channel {self.name!r} re-authorises undeclared settings: {', '.join(unknown)}")

    def display_name_in(self, lang: str) -> str:
        """The channel's name as a page in ``lang`` shows it (:attr:`display_names`, ``zh-CN`` falling back to
        ``zh`` as a setting's label does, else :attr:`display_name`)."""
        return _in_locale(self.display_names, lang) or self.display_name

    @property
    def reauth_settings(self) -> tuple[SettingField, ...]:
        """The settings an operator supplies to re-authorise an account of this channel."""
        if self.reauthorise:
            return tuple(s for s in self.settings if s.name in self.reauthorise)
        return tuple(s for s in self.settings if s.secret)


# --------------------------------------------------------------------------------------------------------------
# messaging


class SendOutcome(enum.StrEnum):
    SENT = "sent"
    RETRY_LATER = "retry_later"
    FAILED_NUMBER = "failed_number"  # permanent for this recipient
    FAILED_MESSAGE = "failed_message"  # this message's content can never be sent (variables, banned words)
    FAILED_ACCOUNT = "failed_account"  # permanent for the sending account: pause sending
    #: The request may have reached the gateway and no answer came (a read timeout, a connection lost after
    #: sending). Re-sending could deliver the message twice, so the core does not: the message stays
    #: ``in_doubt`` until a delivery report matched by its message id (or provider id) settles it.
    IN_DOUBT = "in_doubt"


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    message_id: str
    mobile_e164: str
    signature: str
    template_code: str
    params: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SendResult:
    message_id: str
    outcome: SendOutcome
    provider_id: str | None = None
    code: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """A gateway's delivery report. ``dedupe_key`` is stable across the gateway's retries of the same report."""

    message_id: str | None
    provider_id: str | None
    delivered: bool
    code: str
    at: datetime
    dedupe_key: str = ""


@dataclass(frozen=True, slots=True)
class InboundReply:
    mobile_e164: str
    signature: str
    content: str
    at: datetime
    dedupe_key: str


@runtime_checkable
class RateGrant(Protocol):
    """Permits taken from a :class:`SendRateGate` or a :class:`CallGate`; ``release`` once the request they were
    for has finished.

    Pass ``in_doubt=True`` when the request may have been sent and got no answer — a read timeout, a call
    cancelled by a deadline, a connection lost after sending: the platform may still receive it (and count it)
    later, so the grant keeps counting as in flight for the gate's in-flight bound (a minute) instead of from
    now. A request that was never sent (no connection could be made) is not in doubt.
    """

    async def release(self, *, in_doubt: bool = False) -> None: ...


@runtime_checkable
class SendRateGate(Protocol):
    """A send-rate window that the core keeps for one messenger account in its database, so that it holds
    across dispatcher runs and across processes (an in-memory limiter starts empty with every messenger).

    ``acquire`` returns once ``permits`` messages may go: in any ``window`` seconds at most ``rate`` messages
    reach the platform from this account, counting every process that sends through it. ``permits`` must not
    exceed ``rate``. A messenger calls it right before each request to its platform and releases the grant
    when the request has finished: until then the permits count as being sent now, afterwards from the moment
    the request finished — so a slow request can never arrive together with the next window's messages.
    """

    async def acquire(self, permits: int, *, rate: int, window: float) -> RateGrant: ...


@runtime_checkable
class CallGate(Protocol):
    """Call limits that the core keeps per key in its database, so that they hold across every worker and
    machine (platforms meter an app key, whichever process calls).

    ``acquire`` returns once one more call under ``key`` keeps at most ``rate`` calls in any ``window`` seconds;
    call it right before each request and ``release`` the grant when the request has finished (see
    :class:`SendRateGate` for why a grant counts as "now" until then).
    """

    async def acquire(self, key: str, *, rate: int, window: float = 1.0) -> RateGrant: ...


@dataclass(frozen=True, slots=True)
class MessengerContext:
    name: str
    settings: Mapping[str, str]
    clock: Callable[[], datetime] = _utcnow
    #: The account's shared send-rate window (``None`` when the core runs the messenger outside a dispatcher,
    #: e.g. in a plugin's own tests); messengers that enforce a rate should use it when given.
    rate_gate: SendRateGate | None = None


@runtime_checkable
class Messenger(Protocol):
    max_batch: int

    async def send(self, batch: Sequence[OutboundMessage]) -> Sequence[SendResult]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class MessengerSpec:
    name: str
    display_name: str
    settings: tuple[SettingField, ...]
    factory: Callable[[MessengerContext], Messenger]

    def __post_init__(self) -> None:
        validate_name(self.name, "messenger")


# --------------------------------------------------------------------------------------------------------------
# entitlements


@dataclass(frozen=True, slots=True)
class FulfilmentRequest:
    grant_id: str
    member_id: int
    entitlement: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class FulfilmentResult:
    ok: bool
    retryable: bool = False
    reference: str | None = None
    detail: str = ""


class EntitlementProvider(Protocol):
    async def fulfil(self, request: FulfilmentRequest) -> FulfilmentResult:
        """Fulfil the grant on the platform. Must be idempotent by ``request.grant_id``."""
        ...


@dataclass(frozen=True, slots=True)
class EntitlementProviderSpec:
    name: str
    entitlements: tuple[str, ...]
    factory: Callable[[Mapping[str, str]], EntitlementProvider]

    def __post_init__(self) -> None:
        validate_name(self.name, "entitlement provider")


# --------------------------------------------------------------------------------------------------------------
# routes, commands, migrations, events


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """Litestar route handlers or routers a plugin mounts.

    Every handler outside ``public_paths`` says who may call it with ``opt=tongcrm.api.security.requires(<roles>)``
    (on the handler, its controller or router); the app's ``before_request`` hook then checks the API key and
    the role, and the app refuses to start with a handler that names no roles or replaces that hook. A till API
    (handlers for ``pos`` keys) is mounted under ``/pos/`` and admits ``pos`` keys alone; the app refuses a
    handler elsewhere that admits them. ``public`` paths skip API-key auth (the plugin then authenticates the
    caller itself, e.g. by a platform signature).
    """

    handlers: tuple[ControllerRouterHandler, ...]
    public_paths: tuple[str, ...] = ()
    #: Routes among ``handlers`` answered before litestar in their plain case (see :class:`HotRouteSpec`).
    hot: tuple[HotRouteSpec, ...] = ()


_HOT_METHODS = ("GET", "POST")


@dataclass(frozen=True, slots=True)
class HotRouteSpec:
    """A route answered by the app's outermost layer before litestar in its plain case, when litestar's
    per-request machinery costs more than the work (see :mod:`tongcrm.api.hot`): the route's ``method`` and
    exact ``path`` as the app mounts it, and ``build``, which makes the answer from what the route admits
    (a :class:`tongcrm.api.hot.HotTarget`: its roles, its limit, its body size). A plugin lists its own in
    :attr:`RouteSpec.hot`; the app refuses to start — naming the plugin — when such a route is not one of the
    plugin's handlers, or relies on what the shortcut skips (guards, middleware, dependencies, hooks, a key it
    does not confirm itself)."""

    method: str
    path: str
    build: HotRoute

    def __post_init__(self) -> None:
        if self.method not in _HOT_METHODS:
            raise ValueError(
                f"hot route {self.path}: method {self.method!r} is not one of {', '.join(_HOT_METHODS)}"
            )
        if not self.path.startswith("/"):
            raise ValueError(f"hot route {self.path!r}: the path must start with '/'")


@dataclass(frozen=True, slots=True)
class MigrationLocation:
    """Where a distribution's Alembic revisions live, and the branch label its first revision carries."""

    branch_label: str
    path: str

    def __post_init__(self) -> None:
        validate_name(self.branch_label, "migration branch")


@dataclass(frozen=True, slots=True)
class SealedColumn:
    """A column of a plugin's table whose values the plugin sealed with ``PluginStore.seal``.

    Declaring it is what lets an operator retire an old secret key: ``tongcrm keys status`` counts its values per
    key id and ``tongcrm keys rotate`` re-seals them under the current key, in batches, rewriting a row only if it
    still holds the value read. A sealed value is bound to the context it was sealed with, so the rotation needs
    it: one ``context`` for the whole column, or a function of the row's ``context_column`` when the plugin binds
    each value to its row (e.g. ``lambda endpoint_id: f"webhooks.endpoint.{endpoint_id}"``). The table must have
    a one-column primary key (the rotation pages by it).
    """

    #: what ``tongcrm keys status`` calls these values, e.g. ``"webhook secrets"``; unique across plugins
    name: str
    table: sa.Table
    column: str
    context: str | Callable[[Any], str]
    context_column: str | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("a sealed column needs a name")
        for column in (self.column, self.context_column):
            if column is not None and column not in self.table.c:
                raise ValueError(f"table {self.table.name!r} has no column {column!r}")
        if callable(self.context) and self.context_column is None:
            raise ValueError("a context function needs the context_column it is a function of")
        if len(self.table.primary_key.columns) != 1:
            raise ValueError(f"table {self.table.name!r} must have a one-column primary key")

    def context_of(self, value: Any) -> str:
        """The context the value of a row whose ``context_column`` holds ``value`` was sealed with."""
        return self.context(value) if callable(self.context) else self.context


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """A committed change, delivered from the outbox at least once. Handlers must be idempotent by ``id``."""

    id: int
    name: str
    payload: Mapping[str, Any]
    occurred_at: datetime


# --------------------------------------------------------------------------------------------------------------
# plugin jobs


@dataclass(frozen=True, slots=True)
class PluginJobContext:
    """What a plugin's job handler gets: the store facade (its own tables and ``enqueue``, one transaction per
    ``unit_of_work``), the runner's clock, and which attempt this is. Never a session."""

    store: PluginStore
    clock: Callable[[], datetime]
    job_id: int
    attempt: int


#: ``async def handler(ctx: PluginJobContext, payload: dict) -> None``
PluginJobHandler = Callable[[PluginJobContext, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Background work a plugin registers: the handler of the job ``name`` (what its event handlers and units
    of work ``enqueue``), optionally run ``every`` so often. Names are namespaced with the plugin's name
    (``webhooks.deliver``). Handlers must be idempotent: a job whose runner died runs again."""

    name: str
    handler: PluginJobHandler
    every: timedelta | None = None
    max_attempts: int = 5

    def __post_init__(self) -> None:
        validate_name(self.name, "job")
        if "." not in self.name:
            raise ValueError(f"job name {self.name!r} must be namespaced with the plugin's name (plugin.job)")
        if self.every is not None and self.every <= timedelta(0):
            raise ValueError(f"job {self.name!r}: a periodic job needs a positive interval")
        if self.max_attempts < 1:
            raise ValueError(f"job {self.name!r}: max_attempts must be at least 1")
