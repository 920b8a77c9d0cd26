"""Lifecycle events reach a real webhook receiver, signed."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.config import WebhookSettings
from server.notify import verify
from tests.conftest import AppFactory, make_config
from tests.support.api import Api
from tests.support.polling import eventually

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
SECRET = "webhook-secret-for-tests"


async def test_call_events_are_delivered_signed(make_client: AppFactory, database_url: str) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        assert verify(
            SECRET,
            request.headers["X-Huddle-Timestamp"],
            body,
            request.headers["X-Huddle-Signature"],
        )
        received.append(json.loads(body))
        return web.Response(status=204)

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver = TestServer(receiver_app, host="127.0.0.1")
    await receiver.start_server()
    try:
        config = dataclasses.replace(
            make_config(database_url),
            webhook=WebhookSettings(url=str(receiver.make_url("/hook")), secret=SECRET),
        )
        api = Api(await make_client(config=config))
        ana, bob, cid = await api.users("ana", "bob", "cid")
        call = await api.group_call(ana, bob, cid)
        await api.action(call["call_id"], "join", bob)
        await api.action(call["call_id"], "end", ana)

        async def all_delivered() -> bool:
            return len(received) >= 3

        await eventually(all_delivered)
        by_event = {n["event"]: n for n in received}
        assert set(by_event) == {"call.ringing", "call.participant_joined", "call.ended"}
        assert sorted(by_event["call.ringing"]["recipient_ids"]) == sorted(
            [bob.user_id, cid.user_id]
        )
        assert by_event["call.ended"]["data"]["end_reason"] == "completed"
        assert all(n["call_id"] == call["call_id"] for n in received)
    finally:
        await receiver.close()
