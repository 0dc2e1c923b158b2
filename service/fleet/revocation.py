"""Revoking a device (a ban) and reinstating it: the API's and the console's one path.

Revoking stops the device's credential and bans its id from enrolling again, with any token,
until an operator reinstates it. Reinstating lifts the ban only: the old credential stays
revoked, and the device comes back by enrolling with a token bound to its id.

Guarantees: each runs in one transaction that locks the device row, and records its event
(`device.revoked`, `device.reinstated`) in that transaction only when something changed, so a
repeated revoke or reinstate writes no event; the operator's audit row (`service.audit`) is
written in the same transaction every time, changed or not. Neither touches an instance's auth cache: the
caller forgets the device there (`Auth.forget_device`) after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from service.audit.log import Actor, AuditAction
from service.audit.log import record as audit
from service.events import log as events
from service.events.catalogue import DeviceReinstated, DeviceRevoked

# Both lock the device row (`old` … FOR UPDATE) and say whether anything changed, so that a
# repeated revoke or reinstate writes no event: no event without its change.
_REVOKE = """
WITH old AS (SELECT id, credential_revoked_at, banned_at FROM devices WHERE id = $1 FOR UPDATE)
UPDATE devices d SET credential_revoked_at = coalesce(d.credential_revoked_at, now()),
                     banned_at = coalesce(d.banned_at, now())
FROM old WHERE d.id = old.id
RETURNING old.credential_revoked_at IS NULL OR old.banned_at IS NULL AS changed
"""
_REINSTATE = """
WITH old AS (SELECT id, banned_at FROM devices WHERE id = $1 FOR UPDATE)
UPDATE devices d SET banned_at = NULL
FROM old WHERE d.id = old.id
RETURNING d.credential_revoked_at IS NOT NULL AS revoked, old.banned_at IS NOT NULL AS changed
"""


@dataclass(frozen=True, slots=True)
class CredentialState:
    """A device's credential after a revoke or reinstate; `changed` is False when it was so already."""

    credential_revoked: bool
    banned: bool
    changed: bool


async def revoke(pool: asyncpg.Pool, device_id: str, by: Actor) -> CredentialState | None:
    """Revoke `device_id`'s credential and ban its id (committed on return); None when there is
    no such device."""
    async with pool.acquire() as conn, conn.transaction():
        changed = await conn.fetchval(_REVOKE, device_id)
        if changed is None:
            return None
        if changed:
            await events.record(conn, DeviceRevoked(by=by.operator), device_id)
        await audit(conn, by, AuditAction.DEVICE_REVOKE, f"device:{device_id}", {"changed": changed})
    return CredentialState(credential_revoked=True, banned=True, changed=changed)


async def reinstate(pool: asyncpg.Pool, device_id: str, by: Actor) -> CredentialState | None:
    """Lift `device_id`'s ban (committed on return); None when there is no such device."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_REINSTATE, device_id)
        if row is None:
            return None
        if row["changed"]:
            await events.record(conn, DeviceReinstated(by=by.operator), device_id)
        details = {"changed": row["changed"]}
        await audit(conn, by, AuditAction.DEVICE_REINSTATE, f"device:{device_id}", details)
    return CredentialState(credential_revoked=row["revoked"], banned=False, changed=row["changed"])
