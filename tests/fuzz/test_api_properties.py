"""Property tests over HTTP, on the real database: any valid heartbeat is stored and read back as
sent, and no body whatsoever gets a 5xx from any endpoint that reads one.

Hypothesis drives a blocking HTTP client in a worker thread while the app serves on the test's
event loop.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import requests
from hypothesis import example, given
from hypothesis import strategies as st

from service.settings import StorageMode
from tests.fuzz.strategies import JSON, OFFSETS, fixed, heartbeats
from tests.support.app import Api

FIXED = fixed(max_examples=40)


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: jsonb keeps numbers as decimals, so 8.53812927157285e16 comes back as
    the integer 85381292715728500 (the same JSON number, not the same Python float)."""
    number = (int, float)
    if (
        isinstance(a, number)
        and isinstance(b, number)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return a == b or float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


async def test_any_valid_heartbeat_is_stored_and_read_back_as_sent(api: Api, mode: StorageMode) -> None:
    device = {"Authorization": f"Bearer {await api.enroll('prop-dev')}"}
    base = str(api.client.make_url("")).rstrip("/")
    bucket = 10
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    start -= timedelta(seconds=start.timestamp() % bucket)
    counter = itertools.count()
    checked: list[int] = []

    def run(session: requests.Session) -> None:
        @FIXED
        @given(body=heartbeats(), tz=OFFSETS, within=st.integers(0, bucket * 1_000_000 - 1))
        def one(body: dict[str, Any], tz: Any, within: int) -> None:
            # a bucket of its own for every example, so each one is stored
            ts = start + timedelta(seconds=bucket * next(counter), microseconds=within)
            sent = {**body, "ts": ts.astimezone(tz).isoformat()}
            r = session.post(f"{base}/v1/heartbeats", data=msgspec.json.encode(sent), headers=device)
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["stored"] is True
            r = session.get(f"{base}/v1/devices/prop-dev/heartbeats?limit=1", headers=api.op())
            assert r.status_code == 200, r.text
            (stored,) = r.json()["heartbeats"]
            assert datetime.fromisoformat(stored["ts"]) == ts
            for name in ("status", "battery_pct", "app_version", "network", "extra"):
                assert same_json(stored[name], body.get(name)), (name, stored[name], body.get(name))
            checked.append(1)

        one()

    with requests.Session() as session:
        await asyncio.to_thread(run, session)
    assert len(checked) >= 20
    assert await api.count("SELECT count(*) FROM device_heartbeats WHERE device_id = 'prop-dev'") == len(
        checked
    )


def _nested(depth: int) -> bytes:
    return b'{"status": "ok", "battery_pct": 5, "extra": {"k": ' + b"[" * depth + b"]" * depth + b"}}"


BODIES = st.one_of(
    st.binary(max_size=300),
    JSON.map(msgspec.json.encode),
    st.dictionaries(st.sampled_from(["status", "battery_pct", "ts", "extra", "device_id", "x"]), JSON).map(
        msgspec.json.encode
    ),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


async def test_no_body_whatsoever_gets_a_5xx(api: Api, mode: StorageMode) -> None:
    device = {"Authorization": f"Bearer {await api.enroll('bytes-dev')}"}
    base = str(api.client.make_url("")).rstrip("/")
    endpoints = [
        ("/v1/enroll", {}),
        ("/v1/heartbeats", device),
        ("/v1/apk-downloads", device),
        ("/v1/enrollment-tokens", api.op()),
        ("/v1/dispatches", api.op()),
    ]
    seen: dict[int, int] = {}

    def run(session: requests.Session) -> None:
        @FIXED
        @given(
            body=BODIES,
            content_type=st.sampled_from(
                ["application/json", "text/plain", "", "application/x-www-form-urlencoded"]
            ),
        )
        @example(body=_nested(100), content_type="application/json")
        @example(body=_nested(990), content_type="application/json")
        @example(body=_nested(100_000), content_type="application/json")
        @example(body=b'{"status": "ok", "battery_pct": 1e400}', content_type="application/json")
        @example(body=b'{"status": "\\ud800", "battery_pct": 5}', content_type="application/json")
        @example(body=b"\xef\xbb\xbf{}", content_type="application/json")
        def one(body: bytes, content_type: str) -> None:
            for path, headers in endpoints:
                r = session.post(
                    f"{base}{path}", data=body, headers={**headers, "Content-Type": content_type}
                )
                seen[r.status_code] = seen.get(r.status_code, 0) + 1
                assert r.status_code < 500, (path, body[:200], r.status_code, r.text)
                if r.status_code >= 400:
                    assert r.headers["Content-Type"].startswith("application/json")
                    assert set(r.json()["error"]) >= {"code", "message"}

        one()

    with requests.Session() as session:
        await asyncio.to_thread(run, session)
    assert sum(seen.values()) >= 40 * len(endpoints)
    assert seen.get(400, 0) > 0 and seen.get(422, 0) > 0
    assert await api.count("SELECT count(*) FROM devices") == 1
