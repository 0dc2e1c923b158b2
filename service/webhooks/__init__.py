"""Webhooks: the event log pushed to subscribed receivers, signed, at least once.

* `urls`: which receiver URLs are allowed (http(s), no credentials, no private addresses unless
  allowed), checked at subscription and again at connect time (DNS can change).
* `subscriptions`: creating one (its signing secret is answered once), reading, changing and
  deleting them, listing their deliveries, replaying.
* `fanout`: each subscription's events become delivery rows, in the transaction that moves its
  cursor through the feed (`service.events.feed`): derived from committed events only, none
  skipped, none twice.
* `delivery`: claiming due deliveries through the database, sending them signed per the
  Standard Webhooks specification, and recording the outcome (delivered, retried with backoff
  honouring Retry-After, or dead; a 410 disables the subscription).
* `worker`: the fan-out, delivery and upkeep loops every instance runs for the app's life
  (bounded concurrency per subscription, the backlog gauges, the expiry of finished rows).
"""
