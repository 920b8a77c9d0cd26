"""Notifications survive a restart: a webhook notification written by one server
process, not delivered before it stopped, is delivered once by the next one,
under the same idempotency id. On both store backends."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from server.config import WebhookSettings
from server.keys import STORE
from server.notify import verify
from tests.conftest import AppFactory, make_config
from tests.support.api import Api
from tests.support.polling import eventually

SECRET = "webhook-secret-for-tests"


async def test_notification_queued_before_a_restart_is_delivered_once(
    make_client: AppFactory, database_url: str
) -> None:
    answer = {"status": 503}  # the receiver is failing while the first server runs
    attempts: list[tuple[str, int]] = []
    accepted: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        assert verify(
            SECRET,
            request.headers["X-Huddle-Timestamp"],
            body,
            request.headers["X-Huddle-Signature"],
        )
        notification_id = request.headers["X-Huddle-Notification-Id"]
        assert json.loads(body)["notification_id"] == notification_id
        attempts.append((notification_id, answer["status"]))
        if answer["status"] == 200:
            accepted.append(json.loads(body))
        return web.Response(status=answer["status"])

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    receiver = TestServer(receiver_app, host="127.0.0.1")
    await receiver.start_server()
    try:
        config = dataclasses.replace(
            make_config(database_url),
            webhook=WebhookSettings(url=str(receiver.make_url("/hook")), secret=SECRET),
        )
        first = await make_client(config=config)
        api = Api(first)
        ana, bob = await api.users("ana", "bob")
        conversation_id = await api.conversation(ana, bob)
        call = await api.initiate(ana, conversation_id, bob)
        await eventually(lambda: len(attempts) >= 1, message="a first (failing) attempt")
        [(queued_id, _)] = attempts[:1]
        assert await first.server.app[STORE].outbox_pending() == 1
        await first.close()  # stopped before the notification was delivered

        answer["status"] = 200
        second = await make_client(config=config)
        await eventually(lambda: len(accepted) >= 1, timeout=15, message="delivery")

        async def delivered_row_gone() -> bool:
            return int(await second.server.app[STORE].outbox_pending()) == 0

        await eventually(delivered_row_gone, message="the delivered row is gone")
        [ringing] = accepted
        assert ringing["event"] == "call.ringing"
        assert ringing["call_id"] == call["call_id"]
        assert ringing["recipient_ids"] == [bob.user_id]
        assert ringing["notification_id"] == queued_id  # stable across the restart
        assert {nid for nid, _ in attempts} == {queued_id}
    finally:
        await receiver.close()
