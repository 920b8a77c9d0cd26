"""The authorization matrix: every call endpoint x actor x call state, asserted.

Actors, relative to one call in one conversation:

* ``no_token``, ``bad_token``: no or a forged bearer token;
* ``stranger``: a valid user outside the conversation;
* ``member``: in the conversation, not invited to the call;
* ``invitee``: invited, has neither joined nor declined;
* ``joined``: a callee in the call right now;
* ``left``: a callee who joined and left;
* ``caller``: who initiated it (joined from initiation, still in).

States: ``ringing`` (nobody answered: ``joined`` and ``left`` cannot exist),
``active`` (``joined`` and ``left`` as above) and ``ended`` (the caller ended
the active call; every role is as it was before). Every mutating cell runs on a
call of its own, so no cell depends on another. Runs on SQLite and Postgres.
The rules are those of docs/api.md, "Authorization rules".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from signaling.client import SignalingClient, SignalingRejected
from tests.conftest import AppFactory
from tests.support.api import Api, User

ACTORS = ("no_token", "bad_token", "stranger", "member", "invitee", "joined", "left", "caller")
STATES = ("ringing", "active", "ended")
ROLES_IN = {
    "ringing": {"member", "invitee", "caller"},
    "active": {"member", "invitee", "joined", "left", "caller"},
    "ended": {"member", "invitee", "joined", "left", "caller"},
}

Expect = Callable[[str, str], int]  # (actor, state) -> HTTP status


def _auth(rule: Expect) -> Expect:
    """401 for a missing or forged token, before anything else."""

    def expect(actor: str, state: str) -> int:
        return 401 if actor in ("no_token", "bad_token") else rule(actor, state)

    return expect


@_auth
def read_status(actor: str, state: str) -> int:
    return 403 if actor in ("stranger", "member") else 200


@_auth
def join(actor: str, state: str) -> int:
    if actor in ("stranger", "member"):
        return 403
    if state == "ended":
        return 410
    return 409 if actor in ("joined", "caller") else 200  # a left callee rejoins


@_auth
def invite(actor: str, state: str) -> int:
    if actor in ("stranger", "member"):
        return 403
    if state == "ended":
        return 410
    return 200 if actor in ("joined", "caller") else 403


@_auth
def decline(actor: str, state: str) -> int:
    if actor in ("stranger", "member", "caller"):
        return 403
    if state == "ended":
        return 410
    return 200 if actor == "invitee" else 409  # who joined leaves instead


@_auth
def leave(actor: str, state: str) -> int:
    if actor in ("stranger", "member"):
        return 403
    if state == "ended":
        return 410
    return 200 if actor in ("joined", "caller") else 409


@_auth
def end(actor: str, state: str) -> int:
    if actor in ("stranger", "member"):
        return 403
    if state == "ended":
        return 410
    return 200 if actor in ("joined", "caller") else 403  # a left caller may not either


@_auth
def history(actor: str, state: str) -> int:
    return 403 if actor == "stranger" else 200


@_auth
def ringing_list(actor: str, state: str) -> int:
    return 200


@_auth
def read_conversation(actor: str, state: str) -> int:
    return 403 if actor == "stranger" else 200


@_auth
def initiate(actor: str, state: str) -> int:
    return 403 if actor == "stranger" else 201


@_auth
def signaling(actor: str, state: str) -> int:
    if actor in ("stranger", "member"):
        return 403
    if state == "ended":
        return 410
    return 101 if actor in ("joined", "caller") else 403  # join over HTTP first


@dataclass
class Scene:
    call_id: str
    conversation_id: str
    users: dict[str, User]


class Matrix:
    def __init__(self, api: Api, users: dict[str, User], conversation_id: str) -> None:
        self.api = api
        self.users = users
        self.conversation_id = conversation_id

    async def scene(self, state: str) -> Scene:
        u = self.users
        call = await self.api.initiate(
            u["caller"], self.conversation_id, u["joined"], u["left"], u["invitee"]
        )
        call_id = call["call_id"]
        if state in ("active", "ended"):
            await self.api.action(call_id, "join", u["joined"])
            await self.api.action(call_id, "join", u["left"])
            await self.api.action(call_id, "leave", u["left"])
        if state == "ended":
            await self.api.action(call_id, "end", u["caller"])
        return Scene(call_id, self.conversation_id, u)

    def headers(self, actor: str) -> dict[str, str]:
        if actor == "no_token":
            return {}
        if actor == "bad_token":
            return {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.forged-signature"}
        return self.users[actor].headers

    async def request(
        self, method: str, path: str, actor: str, json: Any = None
    ) -> tuple[int, Any]:
        response = await self.api.client.request(
            method, path, headers=self.headers(actor), json=json
        )
        body = await response.json()
        if response.status >= 400:
            assert set(body["error"]) == {"code", "message"}, body
        return response.status, body


async def _run_matrix(api: Api) -> list[str]:
    names = ("caller", "joined", "left", "invitee", "member", "stranger")
    users = {name: await api.user(name) for name in names}
    conversation_id = await api.conversation(
        users["caller"], *(users[n] for n in names if n not in ("caller", "stranger"))
    )
    m = Matrix(api, users, conversation_id)
    failures: list[str] = []
    cells = 0

    def check(endpoint: str, actor: str, state: str, got: int, want: int, body: Any) -> None:
        nonlocal cells
        cells += 1
        if got != want:
            failures.append(f"{endpoint} {actor}@{state}: {got} != {want} {body}")

    actions: dict[str, tuple[Expect, Callable[[Scene], Any]]] = {
        "join": (join, lambda s: None),
        "invite": (invite, lambda s: {"callee_ids": [s.users["member"].user_id]}),
        "decline": (decline, lambda s: None),
        "leave": (leave, lambda s: None),
        "end": (end, lambda s: None),
    }
    for state in STATES:
        actors = [
            a for a in ACTORS if a in ("no_token", "bad_token", "stranger") or a in ROLES_IN[state]
        ]
        # Reads share one scene per state: they change nothing.
        shared = await m.scene(state)
        for actor in actors:
            got, body = await m.request("GET", f"/v1/calls/{shared.call_id}", actor)
            check("GET /v1/calls/{id}", actor, state, got, read_status(actor, state), body)

            got, body = await m.request(
                "GET", f"/v1/calls?conversation_id={conversation_id}&limit=200", actor
            )
            check("GET /v1/calls?conversation_id", actor, state, got, history(actor, state), body)
            if got == 200:
                listed = shared.call_id in {c["call_id"] for c in body["calls"]}
                want_listed = actor not in ("member",)
                if listed != want_listed:
                    failures.append(f"history {actor}@{state}: listed={listed}")

            got, body = await m.request("GET", "/v1/calls?status=ringing", actor)
            check(
                "GET /v1/calls?status=ringing", actor, state, got, ringing_list(actor, state), body
            )
            if got == 200:
                listed = shared.call_id in {c["call_id"] for c in body["calls"]}
                want_listed = actor == "invitee" and state != "ended"
                if listed != want_listed:
                    failures.append(f"ringing list {actor}@{state}: listed={listed}")

            got, body = await m.request("GET", f"/v1/conversations/{conversation_id}", actor)
            check(
                "GET /v1/conversations/{id}",
                actor,
                state,
                got,
                read_conversation(actor, state),
                body,
            )

        for endpoint, (expect, payload) in actions.items():
            for actor in actors:
                scene = await m.scene(state)  # a call of its own: the action may change it
                got, body = await m.request(
                    "POST", f"/v1/calls/{scene.call_id}/{endpoint}", actor, json=payload(scene)
                )
                check(f"POST {endpoint}", actor, state, got, expect(actor, state), body)

        for actor in actors:  # the signaling WebSocket's upgrade
            scene = await m.scene(state)
            token = {"no_token": "", "bad_token": "forged.token.value"}.get(actor)
            if token is None:
                token = users[actor].token
            try:
                client = await SignalingClient.open(
                    str(api.client.make_url("/")), scene.call_id, token, timeout=5
                )
            except SignalingRejected as exc:
                got = exc.status
            else:
                got = 101
                await client.close()
            check("WS /v1/calls/ws/signaling", actor, state, got, signaling(actor, state), None)

        if state == "ringing":  # initiating does not depend on another call's state
            for actor in ACTORS:
                callee = users["caller"] if actor != "caller" else users["invitee"]
                got, body = await m.request(
                    "POST",
                    "/v1/calls/initiate",
                    actor,
                    json={
                        "call_type": "audio",
                        "conversation_id": conversation_id,
                        "callee_ids": [callee.user_id],
                    },
                )
                check("POST /v1/calls/initiate", actor, "any", got, initiate(actor, state), body)
    assert cells >= 200, cells
    return failures


async def test_authorization_matrix(make_client: AppFactory) -> None:
    api = Api(await make_client(initiate_per_minute=100_000))
    failures = await _run_matrix(api)
    assert not failures, "\n".join(failures)
