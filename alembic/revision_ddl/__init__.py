"""The DDL helpers the revisions in `alembic/versions/` call, frozen as each revision ran them.

Why a package of its own: a revision must do today what it did when it was written, whatever
happens to the service's runtime modules (`service/db/time_series.py`, `service/db/rollups.py`,
...), which keep changing. So revisions import nothing from `service`; they hold their DDL
themselves or call a module here, and the Timescale-specific DDL is still written once (here),
not copied into every revision.

The rule that keeps it so: **a module here is never changed once a revision imports it.** A
helper that must emit different SQL from some revision on is a new module with the next version
number (`rollups_v1` → `hourly_covering_v1` is how the covering index came in), and only the new
revision imports it. `tests/migrations/test_revisions_stand_alone.py` pins each module's code
(its AST, so comments and docstrings may still be corrected) and fails when one changes.

Every helper emits SQL text through `op.execute`, so it works online and in offline (`--sql`)
mode alike; anything that depends on the current time is computed by the server.

The package is importable as `revision_ddl` because `alembic.ini` puts `alembic/` on
`sys.path` (`prepend_sys_path`), for every Alembic command, `history` included.
"""
