"""One device never breaks another's writes: while a well-behaved device sends heartbeats, another
sends every odd-but-parseable body we could think of to every write endpoint. The well-behaved
device gets 100% 2xx with every row stored; each odd body gets a 4xx naming what is wrong (or,
when it is odd but valid, a 2xx with its row stored); nothing gets a 5xx."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.app import Api

INT2, INT4, INT8 = 2**15, 2**31, 2**63
DEEP: Any = "leaf"
for _ in range(40):
    DEEP = {"d": DEEP}
NESTED_30: Any = []
for _ in range(29):
    NESTED_30 = [NESTED_30]


@dataclass(frozen=True)
class Odd:
    name: str
    path: str
    body: Any  # JSON-able value, or raw bytes when JSON cannot spell it from Python
    status: int | tuple[int, ...]  # expected status (either of several: a retried dispatch is 200)
    field: str | None = None  # expected error.field, when refused


def hb(**fields: Any) -> dict[str, Any]:
    return {"status": "ok", "battery_pct": 50, **fields}


def dl(**fields: Any) -> dict[str, Any]:
    return {"build_id": "b-1", "outcome": "completed", **fields}


def dispatch(n: int, **fields: Any) -> dict[str, Any]:
    return {"request_id": f"odd-{n}", "device_id": "odd-dev", "action": "ping", **fields}


HB, DL, DS = "/v1/heartbeats", "/v1/apk-downloads", "/v1/dispatches"

REFUSED = [
    *(
        Odd(f"battery {v}", HB, hb(battery_pct=v), 422, "battery_pct")
        for v in (INT2, INT4, INT8, 2**64, -(2**70))
    ),
    Odd("battery 1e400", HB, b'{"status": "ok", "battery_pct": 1e400}', 400),
    Odd("battery -1e400", HB, b'{"status": "ok", "battery_pct": -1e400}', 400),
    Odd(
        "battery 400 digits", HB, b'{"status": "ok", "battery_pct": 1' + b"0" * 400 + b"}", 422, "battery_pct"
    ),
    Odd("battery float", HB, hb(battery_pct=50.5), 422, "battery_pct"),
    Odd("battery string", HB, hb(battery_pct="50"), 422, "battery_pct"),
    Odd("battery true", HB, hb(battery_pct=True), 422, "battery_pct"),
    Odd("extra int8+1", HB, hb(extra={"n": INT8}), 422, "extra.n"),
    Odd("extra -2^70", HB, hb(extra={"a": [1, {"b": -(2**70)}]}), 422, "extra.a[1].b"),
    Odd("extra 2^64 deep inside", HB, hb(extra={"x": [[[2**64]]]}), 422, "extra.x[0][0][0]"),
    Odd("extra 1e400", HB, b'{"status": "ok", "battery_pct": 5, "extra": {"t": 1e400}}', 400),
    Odd("extra -1e400", HB, b'{"status": "ok", "battery_pct": 5, "extra": {"t": [-1e400]}}', 400),
    Odd("extra NaN", HB, b'{"status": "ok", "battery_pct": 5, "extra": {"t": NaN}}', 400),
    Odd("extra Infinity", HB, b'{"status": "ok", "battery_pct": 5, "extra": {"t": Infinity}}', 400),
    Odd("extra 40 deep", HB, hb(extra=DEEP), 422),
    Odd("extra 33 keys", HB, hb(extra={f"k{i}": i for i in range(33)}), 422, "extra"),
    Odd("extra not an object", HB, hb(extra=[1, 2]), 422, "extra"),
    Odd("extra NUL in a key", HB, hb(extra={"a\x00b": 1}), 422),
    Odd("status NUL", HB, hb(status="o\x00k"), 422, "status"),
    Odd("status 65 chars", HB, hb(status="s" * 65), 422, "status"),
    Odd("status empty", HB, hb(status=""), 422, "status"),
    Odd("status lone surrogate", HB, b'{"status": "\\ud800", "battery_pct": 5}', 400),
    Odd("app_version 65 chars", HB, hb(app_version="v" * 65), 422, "app_version"),
    Odd("network 33 chars", HB, hb(network="n" * 33), 422, "network"),
    Odd("ts year 9999", HB, hb(ts="9999-12-31T23:59:59Z"), 422, "ts"),
    Odd("ts year 1", HB, hb(ts="0001-01-01T00:00:00+00:00"), 422, "ts"),
    Odd("ts without offset", HB, hb(ts="2026-01-01T00:00:00"), 422, "ts"),
    Odd("batch of 501", HB, {"heartbeats": [hb()] * 501}, 422, "heartbeats"),
    Odd("batch, one bad", HB, {"heartbeats": [hb(), hb(battery_pct=INT8)]}, 422, "heartbeats[1].battery_pct"),
    Odd("batch empty", HB, {"heartbeats": []}, 422, "heartbeats"),
    Odd("bytes 2^63", DL, dl(bytes_downloaded=INT8), 422, "bytes_downloaded"),
    Odd("bytes 2^64", DL, dl(bytes_downloaded=2**64), 422, "bytes_downloaded"),
    Odd("bytes -2^70", DL, dl(bytes_downloaded=-(2**70)), 422, "bytes_downloaded"),
    Odd("bytes 1e400", DL, b'{"build_id": "b", "outcome": "failed", "bytes_downloaded": 1e400}', 400),
    Odd("bytes 1.0", DL, dl(bytes_downloaded=1.0), 422, "bytes_downloaded"),
    Odd("token id 2^63", DL, dl(enrollment_token_id=INT8), 422, "enrollment_token_id"),
    Odd("token id -2^70", DL, dl(enrollment_token_id=-(2**70)), 422, "enrollment_token_id"),
    Odd("build_id 129 chars", DL, dl(build_id="b" * 129), 422, "build_id"),
    Odd(
        "event_key 129 chars", DL, dl(event_key="k" * 129, ts=datetime.now(UTC).isoformat()), 422, "event_key"
    ),
    Odd("outcome 33 chars", DL, dl(outcome="c" * 33), 422, "outcome"),
    Odd("payload 2^63", DS, dispatch(1, payload={"n": INT8}), 422, "payload.n"),
    Odd("payload -2^70", DS, dispatch(2, payload={"n": [-(2**70)]}), 422, "payload.n[0]"),
    Odd(
        "payload 1e400",
        DS,
        b'{"request_id": "odd-3", "device_id": "odd-dev", "action": "p", "payload": {"n": 1e400}}',
        400,
    ),
    Odd("payload 65 keys", DS, dispatch(4, payload={f"k{i}": i for i in range(65)}), 422, "payload"),
    Odd("payload 40 deep", DS, dispatch(5, payload=DEEP), 422),
    Odd("action 65 chars", DS, dispatch(6, action="a" * 65), 422, "action"),
    Odd("request_id 129 chars", DS, {**dispatch(7), "request_id": "r" * 129}, 422, "request_id"),
    Odd("device_id 129 chars", DS, {**dispatch(8), "device_id": "d" * 129}, 422, "device_id"),
]

# Odd, but inside every bound: stored as sent.
ACCEPTED = [
    Odd("battery 0", HB, hb(battery_pct=0, ts=(datetime.now(UTC) - timedelta(hours=1)).isoformat()), 200),
    Odd(
        "status 64 astral chars",
        HB,
        hb(status="\U0001d11e" * 64, ts=(datetime.now(UTC) - timedelta(hours=2)).isoformat()),
        200,
    ),
    Odd(
        "extra at every bound",
        HB,
        hb(
            ts=(datetime.now(UTC) - timedelta(hours=3)).isoformat(),
            extra={
                "max": INT8 - 1,
                "min": -(INT8 - 1),
                "tiny": 5e-324,
                "huge": 1.7e308,
                **{f"k{i}": i for i in range(28)},
            },
        ),
        200,
    ),
    Odd(
        "extra wide inside",
        HB,
        hb(
            ts=(datetime.now(UTC) - timedelta(hours=4)).isoformat(),
            extra={"w": {f"k{i}": i for i in range(2000)}},
        ),
        200,
    ),
    Odd(
        "extra 30 deep",
        HB,
        hb(ts=(datetime.now(UTC) - timedelta(hours=5)).isoformat(), extra={"d": NESTED_30}),
        200,
    ),
    Odd("bytes 2^63-1", DL, dl(bytes_downloaded=INT8 - 1, enrollment_token_id=INT8 - 1), 201),
    Odd("build_id 128 chars", DL, dl(build_id="b" * 128), 201),
    Odd("payload at the bounds", DS, dispatch(9, payload={"max": INT8 - 1, "min": -(INT8 - 1)}), (201, 200)),
]


async def test_odd_bodies_from_one_device_never_fail_another_devices_heartbeats(api: Api) -> None:
    odd_token, good_token = await api.enroll("odd-dev"), await api.enroll("good-dev")
    odd_headers = {"Authorization": f"Bearer {odd_token}"}
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    good_count = 300

    async def good(i: int) -> tuple[int, Any]:
        ts = (start + timedelta(seconds=10 * i)).isoformat()  # a bucket of its own: each one is stored
        r = await api.client.post(
            "/v1/heartbeats",
            json={"status": "ok", "battery_pct": i % 101, "ts": ts},
            headers={"Authorization": f"Bearer {good_token}"},
        )
        return r.status, await r.json()

    async def odd(case: Odd) -> tuple[Odd, int, Any]:
        headers = api.op() if case.path == DS else odd_headers
        if isinstance(case.body, bytes):
            r = await api.client.post(
                case.path, data=case.body, headers={**headers, "Content-Type": "application/json"}
            )
        else:
            r = await api.client.post(case.path, json=case.body, headers=headers)
        return case, r.status, await r.json()

    cases = REFUSED + ACCEPTED
    results = await asyncio.gather(
        *(good(i) for i in range(good_count)), *(odd(c) for c in cases for _ in range(2))
    )
    good_results, odd_results = results[:good_count], results[good_count:]

    assert [status for status, _ in good_results] == [200] * good_count
    assert all(body["results"][0]["stored"] for _, body in good_results)
    assert (
        await api.count("SELECT count(*) FROM device_heartbeats WHERE device_id = 'good-dev'") == good_count
    )

    wrong = []
    for case, status, body in odd_results:  # type: ignore[misc]
        expected = case.status if isinstance(case.status, tuple) else (case.status,)
        if status >= 500 or status not in expected:
            wrong.append((case.name, status, body))
        elif status >= 400:
            error = body["error"]
            if case.field is not None and error.get("field") != case.field:
                wrong.append((case.name, status, body))
            if not error.get("request_id"):
                wrong.append((case.name, status, body))
    assert not wrong, wrong
    assert all(status < 500 for _, status, _ in odd_results)  # type: ignore[misc]

    stored_odd = await api.count("SELECT count(*) FROM device_heartbeats WHERE device_id = 'odd-dev'")
    assert stored_odd == sum(1 for c in ACCEPTED if c.path == HB)  # each accepted twice: 2nd absorbed
    assert await api.count("SELECT count(*) FROM fcm_dispatches") == 1
    assert await api.count("SELECT count(*) FROM apk_download_events WHERE device_id = 'odd-dev'") == 4
    assert (
        await api.count("SELECT count(*) FROM apk_download_events WHERE bytes_downloaded = $1", INT8 - 1) == 2
    )
