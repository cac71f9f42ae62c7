"""API key secrets: their format, how they are made, hashed and recognised in a request.

Rules:
- A secret is ``kosmo_sk_`` + 32 random bytes in URL-safe base64 without padding (43
  characters). It is shown once, when the key is created; the gateway keeps only its SHA-256.
  A slow password hash would buy nothing here: 256 random bits cannot be guessed, and a fast
  hash keeps the check on every request cheap.
- The ``prefix`` (``kosmo_sk_`` and the first 8 characters of the random part) finds the
  candidate rows and is what a list shows; the stored hash is then compared in constant time.
- A key is sent as ``Authorization: Bearer kosmo_sk_...``, in both auth modes. A bearer credential
  that starts with ``kosmo_sk_`` is always taken as a key, never as a JWT; one that starts so but
  is not shaped like a secret is refused (401) before any database lookup.
- Nothing here logs, and no error detail repeats the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from kosmo.api.auth import Lookup, unauthorized

SCHEME = "kosmo_sk_"
RANDOM_BYTES = 32
PREFIX_CHARS = len(SCHEME) + 8
_SECRET = re.compile(r"kosmo_sk_[A-Za-z0-9_-]{43}")


def new_secret() -> str:
    return SCHEME + secrets.token_urlsafe(RANDOM_BYTES)


def prefix_of(secret: str) -> str:
    return secret[:PREFIX_CHARS]


def hash_of(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_of(secret), stored_hash)


def key_in(headers: Lookup) -> str | None:
    """The API key this request carries, None when it carries none, or Problem(401) when its
    bearer credential looks like a key but cannot be one."""
    scheme, _, token = (headers.get("Authorization") or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(SCHEME):
        return None
    if not _SECRET.fullmatch(token):
        raise unauthorized("the API key is malformed")
    return token
