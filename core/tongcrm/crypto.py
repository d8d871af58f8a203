"""Encryption and blind indexes for personal data and channel secrets.

Keys are derived from ``TONGCRM_SECRET_KEY`` with HKDF, one per purpose, each named by a short key id so the
secret can rotate: values encrypted or indexed under an old key stay readable and findable while old secrets
are listed in ``TONGCRM_OLD_SECRET_KEYS``, and ``tongcrm keys rotate`` moves them to the current key
(:mod:`tongcrm.rotation`).

- Ciphertext: ``v1.<kid>.<base64url(nonce ‖ AES-GCM ciphertext)>``.
- Blind index: ``<kid>.<hex HMAC-SHA256(value)>`` — equality lookups without storing the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tongcrm.errors import ConfigError

#: base64url's two characters back to standard base64's (as ``base64.urlsafe_b64decode`` maps them)
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _derive(secret: str, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"tongcrm", info=purpose.encode()).derive(
        secret.encode()
    )


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    enc: bytes
    index: bytes
    #: built once: every lookup decrypts a mobile and computes a blind index, and setting up the cipher or
    #: the keyed hash cost as much as using it
    aead: AESGCM
    #: HMAC-SHA256 under ``index`` as its two SHA-256 states after the padded key (RFC 2104: the inner hash
    #: over ``index ^ ipad``, the outer over ``index ^ opad``), each copied per index. ``hmac.HMAC.copy`` (or
    #: ``hmac.digest``) goes through OpenSSL 3's EVP_MAC, whose copy alone cost ~2.8 µs of CPU a blind index
    #: against ~1.7 µs for the two hash copies; a bulk import computes two a mobile (#22). Same digests:
    #: ``test_crypto.py`` checks them against ``hmac.new``.
    index_inner: hashlib._Hash
    index_outer: hashlib._Hash


def _key(secret: str) -> _Key:
    enc = _derive(secret, "tongcrm/encrypt/v1")
    index = _derive(secret, "tongcrm/blind-index/v1")
    kid = hashlib.sha256(_derive(secret, "tongcrm/key-id/v1")).hexdigest()[:8]
    inner, outer = _hmac_pads(index)
    return _Key(kid, enc, index, AESGCM(enc), hashlib.sha256(inner), hashlib.sha256(outer))


def _hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """RFC 2104's padded keys of HMAC-SHA256 (block 64 bytes): ``key ^ ipad`` and ``key ^ opad``."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return key.translate(hmac.trans_36), key.translate(hmac.trans_5C)


class Vault:
    """Encrypts, decrypts and blind-indexes strings under the current key, reading old keys too."""

    def __init__(self, secret: str, old_secrets: Iterable[str] = ()) -> None:
        if not secret:
            raise ConfigError("TONGCRM_SECRET_KEY is empty")
        self.current = _key(secret)
        self._keys = {self.current.kid: self.current}
        for old in old_secrets:
            k = _key(old)
            self._keys.setdefault(k.kid, k)

    @property
    def kid(self) -> str:
        return self.current.kid

    def encrypt(self, plaintext: str, *, context: str = "") -> str:
        """``context`` binds the ciphertext to where it is stored (e.g. ``"member.mobile"``)."""
        nonce = os.urandom(12)
        ct = self.current.aead.encrypt(nonce, plaintext.encode(), context.encode() or None)
        return f"v1.{self.current.kid}.{base64.urlsafe_b64encode(nonce + ct).decode()}"

    def decrypt(self, token: str, *, context: str = "") -> str:
        try:
            version, kid, body = token.split(".", 2)
        except ValueError:
            raise ValueError("not a tongcrm ciphertext") from None
        if version != "v1":
            raise ValueError(f"unknown ciphertext version {version!r}")
        key = self._keys.get(kid)
        if key is None:
            raise ValueError(f"ciphertext was made with key {kid!r}, which is not configured")
        # base64.urlsafe_b64decode's own steps (translate, then a non-strict decode) without its Python
        # wrappers: a lookup decrypts a mobile on every request
        raw = binascii.a2b_base64(body.encode().translate(_FROM_URLSAFE))
        try:
            return key.aead.decrypt(raw[:12], raw[12:], context.encode() or None).decode()
        except InvalidTag:
            raise ValueError("ciphertext does not verify (wrong key or context, or tampered)") from None

    def needs_rotation(self, token: str) -> bool:
        return token.split(".", 2)[1] != self.current.kid

    def blind_index(self, value: str, *, purpose: str) -> str:
        return self._index(self.current, value, purpose)

    def blind_indexes(self, value: str, *, purpose: str) -> list[str]:
        """Every index ``value`` may be stored under (current key first): use with ``IN`` for lookups."""
        return [self._index(k, value, purpose) for k in self._keys.values()]

    @staticmethod
    def _index(key: _Key, value: str, purpose: str) -> str:
        inner = key.index_inner.copy()
        inner.update(f"{purpose}\x00{value}".encode())
        outer = key.index_outer.copy()
        outer.update(inner.digest())
        return f"{key.kid}.{outer.hexdigest()}"
