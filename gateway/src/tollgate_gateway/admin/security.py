"""Admin passwords (argon2id) and access tokens (JWT, HS256)."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
ALGORITHM = "HS256"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# Verified against when the email is unknown, so both paths cost the same.
DUMMY_HASH = hash_password("tollgate-timing-equaliser")


def password_stamp(password_hash: str) -> str:
    """A short fingerprint of the user's password hash, carried in their tokens: a new
    password (a new salted hash) makes every token issued before it invalid."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def issue_token(secret: str, user_id: uuid.UUID, role: str, ttl: int, password_hash: str) -> str:
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "role": role,
        "iat": now,
        "exp": now + ttl,
        "iss": "tollgate",
        "pwd": password_stamp(password_hash),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def token_current(claims: dict[str, Any], password_hash: str) -> bool:
    """Was the token issued for the user's current password?"""
    stamp = claims.get("pwd")
    return isinstance(stamp, str) and hmac.compare_digest(stamp, password_stamp(password_hash))


def read_token(secret: str, token: str) -> dict[str, Any] | None:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer="tollgate",
            options={"require": ["exp", "sub"]},
        )
    except jwt.PyJWTError:
        return None
    return claims
