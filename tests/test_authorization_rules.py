"""The authorization rules chosen for the lifecycle (docs/api.md, "Authorization
rules"), and the ringing list a client reads after a reconnect."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.config import ConfigError, MembershipSettings, load_config
from server.notify import verify
from tests.conftest import AppFactory, FakeClock, make_config
from tests.support.api import Api, error_code

MEMBERSHIP_SECRET = "membership-secret-for-tests"


async def _ringing(api: Api, user: Any) -> list[str]:
    body = await api.call("GET", "/v1/calls?status=ringing", user, expect=200)
    return [c["call_id"] for c in body["calls"]]


async def test_ringing_lists_the_calls_a_user_may_still_answer(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana, bob, carl, dan = await api.users("ana", "bob", "carl", "dan")
    group = await api.group_call(ana, bob, carl)
    other = await api.group_call(dan, bob)
    assert set(await _ringing(api, bob)) == {group["call_id"], other["call_id"]}
    assert await _ringing(api, carl) == [group["call_id"]]
    assert await _ringing(api, ana) == []  # the caller is joined, nothing rings for it

    await api.action(group["call_id"], "join", bob)
    assert await _ringing(api, bob) == [other["call_id"]]
    # Answered by bob, the group call is active, and still ringing for carl.
    [still] = (await api.call("GET", "/v1/calls?status=ringing", carl, expect=200))["calls"]
    assert still["call_id"] == group["call_id"] and still["status"] == "active"

    await api.action(group["call_id"], "decline", carl)
    assert await _ringing(api, carl) == []
    await api.action(other["call_id"], "end", dan)
    assert await _ringing(api, bob) == []  # ended calls ring for no one


async def test_ringing_query_is_validated(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana, bob = await api.users("ana", "bob")
    conversation_id = await api.conversation(ana, bob)
    for query in (
        "status=active",
        f"status=ringing&conversation_id={conversation_id}",
        "status=ringing&before=2026-01-01T00:00:00Z",
    ):
        body = await api.call("GET", f"/v1/calls?{query}", ana, expect=400)
        assert error_code(body) == "invalid_field"
    assert error_code(await api.call("GET", "/v1/calls?status=ringing", None, expect=401)) == (
        "token_missing"
    )


async def test_only_invitees_read_a_call_and_history_shows_their_calls(
    make_client: AppFactory, clock: FakeClock
) -> None:
    api = Api(await make_client())
    ana, bob, carl = await api.users("ana", "bob", "carl")
    conversation_id = await api.conversation(ana, bob, carl)
    private = await api.initiate(ana, conversation_id, bob)
    clock.advance(1)  # history is newest first
    everyone = await api.initiate(ana, conversation_id, bob, carl)

    body = await api.call("GET", f"/v1/calls/{private['call_id']}", carl, expect=403)
    assert error_code(body) == "not_invited"
    assert (await api.status(everyone["call_id"], carl))["status"] == "ringing"

    def ids(body: dict[str, Any]) -> list[str]:
        return [c["call_id"] for c in body["calls"]]

    history = f"/v1/calls?conversation_id={conversation_id}"
    assert ids(await api.call("GET", history, carl, expect=200)) == [everyone["call_id"]]
    assert ids(await api.call("GET", history, bob, expect=200)) == [
        everyone["call_id"],
        private["call_id"],
    ]


async def test_a_caller_who_left_cannot_end_the_call_for_all(make_client: AppFactory) -> None:
    api = Api(await make_client())
    ana, bob, carl = await api.users("ana", "bob", "carl")
    call = await api.group_call(ana, bob, carl)
    await api.action(call["call_id"], "join", bob)
    await api.action(call["call_id"], "join", carl)
    await api.action(call["call_id"], "leave", ana)
    refused = await api.action(call["call_id"], "end", ana, expect=403)
    assert error_code(refused) == "not_joined"
    assert (await api.status(call["call_id"], bob))["status"] == "active"
    # Rejoining makes it a joined participant again, who may end it.
    await api.action(call["call_id"], "join", ana)
    assert (await api.action(call["call_id"], "end", ana))["status"] == "ended"


async def test_membership_hook_decides_who_may_be_in_a_conversation(
    make_client: AppFactory, database_url: str
) -> None:
    allowed: set[str] = set()
    asked: list[dict[str, Any]] = []
    answer = {"down": False}

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        assert request.headers["X-Huddle-Event"] == "conversation.create"
        assert verify(
            MEMBERSHIP_SECRET,
            request.headers["X-Huddle-Timestamp"],
            body,
            request.headers["X-Huddle-Signature"],
        )
        asked.append(json.loads(body))
        if answer["down"]:
            return web.Response(status=502)
        members = set(json.loads(body)["member_ids"])
        return web.Response(status=204 if members <= allowed else 403)

    receiver_app = web.Application()
    receiver_app.router.add_post("/members", hook)
    receiver = TestServer(receiver_app, host="127.0.0.1")
    await receiver.start_server()
    try:
        config = dataclasses.replace(
            make_config(database_url),
            membership=MembershipSettings(
                url=str(receiver.make_url("/members")), secret=MEMBERSHIP_SECRET
            ),
        )
        api = Api(await make_client(config=config))
        ana, bob, eve = await api.users("ana", "bob", "eve")
        allowed.update({ana.user_id, bob.user_id})

        await api.conversation(ana, bob)
        assert asked[-1] == {"created_by": ana.user_id, "member_ids": [ana.user_id, bob.user_id]}
        denied = await api.call(
            "POST", "/v1/conversations", ana, json={"member_ids": [eve.user_id]}, expect=403
        )
        assert error_code(denied) == "membership_denied"
        answer["down"] = True
        unavailable = await api.call(
            "POST", "/v1/conversations", ana, json={"member_ids": [bob.user_id]}, expect=503
        )
        assert error_code(unavailable) == "membership_unavailable"
    finally:
        await receiver.close()

    # The service gone altogether: still refused (fails closed), never a 500.
    gone = await api.call(
        "POST", "/v1/conversations", ana, json={"member_ids": [bob.user_id]}, expect=503
    )
    assert error_code(gone) == "membership_unavailable"


def test_membership_settings_are_validated() -> None:
    base = {"HUDDLE_JWT_SECRET": "x" * 32, "HUDDLE_DEV": "0"}
    with pytest.raises(ConfigError, match="HUDDLE_MEMBERSHIP_SECRET is required"):
        load_config({**base, "HUDDLE_MEMBERSHIP_URL": "https://directory.example/members"})
    with pytest.raises(ConfigError, match="HUDDLE_MEMBERSHIP_URL"):
        load_config({**base, "HUDDLE_MEMBERSHIP_URL": "ftp://x", "HUDDLE_MEMBERSHIP_SECRET": "s"})
    config = load_config(
        {
            **base,
            "HUDDLE_MEMBERSHIP_URL": "https://directory.example/members",
            "HUDDLE_MEMBERSHIP_SECRET": "s",
            "HUDDLE_MEMBERSHIP_TIMEOUT": "1.5",
        }
    )
    assert config.membership.url == "https://directory.example/members"
    assert config.membership.timeout_s == 1.5
    assert "secret" not in repr(config.membership)
