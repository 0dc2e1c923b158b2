"""The console's route table and its mounting on the service's app (`mount`)."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import aiohttp_jinja2
import jinja2
import msgspec
from aiohttp import web

from service.api.throttle import FailureThrottle
from service.console import admin, commands, devices, live, login, overview, rollouts
from service.console.access import page

STATIC = Path(__file__).parent / "static"


def mount(app: web.Application) -> None:
    """Serve the console under `/console/` on `app` (before the app starts)."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("service.console", "templates"),
        # Everything rendered is escaped unless a template says otherwise (none does).
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    env = aiohttp_jinja2.get_env(app)
    env.globals["static"] = lambda name: f"/console/static/{name}"
    env.globals["utc"] = UTC
    # JSON as text, escaped like any other text (Jinja's `tojson` is for script contexts and
    # shows `<` as `\u003c`).
    env.filters["json"] = lambda value: msgspec.json.encode(value).decode()
    app[login.LOGIN_THROTTLE] = FailureThrottle(limit=login.LOGIN_FAILURES, window=60.0)
    r = app.router
    r.add_get("/console/login", login.get_login)
    r.add_post("/console/login", login.post_login)
    r.add_post("/console/logout", page(login.post_logout))
    r.add_get("/console/", page(overview.get_overview))
    r.add_get("/console/overview/counts", page(overview.get_overview_counts))
    r.add_get("/console/events/stream", page(live.get_stream))
    r.add_get("/console/rollouts", page(rollouts.get_rollouts))
    r.add_get("/console/commands", page(commands.get_commands))
    r.add_get("/console/admin", page(admin.get_admin))
    r.add_post("/console/admin/enrollment-tokens", page(admin.post_enrollment_token, write=True))
    r.add_post("/console/commands/dispatch", page(commands.post_dispatch, write=True))
    r.add_post("/console/commands/bulk", page(commands.post_bulk, write=True))
    r.add_get("/console/commands/bulk/{bulk_id}", page(commands.get_bulk))
    r.add_post("/console/commands/bulk/{bulk_id}/cancel", page(commands.post_bulk_cancel, write=True))
    r.add_get("/console/devices", page(devices.get_devices))
    r.add_get("/console/devices/{device_id}", page(devices.get_device))
    r.add_post("/console/devices/{device_id}/dispatch", page(devices.post_dispatch, write=True))
    r.add_post("/console/devices/{device_id}/revoke", page(devices.post_revoke, write=True))
    r.add_post("/console/devices/{device_id}/reinstate", page(devices.post_reinstate, write=True))
    r.add_static("/console/static/", STATIC, append_version=True)
