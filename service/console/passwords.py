"""Operator passwords: argon2id hashes (argon2-cffi's defaults, RFC 9106's low-memory profile).

Guarantees:
- Only the encoded hash (algorithm, parameters, salt, digest) is stored; a password is never
  logged or kept.
- `verify` takes about as long for an unknown operator as for a wrong password (it checks
  against a hash of a random password), so timing does not say which names exist.
- Hashing runs off the event loop, at most `CONCURRENT_HASHES` at a time per instance, so a
  burst of logins cannot stall the service's requests or fill its thread pool.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 10
MAX_LENGTH = 256
CONCURRENT_HASHES = 2

_hasher = PasswordHasher()  # argon2id
_slots = asyncio.Semaphore(CONCURRENT_HASHES)
_DECOY = _hasher.hash(secrets.token_urlsafe(16))


class WeakPassword(ValueError):
    """The password is too short or too long."""


def check_strength(password: str) -> None:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise WeakPassword(f"a password needs {MIN_LENGTH}-{MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    """The argon2id hash to store (raises `WeakPassword` first)."""
    check_strength(password)
    return _hasher.hash(password)


def _matches(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DECOY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def verify(stored: str | None, password: str) -> bool:
    """Whether `password` matches `stored` (None: no such operator or no password; never)."""
    if len(password) > MAX_LENGTH:  # bounded work: a megabyte password is not hashed
        return False
    async with _slots:
        return await asyncio.to_thread(_matches, stored, password)
