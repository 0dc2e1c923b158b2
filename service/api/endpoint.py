"""What the endpoint table says about one endpoint: enough to route it, guard it, parse its
parameters and document it, from one declaration.

Adding an endpoint with path or query parameters:

1. Declare them as one struct in `service.api.parameters` (a `Parameters` subclass): a field
   per parameter, named as the client spells it; a field whose name is in the path template
   (`{device_id}`) is a path parameter and must be required, the others are query parameters.
   Reuse the shared rules there (`Limit`, `DatabaseId`, `Timestamp`, `PathId`, ...).
2. Name it in the table: `Endpoint(..., parameters=DevicePage)`.
3. Write the handler as `async def handler(request: web.Request, params: DevicePage)`: it is
   called with the parsed struct, after every parameter passed its rules; a malformed or
   out-of-range one was answered `422` naming it, before the handler ran
   (`service.api.parameters.parse`). Never read `request.query` or `request.match_info`.

An endpoint without parameters leaves `parameters` unset and its handler takes the request
only. The OpenAPI document lists the struct's fields as the operation's parameters, with their
rules (`service.api.openapi_doc`), and declares the `422` they imply.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from service.api.auth import Auth, Handler
from service.api.parameters import Parameters, fields_of, parse

# A handler of an endpoint that declares parameters: called with them parsed.
ParameterHandler = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """`request`: the body's type, or several types the body may be one of. `responses`: the
    statuses the handler itself answers with; what follows from the auth kind (401, 403), the
    request type and the parameters (400, 422) and the database (503) is derived where the
    document is built. `parameters`: the struct of its path and query parameters (see the
    module's docstring); required when the path has any. A table that breaks these rules fails
    when it is built (TypeError), not on a request."""

    method: str
    path: str
    handler: Handler | ParameterHandler
    auth: Auth
    summary: str
    request: type | tuple[type, ...] | None = None
    responses: Mapping[int, type | None] = field(default_factory=dict)
    parameters: type[Parameters] | None = None

    def __post_init__(self) -> None:
        where = f"{self.method} {self.path}"
        declared = {f.name: f for f in fields_of(self.parameters)} if self.parameters else {}
        for name in self.path_names:
            if name not in declared:
                raise TypeError(f"{where}: path parameter {name!r} is not declared in its parameters")
            if not declared[name].required:
                raise TypeError(f"{where}: path parameter {name!r} must be required")
        takes = len(inspect.signature(self.handler).parameters)
        if takes != (2 if self.parameters else 1):
            raise TypeError(
                f"{where}: {self.handler.__name__} takes {takes} arguments; it takes (request, params)"
                " when the endpoint declares parameters, else (request)"
            )

    @property
    def request_types(self) -> tuple[type, ...]:
        if self.request is None:
            return ()
        return self.request if isinstance(self.request, tuple) else (self.request,)

    @property
    def path_names(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]

    @property
    def query_names(self) -> list[str]:
        """The query parameters, in declaration order."""
        path = set(self.path_names)
        return [f.name for f in fields_of(self.parameters) if f.name not in path] if self.parameters else []

    def route_handler(self) -> Handler:
        """What the router calls: the handler, given its parameters parsed first."""
        if self.parameters is None:
            return self.handler  # type: ignore[return-value]
        parameters = self.parameters
        handler: ParameterHandler = self.handler  # type: ignore[assignment]

        async def parsed(request: web.Request) -> web.StreamResponse:
            return await handler(request, parse(parameters, request.match_info, request.query))

        parsed.__name__ = handler.__name__
        return parsed
