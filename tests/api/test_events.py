"""`GET /v1/events` and `GET /v1/events/stream`: the event log paged and streamed in one order,
resumable from any cursor with nothing skipped or repeated; bad parameters are 422 naming them."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from service.events.catalogue import EVENT_TYPES
from service.settings import StorageMode
from tests.support.app import Api, first_maintenance_round
from tests.support.cluster import settings_for


@pytest.fixture
def app_settings(db_url: str, mode: StorageMode) -> Any:
    return replace(
        settings_for(db_url, mode),
        events_stream_keepalive=timedelta(seconds=0.3),
        events_stream_max=timedelta(seconds=20),
    )


@pytest.fixture(autouse=True)
async def first_round_done(api: Api) -> None:
    """The app's first maintenance round has finished. In timescale mode it runs the jobs of a
    test database that has no scheduler, and a retention job's lock on the events hypertable
    holds a feed read until it ends (the stream's keepalives go on meanwhile: their own timer,
    tested below), which would skew the timings these tests assert."""
    await first_maintenance_round(api)


async def feed(api: Api, **params: Any) -> dict[str, Any]:
    r = await api.client.get("/v1/events", params=params, headers=api.op())
    assert r.status == 200, await r.text()
    return await r.json()


async def feed_until(
    api: Api, count: int, after: str = "0-0", **params: Any
) -> tuple[list[dict[str, Any]], str]:
    """Page from `after` until `count` events came (an event is listed once every transaction
    that began writing before it has ended, so one may show a moment after its commit)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(seen) < count:
            page = await feed(api, after=after, **params)
            seen += page["events"]
            after = page["next_cursor"]
            if len(page["events"]) < params.get("limit", 100):
                await asyncio.sleep(0.05)
    return seen, after


async def test_the_feed_pages_every_event_once_in_order_and_polling_its_end_repeats_nothing(api: Api) -> None:
    for i in range(5):
        await api.enroll(f"feed-{i}")
    assert (await api.client.post("/v1/devices/feed-0/revoke", headers=api.op())).status == 200
    # The device's events only: the app's first round may raise a retention problem (a test
    # database has no TimescaleDB scheduler), which the feed rightly lists too.
    devices = "device.enrolled,device.revoked"
    seen, cursor = await feed_until(api, 6, limit=2, types=devices)
    assert [(e["type"], e["device_id"]) for e in seen] == [
        *[("device.enrolled", f"feed-{i}") for i in range(5)],
        ("device.revoked", "feed-0"),
    ]
    assert len({e["id"] for e in seen}) == 6 and all(e["version"] == 1 for e in seen)
    assert (await feed(api, after=cursor, types=devices))["events"] == []
    await api.enroll("feed-5")
    new, cursor = await feed_until(api, 1, after=cursor, types=devices)
    assert [e["device_id"] for e in new] == ["feed-5"]
    assert (await feed(api, after=cursor, types=devices))["events"] == []
    # Filters: by type, by device, both.
    revoked = await feed(api, types="device.revoked,device.reinstated")
    assert [e["device_id"] for e in revoked["events"]] == ["feed-0"]
    mine = await feed(api, device_id="feed-0")
    assert [e["type"] for e in mine["events"]] == ["device.enrolled", "device.revoked"]
    assert (await feed(api, device_id="feed-0", types="device.reinstated"))["events"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": "12"}, "after"),
        ({"after": "1-2-3"}, "after"),
        ({"after": "99999999999999999999-1"}, "after"),
        ({"after": "9223372036854775808-1"}, "after"),
        ({"types": "device.exploded"}, "types"),
        ({"types": "device.enrolled,"}, "types"),
        ({"device_id": "not valid"}, "device_id"),
        ({"limit": "0"}, "limit"),
    ],
)
async def test_bad_parameters_are_refused_naming_them(api: Api, params: dict[str, str], field: str) -> None:
    for path in ("/v1/events", "/v1/events/stream"):
        if path.endswith("stream") and field == "limit":
            continue
        r = await api.client.get(path, params=params, headers=api.op())
        assert r.status == 422, (path, params, r.status)
        assert (await r.json())["error"]["field"] == field


async def test_a_malformed_last_event_id_is_422_naming_the_header(api: Api) -> None:
    r = await api.client.get("/v1/events/stream", headers={**api.op(), "Last-Event-ID": "yesterday"})
    assert r.status == 422
    assert (await r.json())["error"]["field"] == "Last-Event-ID"


async def test_the_catalogue_is_in_the_openapi_document(api: Api) -> None:
    doc = await (await api.client.get("/openapi.json")).json()
    assert set(doc["x-event-catalogue"]) == set(EVENT_TYPES)
    for entry in doc["x-event-catalogue"].values():
        assert entry["payload"]["$ref"].split("/")[-1] in doc["components"]["schemas"]
    assert "/v1/events/stream" in doc["paths"] and "/v1/events" in doc["paths"]


class Sse:
    """A minimal Server-Sent Events reader: messages (id, data) and comment lines."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments = 0

    async def next_event(self, within: float = 5) -> tuple[str, dict[str, Any]] | None:
        fields: dict[str, str] = {}
        async with asyncio.timeout(within):
            while True:
                line = (await self.response.content.readline()).decode()
                if line == "":
                    return None  # the server ended the stream
                line = line.rstrip("\n")
                if line.startswith(":"):
                    self.comments += 1
                elif line == "":
                    if "data" in fields:
                        return fields["id"], json.loads(fields["data"])
                    fields = {}
                else:
                    name, _, value = line.partition(": ")
                    fields[name] = value


async def open_stream(api: Api, **headers: str) -> Sse:
    r = await api.client.get("/v1/events/stream", headers={**api.op(), **headers})
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["X-Request-ID"]
    return Sse(r)


async def test_the_stream_sends_new_events_and_resumes_after_last_event_id_skipping_and_repeating_nothing(
    api: Api,
) -> None:
    await api.enroll("before-stream")
    stream = await open_stream(api)  # from now on: the earlier event is not sent
    for i in range(3):
        await api.enroll(f"live-{i}")
    got = [await stream.next_event() for _ in range(3)]
    assert [e[1]["device_id"] for e in got if e] == ["live-0", "live-1", "live-2"]
    assert all(e is not None and e[0] == e[1]["cursor"] for e in got)
    last_id = got[1][0] if got[1] else ""  # as if the client had seen only two of them
    stream.response.close()

    for i in range(3, 5):  # written while nobody listens
        await api.enroll(f"live-{i}")
    resumed = await open_stream(api, **{"Last-Event-ID": last_id})
    again = [await resumed.next_event() for _ in range(3)]
    assert [e[1]["device_id"] for e in again if e] == ["live-2", "live-3", "live-4"]
    # Nothing else is pending: only keepalive comments follow.
    with pytest.raises(TimeoutError):
        await resumed.next_event(within=1)
    assert resumed.comments >= 1
    resumed.response.close()


async def test_a_quiet_stream_gets_keepalive_comments(api: Api) -> None:
    stream = await open_stream(api)
    with pytest.raises(TimeoutError):
        await stream.next_event(within=1.2)
    assert stream.comments >= 2  # every 0.3 s of silence
    stream.response.close()


async def test_a_stream_filtered_by_type_and_device_sends_only_those(api: Api) -> None:
    r = await api.client.get(
        "/v1/events/stream",
        params={"types": "device.revoked", "device_id": "f-2", "after": "0-0"},
        headers=api.op(),
    )
    assert r.status == 200
    stream = Sse(r)
    for i in range(3):
        await api.enroll(f"f-{i}")
        assert (await api.client.post(f"/v1/devices/f-{i}/revoke", headers=api.op())).status == 200
    event = await stream.next_event()
    assert event is not None and (event[1]["type"], event[1]["device_id"]) == ("device.revoked", "f-2")
    stream.response.close()


async def test_keepalives_keep_coming_while_a_lock_on_the_events_table_holds_the_read(api: Api) -> None:
    """As a retention job's lock does (timescale mode's first maintenance round, for one): the
    stream's read waits, its keepalive timer does not."""
    await api.enroll("held-0")
    locker = await asyncpg.connect(api.db_url)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        # From the start of the log: it reads at once, and that read waits for the lock.
        r = await api.client.get(
            "/v1/events/stream", params={"after": "0-0", "types": "device.enrolled"}, headers=api.op()
        )
        assert r.status == 200
        stream = Sse(r)
        with pytest.raises(TimeoutError):
            await stream.next_event(within=1.2)
        assert stream.comments >= 2  # every 0.3 s, though the read never returned
        await tx.rollback()
    finally:
        await locker.close()
    event = await stream.next_event()
    assert event is not None and event[1]["device_id"] == "held-0"
    stream.response.close()
