"""API key format and hashing. Shared by the gateway and the operator.

A key is ``tg-`` followed by 43 URL-safe characters: 32 random bytes (256 bits).
Only its hash is stored: SHA-256, or HMAC-SHA-256 with a server-side pepper when
TOLLGATE_KEY_PEPPER is set (every gateway and the operator must then share it).
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


def display_prefix(key: str) -> str:
    """The non-secret start of a key, shown in lists so people can tell keys apart."""
    return key[:DISPLAY_PREFIX_LEN]


def hashes_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
