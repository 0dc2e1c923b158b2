"""Bearer tokens: minted from 32 random bytes behind a prefix that names their kind; only their
SHA-256 hash is ever stored (`service.api.credentials` looks them up by it)."""

from __future__ import annotations

import hashlib
import secrets

OPERATOR_PREFIX = "op_"
DEVICE_PREFIX = "dev_"
ENROLLMENT_PREFIX = "enr_"


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
