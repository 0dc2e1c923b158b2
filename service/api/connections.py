"""HTTP connections: what one client can hold before, between and around its requests.

aiohttp runs one `RequestHandler` per connection; `ServiceRunner` serves the app with
`GuardedConnection`s instead, which add what aiohttp leaves open. Guarantees:

* **Idle.** A connection with no request in progress is closed `TELEMETRY_HTTP_IDLE_TIMEOUT_SECONDS`
  after it opened or after its last response (aiohttp's keep-alive timer, armed at connection
  start, set from the settings).
* **Headers.** Once a byte of a request has arrived, its request line and headers must be
  complete within `TELEMETRY_HTTP_HEADER_TIMEOUT_SECONDS`, or the connection is closed: a
  half-sent request cannot hold a connection until the idle timeout.
* **Body.** `service.api.bodies`: the whole body within `TELEMETRY_HTTP_BODY_TIMEOUT_SECONDS`.
* **Per address.** One client address holds at most `TELEMETRY_MAX_CONNECTIONS_PER_ADDRESS` open
  connections; one more is closed as soon as it opens. Peers in `TELEMETRY_TRUSTED_PROXIES` are
  not limited (each carries many clients). The count is of open connections only, so its memory
  is bounded by them.
* **Unparseable HTTP** (a NUL in a header, an overlong request line, an invalid method) is
  answered in the service's JSON error shape, 400 `malformed_http` with a request id in
  `X-Request-ID` and the body, and logged at most once per address per minute, without a
  traceback (aiohttp logs an ERROR traceback for each).

Every connection the service closes early is counted in
`telemetry_http_connections_closed_total{reason}`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from service.api import request_id
from service.api.errors import ApiError
from service.metrics import Metrics
from service.settings import IPNetwork, Settings

log = logging.getLogger(__name__)

# Unparseable requests are logged at most once per address per this many seconds; the addresses
# remembered for that are bounded (least recently logged forgotten first).
MALFORMED_LOG_INTERVAL = 60.0
_MALFORMED_LOG_ADDRESSES = 10_000


@dataclass
class ConnectionGuard:
    """The limits every connection of one server shares, and their bookkeeping."""

    settings: Settings
    metrics: Metrics
    _open: dict[str, int] = field(default_factory=dict)
    _logged: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def _trusted(self, address: str) -> bool:
        proxies: tuple[IPNetwork, ...] = self.settings.trusted_proxies
        if not proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in proxies)

    def admit(self, address: str) -> bool:
        """Count a new connection from `address`; False when it is one too many."""
        held = self._open.get(address, 0)
        if held >= self.settings.max_connections_per_address and not self._trusted(address):
            self.metrics.connections_closed.labels("per_address_limit").inc()
            return False
        self._open[address] = held + 1
        return True

    def leave(self, address: str) -> None:
        held = self._open.get(address, 0) - 1
        if held > 0:
            self._open[address] = held
        else:
            self._open.pop(address, None)

    def open_connections(self, address: str) -> int:
        return self._open.get(address, 0)

    def note_malformed(self, address: str, rid: str, exc: BaseException | None) -> None:
        self.metrics.connections_closed.labels("malformed_http").inc()
        now = time.monotonic()
        last = self._logged.get(address)
        if last is not None and now - last < MALFORMED_LOG_INTERVAL:
            return
        self._logged[address] = now
        self._logged.move_to_end(address)
        while len(self._logged) > _MALFORMED_LOG_ADDRESSES:
            self._logged.popitem(last=False)
        # The class names the problem; the message may quote the client's bytes, so it is left out.
        log.warning(
            "request %s from %s: unparseable HTTP (%s); further ones from this address are not logged"
            " for %gs",
            rid,
            address,
            type(exc).__name__ if exc is not None else "unknown",
            MALFORMED_LOG_INTERVAL,
        )


class GuardedConnection(RequestHandler):
    """aiohttp's connection, with the header timeout, the per-address cap and JSON parse errors."""

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._address: str | None = None
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        if not self._guard.admit(address):
            self.force_close()
            return
        self._address = address

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._address is not None:
            self._guard.leave(self._address)
            self._address = None
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _waiting_for_headers(self) -> bool:
        # Bytes arrived, yet no request is parsed and none is being handled: a request line or
        # headers are half there. (aiohttp's own state; the tests of this module pin it.)
        return not self._messages and not self._request_in_progress and not self._upgraded

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._force_close or self._close:
            self._cancel_header_timer()
        elif self._waiting_for_headers():
            if self._header_timer is None:
                self._header_timer = self._loop.call_later(
                    self._guard.settings.http_header_timeout.total_seconds(), self._headers_too_slow
                )
        else:
            self._cancel_header_timer()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self._force_close:
            self._guard.metrics.connections_closed.labels("header_timeout").inc()
            log.debug("closing a connection from %s: its headers did not arrive in time", self._address)
            self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's last resort, in the service's error shape: a request it could not parse
        (400), or a failure outside the app's middleware (500, 504)."""
        if request.writer.output_size > 0:  # some of a response went out: nothing more can
            raise ConnectionError("a response was partly sent; the connection is closed")
        rid = uuid.uuid4().hex
        if isinstance(exc, HttpProcessingError) or status == 400:
            self._guard.note_malformed(self._address or "unknown", rid, exc)
            error = ApiError(
                400,
                "malformed_http",
                "the request is not valid HTTP/1.1 (an invalid character or method, or a line too long)",
            )
        else:
            log.error("request %s: failed outside the request handlers (%d)", rid, status, exc_info=exc)
            error = ApiError(status, "internal", "internal error")
        response = error.response(rid)
        response.headers[request_id.HEADER] = rid
        response.force_close()
        return response


class GuardedServer(web.Server):
    """aiohttp's connection factory, making `GuardedConnection`s."""

    def __init__(self, base: web.Server, guard: ConnectionGuard) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedConnection(self, loop=self._loop, guard=self.guard, **self._kwargs)


class ServiceRunner(web.AppRunner):
    """`web.AppRunner` with the connection limits of `settings` (see the module docstring)."""

    def __init__(self, app: web.Application, settings: Settings, metrics: Metrics, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", settings.http_idle_timeout.total_seconds())
        # What aiohttp reads and discards of a body its handler did not read (a 401 before the
        # body, say), so that the client still sees the answer: short, since it is work spent on
        # a request that was refused.
        kwargs.setdefault("lingering_time", 2.0)
        super().__init__(app, **kwargs)
        self.guard = ConnectionGuard(settings, metrics)

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), self.guard)


def raise_open_file_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit; the limits now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard
