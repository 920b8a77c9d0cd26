"""``/v1/conversations`` and ``/v1/calls``: thin handlers over the call service."""

from __future__ import annotations

import time

from aiohttp import web

from server.errors import BadRequest
from server.http import validate
from server.http.auth import identify
from server.keys import CALLS, CONFIG
from server.models import Call, CallType
from server.turn import ice_servers

routes = web.RouteTableDef()

MAX_MEMBERS = 256


def _ice_servers(request: web.Request, user_id: str) -> list[dict[str, object]]:
    return ice_servers(request.app[CONFIG].turn, user_id, time.time())


def _call_response(call: Call, *, status: int = 200) -> web.Response:
    return web.json_response(call.to_json(), status=status)


@routes.post("/v1/conversations")
async def create_conversation(request: web.Request) -> web.Response:
    who = identify(request)
    body = await validate.json_body(request)
    members = validate.user_ids(body, "member_ids", min_items=1, max_items=MAX_MEMBERS)
    title = validate.optional_str(body, "title", max_length=200)
    conversation = await request.app[CALLS].create_conversation(who, members, title)
    return web.json_response(conversation.to_json(), status=201)


@routes.get("/v1/conversations/{conversation_id}")
async def get_conversation(request: web.Request) -> web.Response:
    who = identify(request)
    conversation_id = validate.path_uuid(request, "conversation_id")
    conversation = await request.app[CALLS].get_conversation(who, conversation_id)
    return web.json_response(conversation.to_json())


@routes.post("/v1/calls/initiate")
async def initiate(request: web.Request) -> web.Response:
    who = identify(request)
    body = await validate.json_body(request)
    limits = request.app[CONFIG].limits
    call_type = validate.required_choice(body, "call_type", ("audio", "video"))
    if "conversation_id" not in body:
        raise BadRequest("conversation_id is required", code="missing_field")
    conversation_id = validate.uuid_value(body["conversation_id"], "conversation_id")
    callees = validate.user_ids(body, "callee_ids", min_items=1, max_items=limits.max_callees)
    call = await request.app[CALLS].initiate(who, conversation_id, CallType(call_type), callees)
    # The caller is joined from initiation (no join call): hand it the ICE servers here.
    body = call.to_json()
    body["ice_servers"] = _ice_servers(request, who.user_id)
    return web.json_response(body, status=201)


@routes.get("/v1/calls")
async def history(request: web.Request) -> web.Response:
    who = identify(request)
    if "status" in request.query:
        # ?status=ringing: the calls ringing for me, in any conversation (after a
        # reconnect, a client lists what it may still answer).
        if request.query["status"] != "ringing" or not request.query.keys() <= {
            "status",
            "limit",
        }:
            raise BadRequest(
                "status must be 'ringing', with no parameter besides limit", code="invalid_field"
            )
        limit = validate.query_int(request, "limit", 50, low=1, high=200)
        calls = await request.app[CALLS].ringing_for(who, limit=limit)
        return web.json_response({"calls": [call.to_json() for call in calls]})
    if "conversation_id" not in request.query:
        raise BadRequest("conversation_id is required", code="missing_field")
    conversation_id = validate.uuid_value(request.query["conversation_id"], "conversation_id")
    limit = validate.query_int(request, "limit", 50, low=1, high=200)
    before = validate.query_time(request, "before")
    calls = await request.app[CALLS].history(who, conversation_id, limit=limit, before=before)
    return web.json_response({"calls": [call.to_json() for call in calls]})


@routes.get("/v1/calls/{call_id}")
async def status(request: web.Request) -> web.Response:
    who = identify(request)
    call = await request.app[CALLS].get_call(who, validate.path_uuid(request, "call_id"))
    body = call.to_json()
    me = call.participant(who.user_id)
    if me is not None and me.is_joined:
        # A joined participant reopening the call (reload, deep link) needs its ICE
        # servers again without joining twice.
        body["ice_servers"] = _ice_servers(request, who.user_id)
    return web.json_response(body)


@routes.post("/v1/calls/{call_id}/join")
async def join(request: web.Request) -> web.Response:
    who = identify(request)
    call = await request.app[CALLS].join(who, validate.path_uuid(request, "call_id"))
    body = call.to_json()
    body["ice_servers"] = _ice_servers(request, who.user_id)
    return web.json_response(body)


@routes.post("/v1/calls/{call_id}/invite")
async def invite(request: web.Request) -> web.Response:
    who = identify(request)
    call_id = validate.path_uuid(request, "call_id")
    body = await validate.json_body(request)
    limits = request.app[CONFIG].limits
    callees = validate.user_ids(body, "callee_ids", min_items=1, max_items=limits.max_callees)
    return _call_response(await request.app[CALLS].invite(who, call_id, callees))


@routes.post("/v1/calls/{call_id}/decline")
async def decline(request: web.Request) -> web.Response:
    who = identify(request)
    return _call_response(
        await request.app[CALLS].decline(who, validate.path_uuid(request, "call_id"))
    )


@routes.post("/v1/calls/{call_id}/leave")
async def leave(request: web.Request) -> web.Response:
    who = identify(request)
    return _call_response(
        await request.app[CALLS].leave(who, validate.path_uuid(request, "call_id"))
    )


@routes.post("/v1/calls/{call_id}/end")
async def end(request: web.Request) -> web.Response:
    who = identify(request)
    return _call_response(await request.app[CALLS].end(who, validate.path_uuid(request, "call_id")))
