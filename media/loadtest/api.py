"""The HTTP API calls of a load run: identities, conversations, calls, join/leave."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from server.auth import TokenService


@dataclass(frozen=True)
class Identity:
    """A user the load tester acts as."""

    user_id: str
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class ApiError(Exception):
    """The server answered an API call with an error status."""

    def __init__(self, method: str, path: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {code}: {message}")
        self.status = status
        self.code = code


class HuddleApi:
    """Just the endpoints of ``docs/api.md`` a load run needs.

    Identities come from ``POST /v1/dev/token`` (dev mode) or, when ``secret``
    is given, are minted locally with :class:`server.auth.TokenService` (the
    server's ``HUDDLE_JWT_SECRET``), as an operator's login would.
    """

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        secret: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._tokens = TokenService(secret) if secret else None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def request(
        self, method: str, path: str, who: Identity | None = None, body: Any = None
    ) -> Any:
        headers = who.headers if who is not None else {}
        async with self._session.request(
            method, self.base_url + path, json=body, headers=headers, timeout=self._timeout
        ) as response:
            text = await response.text()
            try:
                payload = await response.json(content_type=None) if text else None
            except ValueError:
                payload = None
            if response.status >= 400:
                error = payload.get("error", {}) if isinstance(payload, dict) else {}
                raise ApiError(
                    method,
                    path,
                    response.status,
                    str(error.get("code", "http_error")),
                    str(error.get("message", text[:200])),
                )
            return payload

    async def identity(self, name: str) -> Identity:
        if self._tokens is not None:
            user_id, token = self._tokens.new_user(name)
            return Identity(user_id, name, token)
        body = await self.request("POST", "/v1/dev/token", body={"name": name})
        return Identity(str(body["user_id"]), name, str(body["token"]))

    async def conversation(self, owner: Identity, members: list[Identity], title: str) -> str:
        body = await self.request(
            "POST",
            "/v1/conversations",
            owner,
            {"member_ids": [m.user_id for m in members], "title": title},
        )
        return str(body["conversation_id"])

    async def initiate(
        self, caller: Identity, conversation_id: str, callees: list[Identity], *, video: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = await self.request(
            "POST",
            "/v1/calls/initiate",
            caller,
            {
                "call_type": "video" if video else "audio",
                "conversation_id": conversation_id,
                "callee_ids": [c.user_id for c in callees],
            },
        )
        return body

    async def join(self, call_id: str, who: Identity) -> dict[str, Any]:
        body: dict[str, Any] = await self.request("POST", f"/v1/calls/{call_id}/join", who)
        return body

    async def leave(self, call_id: str, who: Identity) -> None:
        await self.request("POST", f"/v1/calls/{call_id}/leave", who)

    async def metrics_text(self) -> str:
        async with self._session.get(self.base_url + "/metrics", timeout=self._timeout) as r:
            if r.status != 200:
                raise ApiError("GET", "/metrics", r.status, "http_error", "")
            return await r.text()
