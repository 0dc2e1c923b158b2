"""What the endpoint table says about one endpoint: enough to route it, guard it and document it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.api.auth import Auth, Handler

Schema = dict[str, Any]

# A path parameter without a schema of its own is a non-empty string.
TEXT_PARAMETER: Schema = {"type": "string", "minLength": 1}


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """`request`: the body's type, or several types the body may be one of. `responses`: the
    statuses the handler itself answers with; what follows from the auth kind (401, 403), the
    request type (400, 422) and the database (503) is derived where the document is built.
    `path_params` / `query`: schemas of the parameters (path ones default to `TEXT_PARAMETER`)."""

    method: str
    path: str
    handler: Handler
    auth: Auth
    summary: str
    request: type | tuple[type, ...] | None = None
    responses: Mapping[int, type | None] = field(default_factory=dict)
    path_params: Mapping[str, Schema] = field(default_factory=dict)
    query: Mapping[str, Schema] = field(default_factory=dict)

    @property
    def request_types(self) -> tuple[type, ...]:
        if self.request is None:
            return ()
        return self.request if isinstance(self.request, tuple) else (self.request,)

    @property
    def path_names(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]
