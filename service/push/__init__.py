"""Push: waking a device through Firebase Cloud Messaging (HTTP v1) so it pulls its command.

* `credentials`: the service account (`TELEMETRY_FCM_CREDENTIALS_FILE`) and the OAuth2 access
  token minted from it through google-auth, cached until near its expiry, one refresh at a time.
* `messages`: the one data message per command: request id and action, never the payload;
  Android priority high for urgent actions; TTL the command's.
* `fcm`: sending one message to `projects/{id}/messages:send` and classifying FCM's answer as
  FCM documents it (sent, retryable with its delay, or final), and the retry loop that backs off
  exponentially with jitter, honours `Retry-After` and stops at a deadline.
* `tokens`: the devices' registration tokens (`device_push_tokens`), what a plausible one looks
  like, and marking one invalid when FCM answered `UNREGISTERED`.
"""
