"""Huddle's side of the coturn tests: credentials from the real HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.config import Config, TurnSettings
from tests.turn.coturn import Coturn

JWT_SECRET = "coturn-test-jwt-secret-long-enough-for-hs256"


async def huddle_credentials(coturn: Coturn, tmp_path: Path, transport: str) -> dict[str, Any]:
    """Ask Huddle's HTTP API for TURN credentials, as a browser would."""
    config = Config(
        port=0,
        database_url=f"sqlite:///{tmp_path / 'huddle.db'}",
        jwt_secret=JWT_SECRET,
        dev_mode=True,
        turn=TurnSettings(uris=(coturn.uri(transport),), secret=coturn.secret, ttl_s=600),
    )
    async with TestClient(TestServer(create_app(config))) as client:
        response = await client.post("/v1/dev/token", json={"name": "ana"})
        assert response.status == 201
        token = (await response.json())["token"]
        response = await client.get(
            "/v1/turn/credentials", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
    assert body["uris"] == [coturn.uri(transport)]
    return body
