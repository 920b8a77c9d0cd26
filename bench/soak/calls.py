"""Calls cycled through the whole lifecycle at a bounded rate, over HTTP and signaling.

Each cycle is one scenario, in a fixed rotation:

- ``complete``: initiate, join, both open the signaling socket (``participants``
  and ``mode`` arrive), ``ping``/``pong``, the callee leaves over the socket
  (closed with 1000), the caller leaves over HTTP: the call ends ``completed``
  and the caller's socket closes with 1000;
- ``end``: initiate, join, the callee's socket is open, the caller ends the
  call for all: the socket gets ``call_ended`` and closes;
- ``decline``: initiate, the callee declines: the call ends;
- ``errors``: a second join (409), a malformed id (400), no token (401), then
  end, and join/leave of the ended call (410);
- ``dropped``: the callee's socket drops without a leave, the caller leaves:
  the server itself leaves the callee after the disconnect grace;
- ``unanswered``: initiate and walk away: the ringing timeout ends it.

Every request states the status it must get; anything else (a 5xx, a
timeout, a wrong 4xx, a socket that does not behave) is an *error*. Every
call is checked ended at the end (:meth:`CallCycler.unended`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from signaling.client import SignalingClient

SCENARIOS = ("complete", "end", "decline", "errors", "complete", "dropped", "unanswered")
REQUEST_TIMEOUT_S = 15.0


class CycleError(Exception):
    """A request or socket did not do what the lifecycle says."""


@dataclass
class _User:
    user_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class _Pair:
    caller: _User
    callee: _User
    conversation_id: str


@dataclass
class CallStats:
    started: int = 0
    completed: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    request_errors: int = 0
    latencies_s: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # the first few, for the report

    def record_error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


class CallCycler:
    """Runs scenarios against ``base_url`` with ``concurrency`` pairs, ``rate`` cycles/s at most."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, *, concurrency: int, rate: float
    ) -> None:
        if concurrency < 1 or rate <= 0:
            raise ValueError("concurrency must be >= 1 and rate > 0")
        self._session = session
        self._base = base_url.rstrip("/")
        self._concurrency = concurrency
        self._interval = 1.0 / rate
        self._next_start = 0.0
        self._pace = asyncio.Lock()
        self._rotation = 0
        self._pairs: list[_Pair] = []
        self.call_ids: list[tuple[str, _User]] = []
        self.stats = CallStats()

    # --- requests ------------------------------------------------------------

    async def _request(
        self,
        op: str,
        method: str,
        path: str,
        user: _User | None,
        expect: int,
        body: Any = None,
        code: str | None = None,
    ) -> dict[str, Any]:
        """One timed request; raises :class:`CycleError` unless it answered ``expect``."""
        stats = self.stats
        stats.requests += 1
        headers = user.headers if user is not None else {}
        started = time.perf_counter()
        try:
            async with self._session.request(
                method,
                self._base + path,
                headers=headers,
                json=body,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            ) as response:
                status = response.status
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            stats.request_errors += 1
            raise CycleError(f"{op}: {type(exc).__name__}: {exc}") from exc
        finally:
            stats.latencies_s.setdefault(op, []).append(time.perf_counter() - started)
        got_code = payload.get("error", {}).get("code") if isinstance(payload, dict) else None
        if status != expect or (code is not None and got_code != code):
            stats.request_errors += 1
            raise CycleError(f"{op}: {status} {got_code or ''} (expected {expect} {code or ''})")
        return payload if isinstance(payload, dict) else {}

    async def _socket(self, call_id: str, user: _User) -> SignalingClient:
        started = time.perf_counter()
        try:
            client = await SignalingClient.open(
                self._base, call_id, user.token, session=self._session
            )
            await client.receive("participants", timeout=REQUEST_TIMEOUT_S)
            await client.receive("mode", timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:
            raise CycleError(f"socket: {type(exc).__name__}: {exc}") from exc
        finally:
            self.stats.latencies_s.setdefault("ws_connect", []).append(
                time.perf_counter() - started
            )
        return client

    # --- setup ---------------------------------------------------------------

    async def _user(self, name: str) -> _User:
        body = await self._request("dev_token", "POST", "/v1/dev/token", None, 201, {"name": name})
        return _User(body["user_id"], body["token"])

    async def prepare(self) -> None:
        """Identities and one conversation per concurrent pair."""
        for i in range(self._concurrency):
            caller = await self._user(f"soak-caller-{i}")
            callee = await self._user(f"soak-callee-{i}")
            conversation = await self._request(
                "conversation",
                "POST",
                "/v1/conversations",
                caller,
                201,
                {"member_ids": [callee.user_id]},
            )
            self._pairs.append(_Pair(caller, callee, conversation["conversation_id"]))

    # --- the scenarios -------------------------------------------------------

    async def _initiate(self, pair: _Pair) -> str:
        call = await self._request(
            "initiate",
            "POST",
            "/v1/calls/initiate",
            pair.caller,
            201,
            {
                "call_type": "video",
                "conversation_id": pair.conversation_id,
                "callee_ids": [pair.callee.user_id],
            },
        )
        call_id = str(call["call_id"])
        self.call_ids.append((call_id, pair.caller))
        return call_id

    async def _complete(self, pair: _Pair) -> None:
        call_id = await self._initiate(pair)
        await self._request("join", "POST", f"/v1/calls/{call_id}/join", pair.callee, 200)
        caller_ws = await self._socket(call_id, pair.caller)
        try:
            callee_ws = await self._socket(call_id, pair.callee)
            try:
                await callee_ws.send({"type": "ping", "id": 1})
                await callee_ws.receive("pong", timeout=REQUEST_TIMEOUT_S)
                await callee_ws.send({"type": "leave"})
                code = await callee_ws.wait_closed(REQUEST_TIMEOUT_S)
                if code != 1000:
                    raise CycleError(f"socket leave: closed with {code}, expected 1000")
            finally:
                await callee_ws.close()
            await caller_ws.receive("leave", timeout=REQUEST_TIMEOUT_S)
            call = await self._request(
                "leave", "POST", f"/v1/calls/{call_id}/leave", pair.caller, 200
            )
            if call.get("status") != "ended" or call.get("end_reason") != "completed":
                raise CycleError(f"last leave: {call.get('status')} {call.get('end_reason')}")
            # Its own leave closes the caller's socket (with or without call_ended first).
            code = await caller_ws.wait_closed(REQUEST_TIMEOUT_S)
            if code != 1000:
                raise CycleError(f"caller socket after the last leave: closed with {code}")
        finally:
            await caller_ws.close()

    async def _end(self, pair: _Pair) -> None:
        call_id = await self._initiate(pair)
        await self._request("join", "POST", f"/v1/calls/{call_id}/join", pair.callee, 200)
        callee_ws = await self._socket(call_id, pair.callee)
        try:
            await self._request("end", "POST", f"/v1/calls/{call_id}/end", pair.caller, 200)
            await callee_ws.receive("call_ended", timeout=REQUEST_TIMEOUT_S)
            code = await callee_ws.wait_closed(REQUEST_TIMEOUT_S)
            if code != 1000:
                raise CycleError(f"after call_ended: closed with {code}, expected 1000")
        finally:
            await callee_ws.close()

    async def _decline(self, pair: _Pair) -> None:
        call_id = await self._initiate(pair)
        await self._request("decline", "POST", f"/v1/calls/{call_id}/decline", pair.callee, 200)
        call = await self._request("status", "GET", f"/v1/calls/{call_id}", pair.caller, 200)
        if call.get("status") != "ended":
            raise CycleError(f"declined call is {call.get('status')}")

    async def _errors(self, pair: _Pair) -> None:
        call_id = await self._initiate(pair)
        join = f"/v1/calls/{call_id}/join"
        await self._request("join", "POST", join, pair.callee, 200)
        await self._request("join", "POST", join, pair.callee, 409, code="already_joined")
        await self._request(
            "join", "POST", "/v1/calls/not-a-call/join", pair.callee, 400, code="invalid_id"
        )
        await self._request("status", "GET", f"/v1/calls/{call_id}", None, 401)
        await self._request("join", "POST", f"/v1/calls/{uuid.uuid4()}/join", pair.callee, 404)
        await self._request("end", "POST", f"/v1/calls/{call_id}/end", pair.caller, 200)
        await self._request("join", "POST", join, pair.callee, 410, code="call_ended")
        await self._request(
            "leave", "POST", f"/v1/calls/{call_id}/leave", pair.callee, 410, code="call_ended"
        )

    async def _dropped(self, pair: _Pair) -> None:
        call_id = await self._initiate(pair)
        await self._request("join", "POST", f"/v1/calls/{call_id}/join", pair.callee, 200)
        callee_ws = await self._socket(call_id, pair.callee)
        await callee_ws.close()  # no leave: the grace period runs out on the server
        await self._request("leave", "POST", f"/v1/calls/{call_id}/leave", pair.caller, 200)

    async def _unanswered(self, pair: _Pair) -> None:
        await self._initiate(pair)  # the ringing timeout ends it

    # --- driving -------------------------------------------------------------

    async def _paced(self) -> None:
        async with self._pace:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)

    async def _worker(self, pair: _Pair, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._paced()
            if stop.is_set():
                return
            scenario = SCENARIOS[self._rotation % len(SCENARIOS)]
            self._rotation += 1
            self.stats.started += 1
            try:
                await getattr(self, "_" + scenario)(pair)
            except Exception as exc:  # a socket that closed early, a timeout, ...
                self.stats.failed[scenario] += 1
                text = str(exc) if isinstance(exc, CycleError) else f"{type(exc).__name__}: {exc}"
                self.stats.record_error(f"{scenario}: {text}")
            else:
                self.stats.completed[scenario] += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle until ``stop`` is set; returns once every cycle in flight finished."""
        await asyncio.gather(*(self._worker(pair, stop) for pair in self._pairs))

    async def unended(self, limit: int = 8) -> list[str]:
        """Ids of this run's calls not ended (each asked with its caller's token)."""
        found: list[str] = []
        gate = asyncio.Semaphore(limit)

        async def check(call_id: str, caller: _User) -> None:
            async with gate:
                try:
                    call = await self._request(
                        "final_status", "GET", f"/v1/calls/{call_id}", caller, 200
                    )
                except CycleError as exc:
                    self.stats.record_error(f"final status: {exc}")
                    found.append(call_id)
                    return
                if call.get("status") != "ended":
                    found.append(call_id)

        await asyncio.gather(*(check(call_id, caller) for call_id, caller in self.call_ids))
        return found
