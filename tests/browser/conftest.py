"""Browser tests: a real ``huddle serve`` and Debian's headless Chromium via Playwright.

One server per test module (a subprocess on a free 127.0.0.1 port, SQLite in a
temporary folder, dev mode, ICE restricted to loopback), one Chromium per test,
one browser *context* per participant so each has its own fake camera,
microphone, storage and permissions. Missing Chromium or Playwright skips these
tests locally and fails them in CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser.support import Participant

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

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
    """``huddle serve`` in a subprocess; SIGTERM (by its PID) at the end."""
    folder = tmp_path_factory.mktemp("huddle")
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("HUDDLE_") or key == "HUDDLE_CHROMIUM"
    }
    env.update(
        HUDDLE_HOST="127.0.0.1",
        HUDDLE_PORT=str(port),
        HUDDLE_DATABASE_URL=f"sqlite:///{folder}/h.db",
        HUDDLE_ICE_HOSTS="127.0.0.1",
        HUDDLE_MAX_PARTICIPANTS="3",
        HUDDLE_INITIATE_PER_MINUTE="1000",
        PYTHONUNBUFFERED="1",
    )
    log_path = folder / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"huddle serve exited with {process.returncode}:\n{server.log()}")
            with contextlib.suppress(OSError):
                status, _ = server.request("GET", "/health")
                if status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"huddle serve did not become healthy:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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
