"""The event log over HTTP: `GET /v1/events` (pull feed, keyset pages) and `GET /v1/events/stream`
(Server-Sent Events). Both read the same order (`service.events.feed`): every event once, in
`(txid, id)` order, resumable from any event's `cursor` without skipping or repeating.

The stream:
* starts after `Last-Event-ID` (what EventSource sends on reconnect), else after `after=`, else
  at the head (only events from now on); each event is one SSE message whose `id:` is its
  cursor and whose `data:` is the event as `GET /v1/events` lists it;
* reads pages of at most `PAGE` events from the database and writes each before reading the
  next, so a connection holds at most one page plus the socket's buffer, however far behind
  its client is (aiohttp's `write` waits for the buffer to drain);
* is woken by the instance's `EventHub` (one poll for every stream), and ends after
  `TELEMETRY_EVENTS_STREAM_MAX_SECONDS` or at shutdown (the client resumes with its cursor);
* sends a comment line after `TELEMETRY_EVENTS_STREAM_KEEPALIVE_SECONDS` of silence from a timer
  of its own, not from the read loop: a read held up by the database (a retention job locking
  the events table, a stalled server) does not starve the keepalives, so proxies keep the
  stream open while it waits. Writes to the socket take turns (one lock), so a comment never
  lands inside a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
from aiohttp import web

from service.api import request_id
from service.api.auth import require_operator
from service.api.errors import unprocessable
from service.api.parameters import EventFeedQuery, EventStreamQuery
from service.api.responses import json_response
from service.api.schemas import Event, EventPage
from service.api.state import Services, services
from service.events import feed
from service.events.hub import EventHub

PAGE = 100
CURSOR_MAX = 40  # "<19 digits>-<19 digits>"
_encoder = msgspec.json.Encoder()


def _cursor(raw: str, name: str) -> feed.Cursor:
    """The cursor `raw` spells: its form is the parameter's pattern (`EventCursor`, checked
    before the handler for `after`), its numbers must also fit the database's bigint."""
    cursor = feed.Cursor.parse(raw) if len(raw) <= CURSOR_MAX else None
    if cursor is None:
        raise unprocessable(f"{name} must be a cursor of this feed (<txid>-<id>)", field=name)
    return cursor


def _types(params: EventStreamQuery) -> list[str] | None:
    # Each one a known type: the parameter's pattern (`EventTypes`).
    return None if params.types is None else params.types.split(",")


def wire(event: feed.StoredEvent) -> Event:
    return Event(
        id=event.id,
        cursor=str(event.cursor),
        type=event.type,
        version=event.version,
        occurred_at=event.occurred_at,
        device_id=event.device_id,
        payload=event.payload,
    )


async def get_events(request: web.Request, params: EventFeedQuery) -> web.Response:
    """Events after `after` (default: the oldest kept), oldest first, filtered."""
    await require_operator(request)
    after = feed.START if params.after is None else _cursor(params.after, "after")
    types, device_id, limit = _types(params), params.device_id, params.limit
    async with services(request).pool.acquire() as conn:
        page = await feed.read_page(conn, after, limit, types=types, device_id=device_id)
    return json_response(EventPage(events=[wire(e) for e in page.events], next_cursor=str(page.next_cursor)))


def _message(event: feed.StoredEvent) -> bytes:
    return b"id: " + str(event.cursor).encode() + b"\ndata: " + _encoder.encode(wire(event)) + b"\n\n"


async def stream_events(request: web.Request, params: EventStreamQuery) -> web.StreamResponse:
    await require_operator(request)
    svc = services(request)
    hub: EventHub = svc.event_hub
    last_id = request.headers.get("Last-Event-ID")
    raw = params.after
    types, device_id = _types(params), params.device_id
    if last_id is not None:
        cursor: feed.Cursor | None = _cursor(last_id, "Last-Event-ID")
    elif raw is not None:
        cursor = _cursor(raw, "after")
    else:
        cursor = None
    settings = svc.settings
    keepalive = settings.events_stream_keepalive.total_seconds()
    ends = time.monotonic() + settings.events_stream_max.total_seconds()

    hub.subscribe()
    try:
        if cursor is None:
            async with svc.pool.acquire() as conn:
                cursor = await feed.head(conn)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
                request_id.HEADER: request_id.of(request),
            }
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the client went away: nothing to answer
            await _pump(response, svc, hub, cursor, types, device_id, keepalive, ends)
            await response.write_eof()
        return response
    finally:
        await hub.unsubscribe()


class _Sink:
    """The stream's socket, written by the pump and the keepalive timer in turns."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self._turn = asyncio.Lock()
        self.last_write = time.monotonic()

    async def write(self, data: bytes) -> None:
        async with self._turn:
            await self._response.write(data)
            self.last_write = time.monotonic()


async def _keepalive(sink: _Sink, every: float) -> None:
    while True:
        quiet = time.monotonic() - sink.last_write
        if quiet >= every:
            await sink.write(b": keepalive\n\n")
            continue
        await asyncio.sleep(every - quiet)


async def _pump(
    response: web.StreamResponse,
    svc: Services,
    hub: EventHub,
    cursor: feed.Cursor,
    types: list[str] | None,
    device_id: str | None,
    keepalive: float,
    ends: float,
) -> None:
    sink = _Sink(response)
    # Reconnect after 2 s; the first bytes also tell proxies the stream is alive.
    await sink.write(b"retry: 2000\n\n")
    reader = asyncio.create_task(_read(sink, svc, hub, cursor, types, device_id, ends))
    timer = asyncio.create_task(_keepalive(sink, keepalive))
    try:
        # The first to end decides: the reader (end of stream, shutdown), or either one's
        # write failing because the client went away.
        done, _ = await asyncio.wait((reader, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, timer):
            task.cancel()
        await asyncio.gather(reader, timer, return_exceptions=True)
    for task in done:
        task.result()  # a ConnectionError: the caller's to swallow


async def _read(
    sink: _Sink,
    svc: Services,
    hub: EventHub,
    cursor: feed.Cursor,
    types: list[str] | None,
    device_id: str | None,
    ends: float,
) -> None:
    while not hub.closing and time.monotonic() < ends:
        seen = hub.head
        async with svc.pool.acquire() as conn:
            page = await feed.read_page(conn, cursor, PAGE, types=types, device_id=device_id)
        for event in page.events:
            await sink.write(_message(event))
        cursor = page.next_cursor
        if not page.complete:
            continue
        await hub.wait(seen, ends - time.monotonic())
