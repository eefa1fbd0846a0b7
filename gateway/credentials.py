"""Random bearer secrets, their stored hashes, and the sealed broker password. Pure.

Every secret the gateway hands out (admin and owner API tokens, enrollment tokens, poll
secrets) is 256 random bits, shown once and stored only as its SHA-256: a copy of the
database lets nobody act as an owner or enroll a device. Plain SHA-256 (no slow hash) is
enough because the secrets are random, not chosen by people.

A device's broker password is made at enrollment, but the device may only learn it once the
owner approved it. The gateway keeps it *sealed* under the device's poll secret (which it
stores only hashed): ``sealed = password XOR HMAC-SHA512(poll_secret, label)``. Only the
holder of the poll secret can unseal it; the broker needs only the password's PBKDF2 hash,
kept beside it (:mod:`gateway.broker_files`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = [
    "TOKEN_PATTERN",
    "new_password",
    "new_token",
    "seal_password",
    "token_hash",
    "token_matches",
    "unseal_password",
]

TOKEN_PATTERN = re.compile(r"senken-[a-z]{3,10}_[A-Za-z0-9_-]{43}\Z")
_SEAL_LABEL = b"senken/gateway/mqtt-password/v1"


def new_token(kind: str) -> str:
    """A fresh bearer secret such as ``senken-enroll_<43 url-safe characters>``."""
    if not re.fullmatch(r"[a-z]{3,10}", kind):
        raise ValueError(f"token kind {kind!r} must be 3-10 letters a-z")
    return f"senken-{kind}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    """The hex SHA-256 stored in place of ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Whether ``token`` hashes to ``stored_hash`` (compared in constant time)."""
    return hmac.compare_digest(token_hash(token), stored_hash)


def new_password() -> str:
    """A broker password: 256 random bits, URL-safe text (no ':' or whitespace)."""
    return secrets.token_urlsafe(32)


def _pad(poll_secret: str, size: int) -> bytes:
    pad = hmac.new(poll_secret.encode("utf-8"), _SEAL_LABEL, hashlib.sha512).digest()
    if size > len(pad):
        raise ValueError("password too long to seal")
    return pad[:size]


def seal_password(password: str, poll_secret: str) -> str:
    """``password`` sealed under ``poll_secret``, as hex."""
    raw = password.encode("ascii")
    return bytes(a ^ b for a, b in zip(raw, _pad(poll_secret, len(raw)), strict=True)).hex()


def unseal_password(sealed: str, poll_secret: str) -> str:
    """The password :func:`seal_password` sealed (garbage for a wrong secret: check the
    secret against its hash first)."""
    raw = bytes.fromhex(sealed)
    return bytes(a ^ b for a, b in zip(raw, _pad(poll_secret, len(raw)), strict=True)).decode(
        "ascii", errors="replace")
