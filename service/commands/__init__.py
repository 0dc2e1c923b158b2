"""Commands from dispatch to the end: the lifecycle and its status enum (`lifecycle`), the
dispatch and ack rows the writer stores (`dispatches`, `acks`), expiry (a maintenance step) and
push reachability."""
