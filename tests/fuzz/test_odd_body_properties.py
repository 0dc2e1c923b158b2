"""Property over HTTP, on the real database: whatever body one device sends to any write endpoint
(generated: integers of any size, numbers JSON can spell but Python cannot, long and odd text,
wide and deep objects), it never gets a 5xx, and another device sending heartbeats at the same
time gets 100% 2xx with every row stored.

Hypothesis drives a blocking HTTP client in a worker thread while the well-behaved device posts
from the test's event loop, so the two devices' writes share the writer's batches.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import requests
from hypothesis import given
from hypothesis import strategies as st

from service.settings import StorageMode
from tests.fuzz.strategies import fixed, text
from tests.support.app import Api

FIXED = fixed(max_examples=80)

# Placeholders replaced in the encoded body by numbers Python's JSON encoders cannot produce.
RAW_NUMBERS = {
    "@@huge@@": b"1e400",
    "@@-huge@@": b"-1e400",
    "@@digits@@": b"1" + b"0" * 400,
    "@@nan@@": b"NaN",
}
EDGES = [0, -1, 2**15, 2**15 - 1, 2**31, 2**31 - 1, 2**63, 2**63 - 1, -(2**63), 2**64, -(2**70)]
NUMBERS = (
    st.integers()
    | st.sampled_from(EDGES)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(sorted(RAW_NUMBERS))
)
ODD_TEXT = text(0, 200) | st.sampled_from(["", "\U0001d11e" * 65, "x" * 129, "a\\u0000b"])
ODD_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | NUMBERS | ODD_TEXT,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(text(max_size=8), inner, max_size=6),
    max_leaves=40,
)
DEEP = st.integers(25, 45).map(lambda n: _nest(n))


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"d": value}
    return value


EXTRA = st.dictionaries(text(max_size=16), ODD_JSON | DEEP, max_size=40) | ODD_JSON
HEARTBEAT = st.fixed_dictionaries(
    {"status": ODD_TEXT | st.just("ok"), "battery_pct": NUMBERS | st.integers(0, 100)},
    optional={"app_version": ODD_TEXT, "network": ODD_TEXT, "extra": EXTRA},
)
DOWNLOAD = st.fixed_dictionaries(
    {"build_id": ODD_TEXT | st.just("b-1"), "outcome": st.sampled_from(["completed", "failed", "exploded"])},
    optional={"bytes_downloaded": NUMBERS, "enrollment_token_id": NUMBERS, "event_key": ODD_TEXT},
)
DISPATCH = st.fixed_dictionaries(
    {
        "request_id": st.sampled_from(["p-1", "p-2", "r" * 129]) | text(1, 20),
        "device_id": st.just("odd-prop"),
        "action": ODD_TEXT | st.just("ping"),
    },
    optional={"payload": EXTRA},
)
REQUESTS = st.one_of(
    HEARTBEAT.map(lambda b: ("/v1/heartbeats", b)),
    st.lists(HEARTBEAT, min_size=1, max_size=5).map(lambda b: ("/v1/heartbeats", {"heartbeats": b})),
    DOWNLOAD.map(lambda b: ("/v1/apk-downloads", b)),
    DISPATCH.map(lambda b: ("/v1/dispatches", b)),
)


def encode(body: Any) -> bytes:
    raw = msgspec.json.encode(body)
    for placeholder, number in RAW_NUMBERS.items():
        raw = raw.replace(b'"' + placeholder.encode() + b'"', number)
    return raw.replace(b"a\\\\u0000b", b"a\\u0000b")


async def test_no_generated_body_from_one_device_fails_another_devices_heartbeats(
    api: Api, mode: StorageMode
) -> None:
    odd = {"Authorization": f"Bearer {await api.enroll('odd-prop')}", "Content-Type": "application/json"}
    good = {"Authorization": f"Bearer {await api.enroll('good-prop')}"}
    base = str(api.client.make_url("")).rstrip("/")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    odd_statuses: list[int] = []
    good_results: list[tuple[int, bool]] = []
    done = asyncio.Event()

    async def well_behaved() -> None:
        i = 0
        while not done.is_set() or i < 20:
            ts = (start + timedelta(seconds=10 * i)).isoformat()  # a bucket of its own each
            r = await api.client.post(
                "/v1/heartbeats", json={"status": "ok", "battery_pct": 42, "ts": ts}, headers=good
            )
            body = await r.json()
            good_results.append((r.status, r.status == 200 and body["results"][0]["stored"]))
            i += 1

    def run(session: requests.Session) -> None:
        @FIXED
        @given(request=REQUESTS)
        def one(request: tuple[str, Any]) -> None:
            path, body = request
            headers = {**api.op(), "Content-Type": "application/json"} if path == "/v1/dispatches" else odd
            r = session.post(f"{base}{path}", data=encode(body), headers=headers)
            odd_statuses.append(r.status_code)
            assert r.status_code < 500, (path, body, r.status_code, r.text)
            assert r.headers["X-Request-ID"]
            if r.status_code >= 400:
                assert r.json()["error"]["request_id"] == r.headers["X-Request-ID"]

        one()

    background = asyncio.create_task(well_behaved())
    try:
        with requests.Session() as session:
            await asyncio.to_thread(run, session)
    finally:
        done.set()
        await background
    assert len(odd_statuses) >= 80
    assert all(s < 500 for s in odd_statuses)
    assert any(400 <= s < 500 for s in odd_statuses) and any(s < 300 for s in odd_statuses)
    assert len(good_results) >= 20
    assert good_results == [(200, True)] * len(good_results)
    assert await api.count("SELECT count(*) FROM device_heartbeats WHERE device_id = 'good-prop'") == len(
        good_results
    )
