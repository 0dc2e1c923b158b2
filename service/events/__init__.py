"""The event log: state changes that leave the service.

* `catalogue`: every event type, its payload's shape and version (msgspec structs; exported in
  `/openapi.json` under `components.schemas`).
* `log`: writing one event inside the caller's transaction (the API handlers and maintenance
  steps whose change causes it). The heartbeat flush and the ack merge write theirs in their own
  set-based statements (`service.fleet.presence`, `service.commands.acks`), to the same table
  with the same types.
* `feed`: reading the log in the order a consumer can resume from without skipping or repeating.
* `hub`: one poller per instance that wakes the live streams.

One log. `device_events` became this table (revision 20251203) rather than feeding it: the
device history (`GET /v1/devices/{id}/events`) and the feed read the same rows, so they cannot
disagree, and a state change writes one row, not two. The cost is the history's window: it is
the event log's (`TELEMETRY_RETENTION_EVENTS_SECONDS`, 7 days) instead of the 90 days
`device_events` had.
"""
