"""Retention: how long time-series rows are kept, and the jobs that enforce it.

* `windows`: retention windows as operators type and read them.
* `policies`: each table's window (a TimescaleDB retention job, or `retention_policies`).
* `cleanup`: run retention now (`telemetry retention run`, the cron-able cleanup job).
* `maintenance`: postgres mode's in-service task: partitions ahead, expired ones dropped.
* `show`: what `telemetry retention show` reports.
* `rollups`: the rollups' watermarks, the rollup tables' refresh, and the guard that keeps raw
  partitions until they are rolled up (definitions and DDL: `service.db.rollups`).
* `rollup_show`: the rollups' part of `telemetry retention show`.
* `health`: `retention check`, the metrics and `/health`'s "degraded" (windows, jobs, rollup lag).
* `audit`: the audit tables' windows (batched DELETE).
* `commands`: the `telemetry retention` CLI verbs.

The rule in both modes: a chunk/partition is dropped once its whole range is older than
`now - window`, so a row is kept at least its window and at most one interval (plus the time
until retention next runs) longer.
"""
