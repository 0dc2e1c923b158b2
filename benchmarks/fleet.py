"""The simulated fleet: device identities and credentials (enrolled over the real API), the
time layout of the history, and the request bodies devices and operators send.

Time layout of one run (t0 = when the mode's run starts):

    t0 - 2 d - expired ··· t0 - 2 d ·························· gap_start ··· t0 ··· now
    |  expired history  |           2-day history (pre-fill)          | live writes |

Pre-filled history stops at `gap_start`; writes that carry their own timestamps (batched
uploads, the half-ceiling phase) go into the gap, one fresh 10-second bucket per row and
device, so they are stored rather than absorbed by an existing bucket.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import msgspec

from service.db.buckets import bucket_start

BUCKET = timedelta(seconds=10)
GAP = timedelta(hours=3)
_encode = msgspec.json.encode

STATUSES = ("ok", "ok", "ok", "ok", "charging", "idle", "low_battery")
NETWORKS = ("wifi", "lte", "5g", "wifi", "wifi")


def device_id(tag: str, i: int) -> str:
    return f"dev-{tag}-{i:06d}"


def ingest_device_id(tag: str, i: int) -> str:
    return f"ingest-{tag}-{i:05d}"


def floor_bucket(ts: datetime) -> datetime:
    """The 10-second bucket the service stores `ts` in (its own computation)."""
    return bucket_start(ts, int(BUCKET.total_seconds()))


def heartbeat_record(
    rng: random.Random, device: str, ts: datetime, extras: Sequence[dict[str, Any] | None] = ()
) -> tuple[Any, ...]:
    """One `device_heartbeats` COPY record with random values, `bucket_start` as the service
    stores it; `extra` is drawn from `extras` (None without)."""
    return (
        device,
        floor_bucket(ts),
        ts,
        rng.choice(STATUSES),
        rng.randint(5, 100),
        "4.12.0",
        rng.choice(NETWORKS),
        rng.choice(extras) if extras else None,
    )


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    headers: dict[str, str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


@dataclass
class Timeline:
    t0: datetime
    window: timedelta = timedelta(days=2)
    expired: timedelta = timedelta(hours=6)

    @property
    def gap_start(self) -> datetime:
        return floor_bucket(self.t0 - GAP)

    @property
    def history_start(self) -> datetime:
        return floor_bucket(self.t0 - self.window - self.expired)

    @property
    def ingest_start(self) -> datetime:
        """Where batched-ingest devices (no pre-filled history) start writing: well inside the
        window, so no row is refused as too old while the run goes on."""
        return floor_bucket(self.t0 - self.window + timedelta(hours=2))


@dataclass
class BucketCursor:
    """Hands out consecutive fresh buckets per device from `start`, wrapping after `limit`
    (a wrapped bucket is absorbed by the row already there, which the results count)."""

    start: datetime
    limit: int
    _next: dict[str, int] = field(default_factory=dict)

    def take(self, device: str, n: int) -> list[datetime]:
        first = self.reserve(device, n)
        # A few seconds into each bucket, different per device, like real clocks.
        offset = timedelta(seconds=self.offset_seconds(device), milliseconds=(first * 37) % 1000)
        return [self.start + BUCKET * ((first + i) % self.limit) + offset for i in range(n)]

    def reserve(self, device: str, n: int) -> int:
        """The device's next `n` buckets are someone else's (the wrk script's): their first index."""
        first = self._next.get(device, 0)
        self._next[device] = first + n
        return first

    @staticmethod
    def offset_seconds(device: str) -> int:
        return zlib.crc32(device.encode()) % 10


def _heartbeat(rng: random.Random, ts: datetime | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": rng.choice(STATUSES),
        "battery_pct": rng.randint(5, 100),
        "app_version": "4.12.0",
        "network": rng.choice(NETWORKS),
    }
    if ts is not None:
        body["ts"] = ts.isoformat()
    return body


def heartbeat_body(rng: random.Random, ts: datetime | None = None) -> bytes:
    return _encode(_heartbeat(rng, ts))


def batch_body(rng: random.Random, stamps: list[datetime]) -> bytes:
    return _encode({"heartbeats": [_heartbeat(rng, ts) for ts in stamps]})


def dispatch_body(request_id: str, device: str) -> bytes:
    return _encode(
        {"request_id": request_id, "device_id": device, "action": "sync_config", "payload": {"rev": 7}}
    )


def download_body(rng: random.Random) -> bytes:
    return _encode(
        {
            "build_id": f"build-{rng.randint(1, 20)}",
            "outcome": rng.choice(("started", "completed", "completed", "failed")),
            "bytes_downloaded": rng.randint(1_000_000, 60_000_000),
        }
    )


async def enroll(
    base_url: str,
    operator_headers: dict[str, str],
    ids: list[str],
    *,
    concurrency: int = 32,
    advance: Callable[[int], None] | None = None,
) -> list[Device]:
    """Enroll every id through the API with one multi-use enrollment token; bounded by
    `len(ids)` requests, each with a timeout."""
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:
        async with session.post(
            "/v1/enrollment-tokens",
            data=_encode({"max_uses": max(len(ids), 1), "expires_in_seconds": 86400}),
            headers=operator_headers,
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"enrollment token: {resp.status} {await resp.text()}")
            token = (await resp.json())["token"]
        devices: list[Device | None] = [None] * len(ids)
        queue = iter(range(len(ids)))

        async def worker() -> None:
            for i in queue:
                body = _encode({"enrollment_token": token, "device_id": ids[i]})
                async with session.post(
                    "/v1/enroll", data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"enroll {ids[i]}: {resp.status} {await resp.text()}")
                    devices[i] = Device(ids[i], bearer((await resp.json())["device_token"]))
                if advance:
                    advance(1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [d for d in devices if d is not None]
