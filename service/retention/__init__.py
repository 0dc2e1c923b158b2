"""Retention: how long rows are kept, and the jobs that enforce it.

Which tables are retained, how their rows expire and where their windows come from is one
registry, `service.db.retained` (below this package, since the migrations' DDL needs it too);
everything here loops over it.

* `policies`: the one run-time reader and writer of `retention_policies` (each table's window;
  a time-series table's TimescaleDB retention job too).
* `cleanup`: run retention now (`telemetry retention run`, the cron-able cleanup job).
* `maintenance`: the service's maintenance round, a list of bounded steps run by one loop.
* `show`: what `telemetry retention show` reports.
* `rollups`: the rollups' watermarks, the rollup tables' refresh, and the guard that keeps raw
  partitions until they are rolled up (definitions and DDL: `service.db.rollups`).
* `rollup_show`: the rollups' part of `telemetry retention show`.
* `health`: `retention check`, the metrics and `/health`'s "degraded" (windows, jobs, rollup lag).
* `audit`: the plain tables' expiry (batched DELETE).
* `in_force`: the windows in force, for validating timestamps.
* `cli`: the `telemetry retention` verbs.

The rule in both modes: a chunk/partition is dropped once its whole range is older than
`now - window`, so a row is kept at least its window and at most one interval (plus the time
until retention next runs) longer.
"""
