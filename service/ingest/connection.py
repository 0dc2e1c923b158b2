"""Per-connection set-up of the service's pool: JSON codecs, the writer's staging tables, no JIT."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from service.ingest.writer import Stage


async def prepare_connection(conn: asyncpg.Connection, stages: Sequence[Stage] = ()) -> None:
    """JSON codecs, the staging table of each of `stages` (the merges' own, see
    `service.app.create_pool`), and no JIT compilation."""
    await set_json_codecs(conn)
    if stages:
        await conn.execute(";\n".join(stage.ddl for stage in stages))
    # The flush statements read staging tables the planner has no statistics for; its guesses
    # can push a plan's cost past `jit_above_cost`, and compiling it then took over a second
    # for a statement that runs in milliseconds (UPDATE_PRESENCE, measured). No statement of
    # this service is long enough for JIT to pay off.
    await conn.execute("SET jit = off")


async def set_json_codecs(conn: asyncpg.Connection) -> None:
    """JSON in and out as Python values, in binary format."""
    # Binary codecs so that binary COPY can carry JSON; jsonb's binary form is a version byte
    # (1) followed by the JSON text.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + msgspec.json.encode(v),
        decoder=lambda b: msgspec.json.decode(b[1:]),
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json",
        encoder=msgspec.json.encode,
        decoder=msgspec.json.decode,
        schema="pg_catalog",
        format="binary",
    )
