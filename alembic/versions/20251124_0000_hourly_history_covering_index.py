"""The device-history read as an index-only scan: a covering (device_id, hour) index on the hourly rollup.

Revision ID: b7c1e4d9f2a6
Revises: a9d3e5f7b1c2
Create Date: 2025-11-24 00:00:00+00:00

A device's 30 days at 1 h are 720 hourly rows written hour by hour for the whole fleet, so they
lie on 720 heap pages; the read fetched each one at random. The rollup's one `(device_id,
hour)` index now INCLUDEs every column the read selects (`HOURLY_READ_COLUMNS`):

* rollup table (postgres mode, Apache-only TimescaleDB): the primary key is rebuilt with the
  INCLUDE list (one index, as before: no second index on the same key for the refresh to keep);
* continuous aggregate: `ix_device_heartbeats_hourly_covering` on the materialization
  hypertable, replacing TimescaleDB's group index `(device_id, hour DESC)`, whose key it leads
  with (a backward scan serves any DESC order).

The definition is frozen in `revision_ddl.hourly_covering_v1`: `cover_hourly` brings the build
of revision e31c9e0a6175 (`revision_ddl.rollups_v1`, a new database too) to it, and the
service's `service.db.rollups` builds the same shape. The index is built under a lock: the
table's ALTER blocks reads of the hourly rollup while it runs, the aggregate's CREATE INDEX
blocks its refresh.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from revision_ddl import hourly_covering_v1 as covering
from revision_ddl import rollups_v1 as rollups
from revision_ddl.inputs import is_offline, storage_mode

from alembic import op

revision: str = "b7c1e4d9f2a6"
down_revision: str | Sequence[str] | None = "a9d3e5f7b1c2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _built_mechanism() -> rollups.RollupMechanism:
    if is_offline(op):
        # Offline SQL cannot ask the server: it assumes TimescaleDB's default (TSL) license.
        return rollups.mechanism_for(storage_mode(op), None)
    return op.get_bind().execute(sa.text(rollups.BUILT_MECHANISM_SQL)).scalar()


def upgrade() -> None:
    covering.cover_hourly(op.execute, _built_mechanism())


def downgrade() -> None:
    covering.uncover_hourly(op.execute, _built_mechanism())
