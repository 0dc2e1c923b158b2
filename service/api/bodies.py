"""Reading a request body within stated bounds: the one place a body is read.

What a body may cost depends on whether its sender proved who it is. A handler reads its body
after authenticating (`service.api.auth`), except `POST /v1/enroll`, whose body carries the
credential; so the rules follow from whether the request is authenticated when its body is read:

* **Size.** Authenticated: at most `TELEMETRY_MAX_BODY_BYTES`; before authentication: at most
  `TELEMETRY_ENROLL_MAX_BODY_BYTES` (4 KB). A declared `Content-Length` past the limit is 413
  `body_too_large` before a byte is read; otherwise the read stops with 413 as soon as the
  limit is passed. The limit counts bytes after decompression, so no compressed body inflates
  past it (aiohttp inflates in bounded chunks as it is read).
* **Encoding.** Before authentication, any `Content-Encoding` but `identity` is 415
  `unsupported_content_encoding`: inflating costs CPU that no unauthenticated client may spend.
* **Memory.** The bodies being read and decoded at once hold at most `TELEMETRY_BODY_BUDGET_BYTES`
  (`BodyBudget`). A read reserves its `Content-Length` (its limit when none is declared) before
  reading and returns it when the request's decoding is done; past the budget it is 503
  `busy` with `Retry-After`, at once. So many slow uploads hold at most the budget, plus
  aiohttp's read-ahead per connection (`TELEMETRY_READ_BUFFER_BYTES`, twice that at most).
* **Time.** The whole body must arrive within `TELEMETRY_HTTP_BODY_TIMEOUT_SECONDS` of the start
  of its read: else 408 `body_timeout`, and the connection is closed.
* **Hang-ups.** A client that goes away mid-body raises `ClientClosed`: it is counted and logged
  as a 499 `client_closed`, never as a database failure.

Every refusal closes the connection after its answer: the rest of the body is not read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from service.api.errors import ApiError


class ClientClosed(ApiError):
    """The client hung up before its request was read whole: nobody is left to answer."""

    def __init__(self) -> None:
        super().__init__(499, "client_closed", "the client closed the connection before sending its body")


@dataclass
class BodyBudget:
    """Bytes that bodies being read and decoded may hold at once, across all requests."""

    limit: int
    held: int = 0

    @contextlib.contextmanager
    def reserve(self, size: int, retry_after: int) -> Iterator[None]:
        """Hold `size` bytes for the block, or raise 503 `busy` at once if they do not fit."""
        if self.held + size > self.limit and self.held > 0:
            raise ApiError(
                503,
                "busy",
                "too many request bodies are being read at once; retry later",
                headers={"Retry-After": str(retry_after)},
            )
        self.held += size
        try:
            yield
        finally:
            self.held -= size


@dataclass(frozen=True)
class BodyRules:
    """What one read may take: `limit` bytes (after decompression), compressed or not."""

    limit: int
    compressed: bool
    timeout: float


def _refuse(status: int, code: str, message: str, field: str | None = None) -> ApiError:
    # Close after answering: reading the rest of a refused body would be spending on it anyway.
    return ApiError(status, code, message, field=field, close=True)


def _check_size(body: bytes | bytearray, rules: BodyRules) -> None:
    if len(body) > rules.limit:
        raise _refuse(413, "body_too_large", f"the body must be at most {rules.limit} bytes")


def check_declared(request: web.Request, rules: BodyRules) -> int:
    """Refuse what the headers already show is too much; the bytes to reserve for the read."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if not rules.compressed and encoding not in ("", "identity"):
        raise _refuse(
            415,
            "unsupported_content_encoding",
            "this endpoint takes uncompressed bodies only (it is called before authentication)",
            field="Content-Encoding",
        )
    declared = request.content_length
    if declared is not None and declared > rules.limit:
        raise _refuse(413, "body_too_large", f"the body must be at most {rules.limit} bytes")
    return rules.limit if declared is None or encoding not in ("", "identity") else declared


async def read(request: web.Request, rules: BodyRules) -> bytes:
    """The whole body, read within `rules` (see the module docstring for what is refused)."""
    body = bytearray()
    content = request.content
    try:
        if content.is_eof():
            # The whole body came with the headers (a small body usually does): nothing is left
            # to wait for, so no timer is armed. The buffer holds it already; only the limit applies.
            whole = content.read_nowait(-1)
            _check_size(whole, rules)
            return whole
        async with asyncio.timeout(rules.timeout):
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                body += chunk
                _check_size(body, rules)
    except TimeoutError:
        raise _refuse(
            408, "body_timeout", f"the body did not arrive within {rules.timeout:g} seconds"
        ) from None
    except (ConnectionError, HttpProcessingError) as exc:
        # aiohttp ends a body cut short by a hang-up with ConnectionResetError, and a malformed
        # chunked or compressed body with a payload error; neither is the database's fault.
        if request.transport is None or request.transport.is_closing():
            raise ClientClosed() from exc
        raise _refuse(
            400, "malformed_body", "the body is malformed (chunked or compressed encoding)"
        ) from exc
    return bytes(body)
