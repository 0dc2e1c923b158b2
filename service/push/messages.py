"""The data message that wakes a device for one command.

It carries what the device needs to pull the command and nothing else: the request id and the
action. Never the payload: it may hold secrets (a wipe's confirmation, a lock's PIN), and FCM
messages are stored and forwarded by Google; the device pulls the command itself over its own
authenticated channel (`GET /v1/device/commands`). A data message (no `notification` block)
is delivered to the app's `FirebaseMessagingService.onMessageReceived` whatever its state.

Android priority is `HIGH` for urgent actions (lock and wipe by default), so a phone in Doze is
woken at once; every other action is `NORMAL` (delivered at the next maintenance window), as
FCM asks of messages that do not need the user now. The TTL is the command's: FCM drops the
message once the command would have expired anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

# FCM refuses a TTL over 4 weeks (INVALID_ARGUMENT).
MAX_TTL = timedelta(weeks=4)
DEFAULT_URGENT_ACTIONS = ("lock", "wipe")


@dataclass(frozen=True, slots=True)
class CommandPush:
    """One command's push: where it goes and what it says."""

    registration_token: str
    request_id: str
    action: str
    ttl: timedelta
    urgent: bool

    def body(self) -> dict[str, Any]:
        """The JSON body of `POST /v1/projects/{id}/messages:send`."""
        ttl = min(max(self.ttl, timedelta(0)), MAX_TTL)
        return {
            "message": {
                "token": self.registration_token,
                # FCM data values must be strings; the keys avoid FCM's reserved words
                # (from, gcm, google.*, message_type).
                "data": {"request_id": self.request_id, "action": self.action},
                "android": {
                    "priority": "HIGH" if self.urgent else "NORMAL",
                    # Whole seconds: FCM takes "<seconds>s", and rounding up never cuts a
                    # command's last fraction of a second.
                    "ttl": f"{math.ceil(ttl.total_seconds())}s",
                },
            }
        }


def command_push(
    registration_token: str,
    request_id: str,
    action: str,
    ttl: timedelta,
    urgent_actions: tuple[str, ...] = DEFAULT_URGENT_ACTIONS,
) -> CommandPush:
    return CommandPush(registration_token, request_id, action, ttl, urgent=action in urgent_actions)
