"""A real local webhook receiver for the tests and the benchmark: an aiohttp server that verifies
every request's signature with `standardwebhooks` (a forged or unsigned one is answered 401 and
counted), records what it got, and answers as told (a status and headers per request, a delay,
or nothing at all while it is stopped; it comes back on the same port)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.db.embedded import free_port


@dataclass
class Received:
    webhook_id: str
    payload: dict[str, Any]
    at: float  # time.monotonic() when it arrived
    status: int  # what was answered


@dataclass
class Receiver:
    secret: str = ""
    # Answers for the next requests, in order (then `default`): (status, headers).
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    default: tuple[int, dict[str, str]] = (200, {})
    delay: float = 0.0  # seconds before answering
    error_body: str = "no " * 600  # what a non-2xx answer says
    received: list[Received] = field(default_factory=list)
    forged: int = 0
    port: int = field(default_factory=free_port)
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.forged += 1
            return web.Response(status=401)
        if self.delay:
            await asyncio.sleep(self.delay)
        status, headers = self.answers.pop(0) if self.answers else self.default
        self.received.append(Received(request.headers["webhook-id"], payload, time.monotonic(), status))
        self._arrived.set()
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else self.error_body)

    def delivered_ids(self) -> Counter[str]:
        """webhook-id → how many times it was answered 2xx."""
        return Counter(r.webhook_id for r in self.received if 200 <= r.status < 300)

    async def until(self, condition: Any, within: float = 20.0) -> None:
        """Until `condition()` holds (checked at each arrival and every 50 ms), or fail."""
        async with asyncio.timeout(within):
            while not condition():
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), 0.05)
