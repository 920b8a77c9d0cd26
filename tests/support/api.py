"""A thin test driver for the HTTP API: users with tokens and the call endpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient


@dataclass(frozen=True)
class User:
    user_id: str
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Api:
    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    async def user(self, name: str) -> User:
        response = await self.client.post("/v1/dev/token", json={"name": name})
        assert response.status == 201, await response.text()
        body = await response.json()
        return User(body["user_id"], body["name"], body["token"])

    async def users(self, *names: str) -> list[User]:
        return [await self.user(name) for name in names]

    async def call(
        self,
        method: str,
        path: str,
        user: User | None,
        *,
        json: Any = None,
        expect: int | None = None,
    ) -> Any:
        headers = user.headers if user else {}
        response = await self.client.request(method, path, headers=headers, json=json)
        body = await response.json()
        if expect is not None:
            assert response.status == expect, (response.status, body)
        return body

    async def conversation(self, owner: User, *members: User) -> str:
        body = await self.call(
            "POST",
            "/v1/conversations",
            owner,
            json={"member_ids": [m.user_id for m in members]},
            expect=201,
        )
        return str(body["conversation_id"])

    async def initiate(
        self, caller: User, conversation_id: str, *callees: User, call_type: str = "video"
    ) -> dict[str, Any]:
        body: dict[str, Any] = await self.call(
            "POST",
            "/v1/calls/initiate",
            caller,
            expect=201,
            json={
                "call_type": call_type,
                "conversation_id": conversation_id,
                "callee_ids": [c.user_id for c in callees],
            },
        )
        return body

    async def group_call(self, caller: User, *callees: User) -> dict[str, Any]:
        conversation_id = await self.conversation(caller, *callees)
        return await self.initiate(caller, conversation_id, *callees)

    async def action(
        self, call_id: str, action: str, user: User, *, expect: int = 200
    ) -> dict[str, Any]:
        body: dict[str, Any] = await self.call(
            "POST", f"/v1/calls/{call_id}/{action}", user, expect=expect
        )
        return body

    async def status(self, call_id: str, user: User) -> dict[str, Any]:
        body: dict[str, Any] = await self.call("GET", f"/v1/calls/{call_id}", user, expect=200)
        return body


def error_code(body: dict[str, Any]) -> str:
    return str(body["error"]["code"])
