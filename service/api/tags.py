"""`PUT /v1/devices/{device_id}/tags` (admin): set a device's whole set of tags.

The body is `{"tags": [...]}`: at most `service.fleet.tags.MAX_TAGS` tags of `TAG` syntax, or
422 naming `tags` (or `tags[i]`) before anything is written. The set replaces the device's
tags in one transaction (`service.fleet.tags.set_tags`); 404 when there is no such device.
"""

from __future__ import annotations

from aiohttp import web

from service.api.audit import actor
from service.api.auth import require_operator
from service.api.errors import not_found
from service.api.parameters import DeviceIdPath
from service.api.responses import json_response
from service.api.schemas import DeviceTags, DeviceTagsRequest
from service.api.state import services
from service.api.validation import decode
from service.audit.log import AuditAction, record
from service.fleet.tags import set_tags


async def put_device_tags(request: web.Request, params: DeviceIdPath) -> web.Response:
    operator = await require_operator(request)
    body = await decode(request, DeviceTagsRequest)
    device_id = params.device_id
    async with services(request).pool.acquire() as conn, conn.transaction():
        result = await set_tags(conn, device_id, body.tags)
        if result is None:
            raise not_found(f"no device {device_id!r}", field="device_id")
        details = {"tags": list(result.tags), "previous": list(result.previous), "changed": result.changed}
        await record(
            conn, actor(request, operator), AuditAction.DEVICE_TAGS_SET, f"device:{device_id}", details
        )
    return json_response(DeviceTags(device_id=device_id, tags=list(result.tags), changed=result.changed))
