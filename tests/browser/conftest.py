"""Browser tests: a real ``huddle serve`` and Debian's headless Chromium via Playwright.

One server per test module (tests.support.serve: a subprocess on a free
127.0.0.1 port, SQLite in a temporary folder, dev mode, ICE restricted to
loopback), one Chromium per test,
one browser *context* per participant so each has its own fake camera,
microphone, storage and permissions. Missing Chromium or Playwright skips these
tests locally and fails them in CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser.support import Participant
from tests.support.serve import ServeProcess, huddle_serve

CHROMIUM = os.environ.get("HUDDLE_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]

#: Flags proven in shared/recipes/browser-tests.md. Playwright adds --headless,
#: --no-sandbox and --mute-audio itself; passing --disable-features would replace its list.
CHROMIUM_FLAGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
]


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"browser tests need {what} (CI=true: failing instead of skipping)")
    pytest.skip(f"browser tests need {what}")


@dataclass
class Server:
    """The module's ``huddle serve``, with a JSON client for the test's own requests."""

    serve: ServeProcess

    @property
    def base_url(self) -> str:
        return self.serve.base_url

    def log(self) -> str:
        return self.serve.log()

    def request(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base_url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            status = exc.code
        text = raw.decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``huddle serve`` in a subprocess (dev mode, SQLite, ICE on loopback)."""
    folder = tmp_path_factory.mktemp("huddle")
    with huddle_serve(
        folder,
        name="server",
        HUDDLE_DATABASE_URL=f"sqlite:///{folder}/h.db",
        HUDDLE_ICE_HOSTS="127.0.0.1",
        HUDDLE_MAX_PARTICIPANTS="3",
        HUDDLE_INITIATE_PER_MINUTE="1000",
    ) as serve:
        yield Server(serve)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for the whole test; participants are contexts in it."""
    if shutil.which(CHROMIUM) is None:
        _missing(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("the playwright Python package (pip install playwright)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def people(browser: Any, server: Server) -> AsyncIterator[list[Participant]]:
    """Participants created on demand by :func:`tests.browser.support.join_page`;
    on teardown every page's console errors are checked and contexts closed."""
    created: list[Participant] = []
    yield created
    errors = [f"{p.name}: {e}" for p in created for e in p.unexpected_console_errors()]
    for participant in created:
        with contextlib.suppress(Exception):
            await participant.context.close()
    assert not errors, "console errors:\n" + "\n".join(errors)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One retry for each real-browser test: three Chromiums and the server on two
    cores miss a bound now and then (a retry is reported as such; two failures fail)."""
    for item in items:
        if item.get_closest_marker("browser") is not None:
            item.add_marker(pytest.mark.flaky(reruns=1))
