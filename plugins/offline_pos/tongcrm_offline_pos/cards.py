"""Membership cards: the ``pos.card`` identity kind.

A card is a number printed (or encoded in a barcode) on a plastic or paper card a store hands a member. It names
one member, so the kind is strong; a card is bound at enrolment or by the first sale it is shown at, and a card
that already names another member is refused at enrolment rather than merging two members (see
:meth:`tongcrm.counter.CounterWork.enrol`).

Numbers are kept as printed, without the spaces and dashes that readers and cashiers add, upper-cased.
"""

from __future__ import annotations

import re

from tongcrm.errors import Unprocessable
from tongcrm.plugin.types import IdentityClaim, IdentityKindSpec

POS_CARD = IdentityKindSpec(
    name="pos.card",
    strong=True,
    description="A store membership card's number (letters and digits, as printed; spaces and dashes ignored)",
    labels={"zh": "门店会员卡号"},
)
_CARD = re.compile(r"^[A-Z0-9]{4,32}$")
_SEPARATORS = re.compile(r"[\s-]+")


def normalise_card(raw: str) -> str:
    """The stored form of a card number, or a 422 that says what is wrong with it."""
    card = _SEPARATORS.sub("", raw).upper()
    if not _CARD.fullmatch(card):
        raise Unprocessable("a card number is 4 to 32 letters and digits (spaces and dashes are ignored)")
    return card


def card_claim(raw: str, evidence: str) -> IdentityClaim:
    return IdentityClaim(POS_CARD.name, normalise_card(raw), evidence)
