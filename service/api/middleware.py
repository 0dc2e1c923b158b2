"""Request middleware: one named step per job, applied in the order of `MIDDLEWARES` (outermost
first). Each step sees what the steps before it let through:

1. `record_metrics`: every response, error bodies included, is counted per route and status,
   and timed per route.
2. `map_errors`: every response carries the request id; every failure becomes a JSON error body
   with a generic message (the cause goes to the log under the request id).
3. `shed_when_stalled`: while the database is stalled, a /v1/ request is answered 503 at once
   rather than queued behind it (health, metrics and the document still answer).
4. `refuse_nul_paths`: a path parameter holding U+0000 names nothing: 404 naming the parameter.
5. `track_reads`: a /v1/ read is tracked whole by the database watchdog.

A new check is one more step, put in `MIDDLEWARES` where its order requires.
"""

from __future__ import annotations

import contextlib
import logging
import time

from aiohttp import web

from service.api import request_id
from service.api.bodies import ClientClosed
from service.api.errors import ApiError, not_found, unavailable
from service.api.state import SERVICES
from service.db.errors import is_transient
from service.db.watchdog import DatabaseStalled
from service.ingest.writer import CommitUnconfirmed, QueueFull, WriteFailed, WriteFaulted, WriterClosed

log = logging.getLogger(__name__)

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def route_of(request: web.Request) -> str:
    """The route's path template (`/v1/devices/{device_id}`), or "unmatched"."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _needs_database(route: str) -> bool:
    return route.startswith("/v1/")


def _to_error(request: web.Request, exc: BaseException) -> ApiError:
    retry_after = request.app[SERVICES].settings.retry_after_seconds
    match exc:
        case ApiError():
            return exc
        case QueueFull():
            return unavailable("write queue is full; retry later", retry_after, code="queue_full")
        case DatabaseStalled():
            return unavailable(
                "the database is not keeping up; nothing was stored", retry_after, code="storage_stalled"
            )
        case CommitUnconfirmed():
            return unavailable(
                "the commit was not confirmed in time; the rows may still be stored. Retrying with the"
                " same request_id (dispatches), ts (heartbeats) or event_key and ts (downloads) is safe",
                retry_after,
                code="commit_unconfirmed",
            )
        case WriterClosed():
            return unavailable(
                "the service is shutting down; retry on another instance", retry_after, code="shutting_down"
            )
        case WriteFailed(transient=True):
            return unavailable(
                "the database is unavailable; nothing was stored", retry_after, code="storage_unavailable"
            )
        case WriteFaulted():  # the writer logged the cause under the request id
            return ApiError(500, "internal", "internal error; nothing was stored for this request")
        case WriteFailed():
            return ApiError(
                422,
                "rejected",
                "the request's rows could not be stored; nothing was stored for it (quote the"
                " request_id when reporting this)",
            )
        case web.HTTPException():
            return ApiError(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason)
        case _ if is_transient(exc):  # unavailable (disk full, shutdown, unreachable) or aborted
            return unavailable("the database is unavailable", retry_after, code="storage_unavailable")
        case _:
            log.error(
                "request %s: unhandled error on %s %s",
                request_id.of(request),
                request.method,
                request.path,
                exc_info=exc,
            )
            return ApiError(500, "internal", "internal error")


def _transient_write(exc: BaseException) -> bool:
    return isinstance(exc, WriteFailed) and exc.transient


@web.middleware
async def record_metrics(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    route = route_of(request)
    metrics = request.app[SERVICES].metrics
    metrics.requests.labels(request.method, route, str(response.status)).inc()
    metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
    return response


@web.middleware
async def map_errors(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    rid = request_id.of(request)
    try:
        response = await handler(request)
    except Exception as exc:  # every failure becomes a JSON error body
        error = _to_error(request, exc)
        # An outage is logged when it starts and ends (`service.db.outage`), a fault by the
        # writer with its cause: neither again per request.
        quiet = ApiError | QueueFull | DatabaseStalled | WriterClosed | WriteFaulted
        if error.status >= 500 and not isinstance(exc, quiet) and not _transient_write(exc):
            log.warning(
                "request %s: %s %s → %d %s", rid, request.method, route_of(request), error.status, error.code
            )
        if isinstance(exc, ClientClosed):
            log.info("request %s: %s %s: the client hung up mid-body", rid, request.method, route_of(request))
        response = error.response(rid)
        if error.close:
            return await _answer_and_close(request, response, rid)
    if not response.prepared:  # a streamed response has sent its headers already
        response.headers[request_id.HEADER] = rid
    return response


async def _answer_and_close(request: web.Request, response: web.Response, rid: str) -> web.Response:
    """Send `response`, then close the connection without reading the rest of the request
    (aiohttp would otherwise read and discard, and inflate, what is left of its body)."""
    response.headers[request_id.HEADER] = rid
    response.force_close()
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        await response.write_eof()
    request.protocol.force_close()
    return response


@web.middleware
async def shed_when_stalled(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    route = route_of(request)
    svc = request.app[SERVICES]
    if _needs_database(route) and svc.watchdog.stalled:
        svc.metrics.shed_requests.labels(route).inc()
        svc.watchdog.ensure_responsive()
    return await handler(request)


@web.middleware
async def refuse_nul_paths(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    for name, value in request.match_info.items():
        # PostgreSQL text cannot hold U+0000: such an id names nothing, and binding it to a
        # query would fail the query rather than find nothing (bodies: validation).
        if "\x00" in value:
            raise not_found(f"no {name} {value!r}", field=name)
    return await handler(request)


@web.middleware
async def track_reads(request: web.Request, handler: web.Handler) -> web.StreamResponse:
    # A read is one short stretch of database work, so the watchdog tracks it whole (a write's
    # wait is its commit, which the writer tracks per flush attempt).
    if request.method == "GET" and _needs_database(route_of(request)):
        with request.app[SERVICES].watchdog.track():
            return await handler(request)
    return await handler(request)


MIDDLEWARES = (record_metrics, map_errors, shed_when_stalled, refuse_nul_paths, track_reads)
