"""The HTTP ceiling: a trivial aiohttp handler in its own process, driven by the same load
generator as the service. It reads and decodes the JSON body and answers a small JSON object,
nothing else, so its requests/s is what aiohttp itself allows on this machine. It runs on the
event loop the service runs on (`TELEMETRY_EVENT_LOOP`, read through the service's settings),
so the ratio compares request paths, not loops.

`python benchmarks/ceiling_app.py --port P` prints `ceiling listening on http://127.0.0.1:P`.
"""

from __future__ import annotations

import argparse
import asyncio

import msgspec
from aiohttp import web

from service import event_loop
from service.settings import Settings

BODY = b'{"ok":true}'


async def accept(request: web.Request) -> web.Response:
    msgspec.json.decode(await request.read())
    return web.Response(body=BODY, content_type="application/json")


async def live(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/heartbeats", accept)
    app.router.add_get("/health/live", live)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"ceiling listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    event_loop.run(serve(parser.parse_args().port), Settings.from_env().event_loop)


if __name__ == "__main__":
    main()
