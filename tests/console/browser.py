"""Headless Debian Chromium driven by Selenium, for the console's browser tests.

The service under test runs on the test's own event loop, so every WebDriver call (which
blocks) goes through a thread: `Browser` is the async face of one Chrome session.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# The browser's zone: not UTC, so times shown in the browser's zone differ from the server's.
BROWSER_TZ = "Asia/Kolkata"


def missing() -> str | None:
    """Why browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            return f"no {path}: install Debian's {package} (scripts/bootstrap.sh does as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the test extra)"
    return None


def start_driver() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, env={**os.environ, "TZ": BROWSER_TZ})
    return webdriver.Chrome(service=service, options=options)


@pytest.fixture(scope="session")
def driver() -> Any:
    reason = missing()
    if reason is not None:
        pytest.skip(f"browser tests skipped: {reason}")
    d = start_driver()
    try:
        yield d
    finally:
        d.quit()


@dataclass
class Browser:
    driver: Any
    base: str  # http://127.0.0.1:PORT

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(call, *args)

    async def get(self, path: str) -> None:
        await self.run(self.driver.get, self.base + path)

    async def path(self) -> str:
        url: str = await self.run(lambda: self.driver.current_url)
        return url.removeprefix(self.base)

    async def texts(self, css: str) -> list[str]:
        from selenium.webdriver.common.by import By

        return await self.run(lambda: [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, css)])

    async def text(self, css: str) -> str:
        (found,) = await self.texts(css)
        return found

    async def count(self, css: str) -> int:
        return len(await self.texts(css))

    async def fill(self, css: str, value: str) -> None:
        from selenium.webdriver.common.by import By

        def fill() -> None:
            element = self.driver.find_element(By.CSS_SELECTOR, css)
            element.clear()
            element.send_keys(value)

        await self.run(fill)

    async def select(self, css: str, value: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import Select

        await self.run(lambda: Select(self.driver.find_element(By.CSS_SELECTOR, css)).select_by_value(value))

    async def click(self, css: str, *, navigates: bool = True) -> None:
        """Click; when it `navigates`, return once the next page has replaced this one."""
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        def click() -> None:
            page = self.driver.find_element(By.TAG_NAME, "html")
            self.driver.find_element(By.CSS_SELECTOR, css).click()

            def replaced(_: Any) -> bool:
                try:
                    page.is_enabled()
                except StaleElementReferenceException:
                    return True
                except WebDriverException as exc:
                    # Chromium sometimes reports the old page's node this way instead of as stale.
                    if "does not belong to the document" in str(exc):
                        return True
                    raise
                return False

            if navigates:
                WebDriverWait(self.driver, 10).until(replaced)

        await self.run(click)

    async def script(self, js: str, *args: Any) -> Any:
        return await self.run(self.driver.execute_script, js, *args)

    async def async_script(self, js: str, *args: Any) -> Any:
        return await self.run(self.driver.execute_async_script, js, *args)

    async def post_with_page_csrf(self, path: str, fields: dict[str, str]) -> int:
        """POST `fields` to `path` by hand with the session's CSRF token (read from the page's
        logout form), as a script in the page could: the HTTP status the server answered."""
        js = (
            "const [path, fields, done] = arguments;"
            "const csrf = document.querySelector('input[name=csrf]').value;"
            "const body = new URLSearchParams({...fields, csrf});"
            "fetch(path, {method: 'POST', body}).then(r => done(r.status));"
        )
        status: int = await self.async_script(js, path, fields)
        return status

    async def assert_fits(self, width: int, paths: tuple[str, ...]) -> None:
        """Each of `paths` at `width` pixels needs no sideways scrolling (the window is 1280 again
        afterwards)."""
        await self.run(self.driver.set_window_size, width, 900)
        try:
            for path in paths:
                await self.get(path)
                overflow = await self.script(
                    "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, f"{path} is {overflow}px wider than {width}px"
        finally:
            await self.run(self.driver.set_window_size, 1280, 900)

    async def console(self) -> list[dict[str, Any]]:
        """The browser console's entries since the last call."""
        return await self.run(self.driver.get_log, "browser")

    async def alert_open(self) -> bool:
        from selenium.common.exceptions import NoAlertPresentException

        def check() -> bool:
            try:
                self.driver.switch_to.alert  # noqa: B018 (raises when there is none)
            except NoAlertPresentException:
                return False
            return True

        return await self.run(check)

    async def wait_for(self, predicate: Callable[[], Any], seconds: float = 10.0) -> None:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # An element found may be swapped out (htmx) before it is read: then look again.
        wait = WebDriverWait(self.driver, seconds, ignored_exceptions=(StaleElementReferenceException,))
        await self.run(lambda: wait.until(lambda _: predicate()))

    async def log_in(self, name: str, password: str) -> None:
        await self.get("/console/login")
        await self.fill("#username", name)
        await self.fill("#password", password)
        await self.click("#login")


async def beat(api: Any, token: str, **body: Any) -> None:
    """One heartbeat of the device holding `token`, committed."""
    r = await api.client.post("/v1/heartbeats", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status in (200, 201, 202), await r.text()


async def api_json(api: Any, path: str) -> Any:
    """The API's 200 answer to `GET path` as the `api` fixture's admin operator."""
    r = await api.client.get(path, headers=api.op())
    assert r.status == 200, await r.text()
    return await r.json()
