"""A server on a veth pair's address and a Chromium in the pair's namespace.

Fixtures for the tests of a browser on its own link (tests/browser/netlink.py):
a weak downlink (test_adaptation), a network change (test_network_change).
Import them into the test module (``link``, ``server``, ``browsers``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import netlink
from tests.browser.conftest import CHROMIUM, CHROMIUM_FLAGS, Server, _missing
from tests.browser.support import Participant
from tests.support.serve import huddle_serve


@pytest.fixture(scope="module")
def link() -> Iterator[netlink.Link]:
    why = netlink.available()
    if why is not None:
        _missing(why)
    if not os.path.exists(CHROMIUM):
        _missing(f"Chromium at {CHROMIUM}")
    with netlink.constrained_namespace() as made:
        yield made


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, link: netlink.Link) -> Iterator[Server]:
    """``huddle serve`` on the veth pair's address (its ICE candidates too)."""
    folder = tmp_path_factory.mktemp("huddle")
    with huddle_serve(
        folder,
        name="server",
        HUDDLE_HOST=link.server_ip,
        HUDDLE_DEV="1",  # dev tokens on purpose: only this test's veth pair reaches it
        HUDDLE_DATABASE_URL=f"sqlite:///{folder}/h.db",
        HUDDLE_ICE_HOSTS=link.server_ip,
        HUDDLE_MAX_PARTICIPANTS="3",
        HUDDLE_TRANSPORT_CC="1",  # the send-side estimate (the default, pinned here)
        HUDDLE_INITIATE_PER_MINUTE="1000",
    ) as serve:
        yield Server(serve)


@pytest.fixture
async def browsers(
    server: Server, link: netlink.Link, tmp_path: Path
) -> AsyncIterator[tuple[Any, Any]]:
    """(a Chromium here, a Chromium in the namespace), both treating the server as secure."""
    from playwright.async_api import async_playwright

    flags = [*CHROMIUM_FLAGS, f"--unsafely-treat-insecure-origin-as-secure={server.base_url}"]
    async with async_playwright() as playwright:
        near = await playwright.chromium.launch(executable_path=CHROMIUM, args=flags, headless=True)
        far = await playwright.chromium.launch(
            executable_path=str(link.wrapper(tmp_path, CHROMIUM)), args=flags, headless=True
        )
        try:
            yield near, far
        finally:
            await far.close()
            await near.close()


async def video_of(viewer: Participant, source_id: str) -> tuple[int, int]:
    """(frames decoded, frame height) of ``source_id``'s video at ``viewer``."""
    remote = (await viewer.stats()).get(source_id)
    if not remote:
        return 0, 0
    return int(remote["video"]["framesDecoded"]), int(remote["video"].get("frameHeight") or 0)
