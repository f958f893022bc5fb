"""API key format and hashing. Shared by the gateway and the operator.

A key is ``tg-`` followed by 43 URL-safe characters: 32 random bytes (256 bits).
Only its hash is stored: HMAC-SHA-256 with a server-side pepper (TOLLGATE_KEY_PEPPER, which
every gateway and the operator share and which is required outside dev mode), so a leaked
table cannot be checked against guesses, not even for short keys people chose themselves.
Plain SHA-256 only when there is no pepper (dev mode).

What is shown of a key (lists, status, Events): for a generated key its first characters
(``tg-`` and 8 of its 43 random ones); for a key a person supplied, a fingerprint of its
hash, never characters of the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "tg-"
DISPLAY_PREFIX_LEN = len(KEY_PREFIX) + 8


def mint_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str, pepper: bytes = b"") -> str:
    data = key.encode()
    if pepper:
        return hmac.new(pepper, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


FINGERPRINT_PREFIX = "fp-"
MIN_PEPPER_LENGTH = 16


def display_prefix(key: str) -> str:
    """The non-secret start of a generated key, shown so people can tell keys apart."""
    return key[:DISPLAY_PREFIX_LEN]


def key_fingerprint(key_hash: str) -> str:
    """What is shown of a key a person supplied: derived from its (peppered) hash only."""
    digest = hashlib.sha256(b"tollgate-key-fingerprint:" + key_hash.encode()).hexdigest()
    return FINGERPRINT_PREFIX + digest[:10]


def hashes_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
