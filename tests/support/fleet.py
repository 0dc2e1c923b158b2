"""Presence tests' helpers: a clock tests move, and devices enrolled but never seen."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass
class Clock:
    """The time presence is judged at: tests move it, nobody sleeps."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


async def add_devices(conn: asyncpg.Connection, ids: list[str]) -> None:
    """Enrolled devices, never seen yet (as enrollment leaves them)."""
    await conn.execute(
        "INSERT INTO devices (id, token_hash) SELECT id, md5(id) || md5(id) FROM unnest($1::text[]) id",
        ids,
    )
    await conn.execute("INSERT INTO device_presence (device_id) SELECT unnest($1::text[])", ids)
