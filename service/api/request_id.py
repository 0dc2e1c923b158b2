"""The request id: one per HTTP request, echoed in `X-Request-ID` on every response, carried by
error bodies as `error.request_id` and named by every log line about a failure, so a user can
quote it and an operator can find the cause.

A client's own `X-Request-ID` is kept when it is sane (1-128 of `[A-Za-z0-9._-]`: nothing that
could forge a log line or a header); otherwise the service makes one (uuid4, hex).
"""

from __future__ import annotations

import re
import uuid

from aiohttp import web

HEADER = "X-Request-ID"
KEY = web.RequestKey("request_id", str)

_SANE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def choose(offered: str | None) -> str:
    """The client's id when sane, else a new one."""
    if offered is not None and _SANE.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def of(request: web.Request) -> str:
    """The id the middleware gave `request` (a new one outside the middleware)."""
    found = request.get(KEY)
    if found is None:
        found = request[KEY] = choose(request.headers.get(HEADER))
    return found
