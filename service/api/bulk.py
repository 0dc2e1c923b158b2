"""Bulk dispatch (operator): one command to a selection of the fleet (`service.bulk`).

* `POST /v1/dispatches/bulk` (admin): 202 with the bulk, its targets fixed (`target_count`) and
  its commands being created by the expanders; 200 with the stored one when `request_id` exists
  with the same action, payload and selector; 409 naming `request_id` when they differ; 422
  naming the selector's field for an empty or ambiguous selector or explicit ids that name no
  device.
* `GET /v1/dispatches/bulk/{bulk_id}`: the bulk, counts of its commands by status and by push
  status, and a page of its targets (`device_id` order, `after=`), each with its command; read
  in one snapshot.
* `POST /v1/dispatches/bulk/{bulk_id}/cancel` (admin): no more commands are created, and the
  open ones are cancelled.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from service.api.audit import actor
from service.api.auth import require_operator
from service.api.errors import ApiError, not_found, unprocessable
from service.api.fleet import device_filter
from service.api.parameters import BulkIdPath, BulkQuery
from service.api.responses import json_response
from service.api.schemas import (
    BulkCancelResponse,
    BulkDispatchRequest,
    BulkDispatchView,
    BulkSelector,
    BulkTarget,
)
from service.api.state import services
from service.api.validation import decode
from service.audit.log import Actor
from service.bulk.dispatches import (
    BulkConflict,
    BulkCreated,
    Selection,
    UnknownDevices,
    bulk_by_id,
    bulk_counts,
    bulk_page,
    cancel_bulk,
    create_bulk,
)
from service.bulk.expander import BulkExpander

# This instance's expander: a new bulk wakes it, so its commands start at once.
BULK_EXPANDER = web.AppKey("bulk_expander", BulkExpander)


def selection_of(selector: BulkSelector) -> tuple[Selection, dict[str, object]]:
    """What the selector means, and the form it is stored and compared in; 422 naming the
    selector's field unless it is exactly one non-empty choice."""
    given = [name for name in ("device_ids", "filter", "all") if getattr(selector, name) is not None]
    if len(given) != 1:
        raise unprocessable("give exactly one of device_ids, filter or all", field="selector")
    if selector.all is not None:
        if not selector.all:
            raise unprocessable(
                "all must be true when given (never the whole fleet by default)", field="selector.all"
            )
        return Selection(all=True), {"all": True}
    if selector.filter is not None:
        conditions = {k: v for k, v in msgspec.structs.asdict(selector.filter).items() if v is not None}
        if not conditions:
            raise unprocessable(
                "filter names no condition (use all: true for the whole fleet)", field="selector.filter"
            )
        return Selection(filter=device_filter(selector.filter)), {"filter": conditions}
    assert selector.device_ids is not None
    ids = sorted(set(selector.device_ids))
    return Selection(device_ids=tuple(ids)), {"device_ids": ids}


async def create_bulk_dispatch(request: web.Request) -> web.Response:
    operator = await require_operator(request)
    body = await decode(request, BulkDispatchRequest)
    created = await submit_bulk(request, body, operator.user_id, actor(request, operator))
    return json_response(created.bulk, status=202 if created.created else 200)


async def submit_bulk(
    request: web.Request, body: BulkDispatchRequest, user_id: int, by: Actor
) -> BulkCreated:
    """A checked bulk, its targets fixed and its audit row committed: the one path of the API's
    and the console's. 422 naming the selector's field, 409 naming `request_id`; a new bulk
    wakes this instance's expander."""
    selection, selector = selection_of(body.selector)
    async with services(request).pool.acquire() as conn, conn.transaction():
        try:
            created = await create_bulk(
                conn, body.request_id, body.action, body.payload, selection, selector, user_id, by
            )
        except BulkConflict:
            raise ApiError(
                409,
                "request_id_conflict",
                "request_id was already used for a different bulk (action, payload or selector differ)",
                field="request_id",
            ) from None
        except UnknownDevices as exc:
            message = f"no such devices: {', '.join(exc.device_ids)}"
            raise unprocessable(message, field="selector.device_ids", code="unknown_devices") from None
    if created.created and (expander := request.app.get(BULK_EXPANDER)) is not None:
        expander.wake()
    return created


async def get_bulk_dispatch(request: web.Request, params: BulkQuery) -> web.Response:
    await require_operator(request)
    async with services(request).pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            bulk = await bulk_by_id(conn, params.bulk_id)
            if bulk is None:
                raise not_found(f"no bulk dispatch {params.bulk_id}", field="bulk_id")
            counts = await bulk_counts(conn, bulk.id)
            page, next_after = await bulk_page(conn, bulk.id, params.after, params.limit)
    targets = [BulkTarget(device_id=d, command=c) for d, c in page]
    return json_response(BulkDispatchView(bulk=bulk, counts=counts, targets=targets, next_after=next_after))


async def cancel_bulk_dispatch(request: web.Request, params: BulkIdPath) -> web.Response:
    operator = await require_operator(request)
    result = await cancel_bulk(services(request).pool, params.bulk_id, by=actor(request, operator))
    if result is None:
        raise not_found(f"no bulk dispatch {params.bulk_id}", field="bulk_id")
    return json_response(BulkCancelResponse(cancelled=result.cancelled, bulk=result.bulk))
