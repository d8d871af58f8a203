"""Raw bodies kept at rest, sealed: the platform record a sync could not apply, the entry a gateway pushed that
could not be parsed, a member's SMS reply.

Those are kept whole for an operator (nothing is dropped silently), but they hold buyers' numbers, names and
addresses, so they are stored as ciphertexts under the same keys as members' mobiles (:mod:`tongcrm.crypto`),
each bound to its column by the context, and ``tongcrm keys rotate`` moves them to the current key like every
other ciphertext (:mod:`tongcrm.rotation`). A value stored before sealing existed is plain text; reads return
it as it is and a rotation seals it.
"""

from __future__ import annotations

import re

from tongcrm.crypto import Vault

#: ``message_inbound.payload``: replies' text and unparseable entries
INBOUND_PAYLOAD = "message_inbound.payload"
#: ``ingest_quarantine.payload``: platform records ingest could not apply
QUARANTINE_PAYLOAD = "ingest_quarantine.payload"

#: what :meth:`Vault.encrypt` makes: ``v1.<key id>.<base64url>``
_SEALED = re.compile(r"v1\.[0-9a-f]{8}\.[A-Za-z0-9_-]+=*")


def seal(vault: Vault, text: str, *, context: str) -> str:
    """``text`` encrypted for the column ``context`` names; an empty text stays empty (nothing to hide). A lone
    surrogate (JSON allows ``"\\ud800"``) is kept as its escape, since it cannot be encoded."""
    if not text:
        return ""
    return vault.encrypt(text.encode("utf-8", "backslashreplace").decode("utf-8"), context=context)


def is_sealed(stored: str) -> bool:
    return _SEALED.fullmatch(stored) is not None


def unseal(vault: Vault, stored: str, *, context: str) -> str:
    """The text of a stored value: decrypted, or as it is when it was stored before sealing (plain text).
    Raises ``ValueError`` when its key is not configured any more."""
    if not stored or not is_sealed(stored):
        return stored
    return vault.decrypt(stored, context=context)
