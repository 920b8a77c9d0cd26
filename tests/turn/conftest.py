"""Fixtures for the TURN tests: the real coturn, ICE host candidates on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aioice.ice
import pytest

from tests.turn.coturn import Coturn, run_coturn


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice never offers 127.0.0.1 as a host address: make it the only one."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture
async def coturn(tmp_path: Path) -> AsyncIterator[Coturn]:
    """coturn with turn/turnserver.conf and the loopback test overlay."""
    async with run_coturn(tmp_path / "coturn") as server:
        yield server
