"""JSON responses: the one encoder (msgspec) for response bodies, error bodies and the OpenAPI
document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

_encoder = msgspec.json.Encoder()


def json_response(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=_encoder.encode(value), content_type="application/json", headers=headers
    )
