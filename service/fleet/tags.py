"""Device tags: the operator's own labels on devices (`PUT /v1/devices/{id}/tags`), what the
device list and the fleet summary filter by (`tag=`).

Guarantees:
* Bounded: a device has at most `MAX_TAGS` tags, each 1-`MAX_TAG_LENGTH` characters of `TAG`
  (`site:berlin`, `kiosk`, `pilot/2025`); the API refuses anything else with 422 naming `tags`.
* A set: a `PUT` replaces the device's tags with the given ones (duplicates count once, order
  does not matter), in one transaction under the device's row lock, so two concurrent `PUT`s
  leave one of the two sets, never a mix. `changed` says whether the set differs from before.
* Keyed by `device_id` (`device_tags` primary key `(device_id, tag)`: the scale-out note), and
  found by tag through the `(tag, device_id)` index, so a filter by tag reads only the tagged
  devices.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

MAX_TAGS = 32
MAX_TAG_LENGTH = 64
# Letters, digits and `._:/-`, starting with a letter or a digit: safe in a query string, a
# URL path and a shell without quoting, and unambiguous with the comma-free filter syntax.
TAG = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*\Z"

# NO KEY UPDATE: serializes the device's tag writes without blocking the foreign-key checks
# (KEY SHARE) of the heartbeats and other rows written for the device meanwhile.
_LOCK_DEVICE = "SELECT id FROM devices WHERE id = $1 FOR NO KEY UPDATE"
_CURRENT = "SELECT tag FROM device_tags WHERE device_id = $1 ORDER BY tag"
_REMOVE = "DELETE FROM device_tags WHERE device_id = $1 AND NOT (tag = ANY($2::text[]))"
_ADD = (
    "INSERT INTO device_tags (device_id, tag) SELECT $1, unnest($2::text[])"
    " ON CONFLICT (device_id, tag) DO NOTHING"
)

# The condition a device list or summary adds for `tag=` ($n is the tag; `d` is `devices`).
TAGGED_SQL = "EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.tag = {tag})"


@dataclass(frozen=True, slots=True)
class TagsSet:
    """The device's tags after the `PUT` (sorted), whether they changed, and the set before."""

    tags: tuple[str, ...]
    changed: bool
    previous: tuple[str, ...]


async def set_tags(conn: asyncpg.Connection, device_id: str, tags: Iterable[str]) -> TagsSet | None:
    """Replace the tags of `device_id` with `tags` inside the caller's transaction (already
    validated: `TAG`, at most `MAX_TAGS`). None when there is no such device."""
    if not conn.is_in_transaction():
        raise RuntimeError("set_tags needs the caller's transaction")
    if await conn.fetchval(_LOCK_DEVICE, device_id) is None:
        return None
    wanted = tuple(sorted(set(tags)))
    previous = tuple(r["tag"] for r in await conn.fetch(_CURRENT, device_id))
    if previous == wanted:
        return TagsSet(wanted, False, previous)
    await conn.execute(_REMOVE, device_id, list(wanted))
    await conn.execute(_ADD, device_id, list(wanted))
    return TagsSet(wanted, True, previous)


async def tags_of(conn: asyncpg.Connection, device_id: str) -> tuple[str, ...]:
    """The device's tags, sorted (empty for a device without tags or no device)."""
    return tuple(r["tag"] for r in await conn.fetch(_CURRENT, device_id))
