"""Schemathesis against the served `/openapi.json`: every operation, with valid credentials of the
right kind, with known and generated path parameters, with data that fits the schema and data
that does not, with whatever credentials schemathesis makes up, and with valid ones of the
wrong kind.

Every response must be free of 5xx and conform to the document (status code, content type,
body schema, documented headers). Hypothesis runs derandomized with a fixed example budget, so
the run is the same on every machine. The figures are printed at the end of the session.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.db.embedded import free_port
from service.settings import StorageMode
from tests.fuzz.stats import STATS
from tests.support.app import Api
from tests.support.cluster import settings_for

EXAMPLES = 25  # per operation and pass
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Operations that destroy what the other passes rely on run last.
LAST = ("revoke_device", "revoke_enrollment_token", "delete_webhook")


@pytest.fixture
def app_settings(db_url: str, mode: StorageMode) -> Any:
    # The event stream ends on its own after this long, so every fuzzed request gets a whole
    # response (the product default is 30 minutes). Private webhook receivers are allowed so that
    # fuzzed URLs are not looked up in DNS and the known webhook's pings find a closed local port.
    return replace(
        settings_for(db_url, mode),
        events_stream_max=timedelta(seconds=0.2),
        webhook_allow_private=True,
        webhook_timeout=timedelta(seconds=1),
    )


@dataclass
class Run:
    base_url: str
    credentials: dict[str, str]  # security scheme → bearer token
    known: dict[str, str]  # path parameter → an existing resource
    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)


def _auth_headers(operation: Any, run: Run, *, wrong_kind: bool = False) -> dict[str, str]:
    for requirement in operation.definition.raw.get("security", []):
        for scheme in requirement:
            if wrong_kind:
                (scheme,) = set(run.credentials) - {scheme}
            return {"Authorization": f"Bearer {run.credentials[scheme]}"}
    return {}


def _fuzz(operation: Any, run: Run, session: requests.Session, strategy: Any, headers: dict | None) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def one(case: schemathesis.Case) -> None:
        response = case.call(base_url=run.base_url, session=session, headers=headers, timeout=30)
        run.requests += 1
        run.statuses[response.status_code] = run.statuses.get(response.status_code, 0) + 1
        where = f"{case.method} {case.formatted_path} → {response.status_code}"
        if response.status_code >= 500:
            run.server_errors.append(f"{where}: {case.as_curl_command(headers=headers)}")
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as exc:
            run.failures.append(f"{where}: {str(exc)[:2000]}")

    one()


def fuzz_schema(schema: Any, run: Run) -> None:
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: op.definition.raw.get("operationId") in LAST)
    with requests.Session() as session:
        for operation in operations:
            headers = _auth_headers(operation, run)
            names = [p.name for p in operation.path_parameters]
            passes = [operation.as_strategy(GenerationMode.POSITIVE)]
            if names or operation.query or operation.body:  # something that can be made invalid
                passes.append(operation.as_strategy(GenerationMode.NEGATIVE))
            if names:
                fixed = {name: run.known[name] for name in names}
                passes.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed))
            for strategy in passes:
                _fuzz(operation, run, session, strategy, headers or None)
            if headers:  # made-up credentials (401), and valid ones of the wrong kind (403)
                _fuzz(operation, run, session, operation.as_strategy(GenerationMode.POSITIVE), None)
                wrong = _auth_headers(operation, run, wrong_kind=True)
                _fuzz(operation, run, session, operation.as_strategy(GenerationMode.POSITIVE), wrong)


async def test_every_operation_conforms_under_fuzzing(api: Api, mode: StorageMode) -> None:
    device_token = await api.enroll("fuzz-dev")
    r = await api.client.post(
        "/v1/heartbeats",
        json={"status": "ok", "battery_pct": 40},
        headers={"Authorization": f"Bearer {device_token}"},
    )
    assert r.status == 200
    r = await api.client.post(
        "/v1/dispatches",
        json={"request_id": "fuzz-req", "device_id": "fuzz-dev", "action": "ping"},
        headers=api.op(),
    )
    assert r.status == 201
    r = await api.client.post(
        "/v1/apk-versions",
        json={
            "package_name": "com.example.fuzz",
            "version_code": 1,
            "version_name": "1.0",
            "build_id": "fuzz-build",
            "sha256": "0" * 64,
            "size_bytes": 1,
        },
        headers=api.op(),
    )
    assert r.status == 201
    r = await api.client.post("/v1/enrollment-tokens", json={}, headers=api.op())
    token_id = (await r.json())["id"]
    r = await api.client.post(
        "/v1/webhooks", json={"url": f"http://127.0.0.1:{free_port()}/hook"}, headers=api.op()
    )
    assert r.status == 201
    webhook_id = (await r.json())["id"]
    r = await api.client.post(
        "/v1/dispatches/bulk",
        json={"request_id": "fuzz-bulk", "action": "ping", "selector": {"device_ids": ["fuzz-dev"]}},
        headers=api.op(),
    )
    assert r.status == 202
    bulk_id = (await r.json())["id"]
    r = await api.client.get("/openapi.json")
    assert r.status == 200
    schema = schemathesis.openapi.from_dict(await r.json())
    run = Run(
        base_url=str(api.client.make_url("")).rstrip("/"),
        credentials={"operator": api.operator_token, "device": device_token},
        known={
            "device_id": "fuzz-dev",
            "request_id": "fuzz-req",
            "token_id": str(token_id),
            "build_id": "fuzz-build",
            "webhook_id": str(webhook_id),
            "bulk_id": str(bulk_id),
        },
    )
    started = time.perf_counter()
    await asyncio.to_thread(fuzz_schema, schema, run)
    STATS.requests[mode] += run.requests
    STATS.server_errors[mode] += len(run.server_errors)
    STATS.seconds[mode] += time.perf_counter() - started
    STATS.statuses.update(run.statuses)

    operations = len(list(schema.get_all_operations()))
    assert operations == 48
    assert run.requests >= operations * EXAMPLES
    assert run.server_errors == [], "\n".join(run.server_errors)
    assert run.failures == [], "\n\n".join(run.failures)
    # the runs reached past authentication and validation
    assert run.statuses.get(200, 0) > 0 and run.statuses.get(201, 0) > 0
    assert all(run.statuses.get(s, 0) > 0 for s in (400, 401, 403, 404, 422, 429))
    # and the database is still whole
    assert await api.count("SELECT count(*) FROM devices WHERE id = 'fuzz-dev'") == 1
