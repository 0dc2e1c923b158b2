"""The console's fixtures: operators with passwords on the `api` app, and the session's browser on it."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import pytest

from service.admin import create_operator, set_password
from tests.console.browser import Browser, driver  # noqa: F401 (the session's Chromium)
from tests.support.console import ADMIN, ADMIN_PASSWORD, VIEWER, VIEWER_PASSWORD


@dataclass
class Operators:
    viewer_token: str


@pytest.fixture
async def operators(api) -> Operators:  # type: ignore[no-untyped-def]
    """alice (admin, the `api` fixture's operator) and bob (viewer), both with passwords."""
    conn = await asyncpg.connect(api.db_url)
    try:
        await set_password(conn, ADMIN, ADMIN_PASSWORD)
        viewer_token = await create_operator(conn, VIEWER, role="viewer")
        await set_password(conn, VIEWER, VIEWER_PASSWORD)
    finally:
        await conn.close()
    return Operators(viewer_token)


@pytest.fixture
async def browser(api, operators, driver):  # type: ignore[no-untyped-def]  # noqa: F811
    """The session's Chromium on the `api` app's origin, with no cookie and no console entry
    left from an earlier test."""
    driver.delete_all_cookies()
    b = Browser(driver, str(api.client.make_url("")).rstrip("/"))
    await b.get("/console/login")  # cookies belong to the app's origin: clear them there too
    await b.run(driver.delete_all_cookies)
    await b.console()  # forget earlier tests' console entries
    return b
