"""``GET /openapi.json``: the OpenAPI 3.1 document of the HTTP API.

Written out rather than generated, so it states the contract of DESIGN.md
itself; tests check that it names exactly the routes the app serves.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

routes = web.RouteTableDef()

_ERROR_CODES = {
    "400": "Bad input (invalid_json, missing_field, invalid_field, invalid_id, reserved_id, ...)",
    "401": "No or invalid token (token_missing, token_invalid, token_expired)",
    "403": "Not allowed (not_a_member, not_invited, not_joined)",
    "404": "Unknown (call_not_found, conversation_not_found)",
    "409": "Conflict (already_joined, participant_limit_reached, already_declined)",
    "410": "Gone (call_ended, ringing_expired)",
    "413": "Body too large (payload_too_large)",
    "429": "Rate limited (rate_limited), with Retry-After",
    "503": "A dependency is down (database_unavailable, database_timeout)",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: _json(_ref("Error"), _ERROR_CODES[status]) for status in statuses}


def _op(
    summary: str,
    ok: str,
    ok_schema: dict[str, Any],
    errors: tuple[str, ...],
    *,
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
    secure: bool = True,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {ok: _json(ok_schema, "Success"), **_errors(*errors)},
    }
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if params:
        op["parameters"] = params
    if not secure:
        op["security"] = []
    return op


def _path_id(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }


_CALL_ACTION_ERRORS = ("400", "401", "403", "404", "409", "410", "503")
_UUID = {"type": "string", "format": "uuid"}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_USER_IDS = {
    "type": "array",
    "items": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"},
}


def _call_action(summary: str) -> dict[str, Any]:
    return {
        "post": _op(summary, "200", _ref("Call"), _CALL_ACTION_ERRORS, params=[_path_id("call_id")])
    }


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Huddle",
        "version": "1.0.0",
        "description": "Call lifecycle, signaling and SFU media server.",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/dev/token": {
            "post": _op(
                "Dev mode only: a token for a new user",
                "201",
                _ref("DevToken"),
                ("400", "404"),
                body="DevTokenRequest",
                secure=False,
            )
        },
        "/v1/conversations": {
            "post": _op(
                "Create a conversation (the caller is a member); with HUDDLE_MEMBERSHIP_URL"
                " the membership service approves the members first (403 when it refuses)",
                "201",
                _ref("Conversation"),
                ("400", "401", "403", "413", "503"),
                body="ConversationRequest",
            )
        },
        "/v1/conversations/{conversation_id}": {
            "get": _op(
                "A conversation and its members",
                "200",
                _ref("Conversation"),
                ("400", "401", "403", "404", "503"),
                params=[_path_id("conversation_id")],
            )
        },
        "/v1/calls/initiate": {
            "post": _op(
                "Start a call: it rings the callees; the caller is joined",
                "201",
                _ref("JoinedCall"),
                ("400", "401", "403", "404", "413", "429", "503"),
                body="InitiateRequest",
            )
        },
        "/v1/calls": {
            "get": _op(
                "Call history of a conversation, newest first (the calls you were invited"
                " to); or, with status=ringing and no conversation_id, the live calls"
                " ringing for you (invited, neither joined nor declined)",
                "200",
                {
                    "type": "object",
                    "properties": {"calls": {"type": "array", "items": _ref("Call")}},
                },
                ("400", "401", "403", "404", "503"),
                params=[
                    {
                        "name": "conversation_id",
                        "in": "query",
                        "description": "required unless status=ringing",
                        "schema": _UUID,
                    },
                    {
                        "name": "status",
                        "in": "query",
                        "description": "ringing: calls ringing for you, in every conversation",
                        "schema": {"type": "string", "enum": ["ringing"]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                ],
            )
        },
        "/v1/calls/{call_id}": {
            "get": _op(
                "Call status and participants (ice_servers only for joined participants)",
                "200",
                _ref("JoinedCall"),
                ("400", "401", "403", "404", "503"),
                params=[_path_id("call_id")],
            )
        },
        "/v1/calls/{call_id}/join": {
            "post": _op(
                "Join (or rejoin) a call you are invited to",
                "200",
                _ref("JoinedCall"),
                _CALL_ACTION_ERRORS,
                params=[_path_id("call_id")],
            )
        },
        "/v1/calls/{call_id}/invite": {
            "post": _op(
                "A joined participant invites more conversation members",
                "200",
                _ref("Call"),
                _CALL_ACTION_ERRORS,
                body="InviteRequest",
                params=[_path_id("call_id")],
            )
        },
        "/v1/calls/{call_id}/decline": _call_action("An invitee declines"),
        "/v1/calls/{call_id}/leave": _call_action("Leave; the last one out ends the call"),
        "/v1/calls/{call_id}/end": _call_action("End the call for everyone"),
        "/v1/turn/credentials": {
            "get": _op(
                "Short-lived TURN REST credentials", "200", _ref("TurnCredentials"), ("401", "404")
            )
        },
        "/v1/calls/ws/signaling": {
            "get": {
                "summary": "WebSocket signaling (see docs/protocol.md); auth by Bearer header "
                "or access_token query parameter",
                "parameters": [
                    {"name": "call_id", "in": "query", "required": True, "schema": _UUID},
                    {"name": "access_token", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "101": {"description": "Switching to WebSocket"},
                    **_errors("400", "401", "403", "404", "410", "503"),
                },
            }
        },
        "/health": {"get": _op("Liveness", "200", {"type": "object"}, (), secure=False)},
        "/ready": {
            "get": {
                "summary": "Readiness with each dependency's state",
                "security": [],
                "responses": {
                    "200": _json(_ref("Readiness"), "Ready"),
                    "503": _json(_ref("Readiness"), "A dependency is down"),
                },
            }
        },
        "/v1/admin/drain": {
            "post": _op(
                "Drain this node (as SIGTERM): no new rooms, not ready; rooms run on until"
                " empty or HUDDLE_DRAIN_TIMEOUT, then clients reconnect and the node stops."
                " Bearer HUDDLE_ADMIN_TOKEN (403 admin_disabled when unset)",
                "202",
                {"type": "object"},
                ("401", "403"),
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {"get": _op("This document", "200", {"type": "object"}, (), secure=False)},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            },
            "DevTokenRequest": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "maxLength": 64}},
            },
            "DevToken": {
                "type": "object",
                "properties": {
                    "token": {"type": "string"},
                    "user_id": {"type": "string"},
                    "name": {"type": "string"},
                },
            },
            "ConversationRequest": {
                "type": "object",
                "required": ["member_ids"],
                "properties": {
                    "member_ids": {**_USER_IDS, "minItems": 1, "maxItems": 256},
                    "title": {"type": "string", "maxLength": 200},
                },
            },
            "Conversation": {
                "type": "object",
                "properties": {
                    "conversation_id": _UUID,
                    "title": {"type": ["string", "null"]},
                    "member_ids": _USER_IDS,
                    "created_by": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                },
            },
            "InitiateRequest": {
                "type": "object",
                "required": ["call_type", "conversation_id", "callee_ids"],
                "properties": {
                    "call_type": {"enum": ["audio", "video"]},
                    "conversation_id": _UUID,
                    "callee_ids": {**_USER_IDS, "minItems": 1},
                },
            },
            "InviteRequest": {
                "type": "object",
                "required": ["callee_ids"],
                "properties": {"callee_ids": {**_USER_IDS, "minItems": 1}},
            },
            "Participant": {
                "type": "object",
                "properties": {
                    "user_id": {"type": "string"},
                    "name": {"type": ["string", "null"]},
                    "invited": {"type": "boolean"},
                    "joined_at": _TIME,
                    "left_at": _TIME,
                    "declined_at": _TIME,
                    "muted": {"type": "boolean"},
                    "video": {"type": "boolean"},
                },
            },
            "Call": {
                "type": "object",
                "properties": {
                    "call_id": _UUID,
                    "conversation_id": _UUID,
                    "caller_id": {"type": "string"},
                    "call_type": {"enum": ["audio", "video"]},
                    "status": {"enum": ["ringing", "active", "ended"]},
                    "end_reason": {
                        "enum": [None, "completed", "declined", "missed", "expired", "cleaned"]
                    },
                    "mode": {"enum": ["p2p", "sfu"]},
                    "created_at": {"type": "string", "format": "date-time"},
                    "started_at": _TIME,
                    "ended_at": _TIME,
                    "duration_seconds": {"type": ["number", "null"]},
                    "participants": {"type": "array", "items": _ref("Participant")},
                },
            },
            "JoinedCall": {
                "allOf": [
                    _ref("Call"),
                    {
                        "type": "object",
                        "properties": {
                            "ice_servers": {"type": "array", "items": {"type": "object"}}
                        },
                    },
                ]
            },
            "TurnCredentials": {
                "type": "object",
                "properties": {
                    "username": {"type": "string"},
                    "password": {"type": "string"},
                    "ttl": {"type": "integer"},
                    "uris": {"type": "array", "items": {"type": "string"}},
                },
            },
            "Readiness": {
                "type": "object",
                "properties": {
                    "status": {"enum": ["ready", "not_ready"]},
                    "shutting_down": {"type": "boolean"},
                    "draining": {"type": "boolean"},
                    "checks": {"type": "object"},
                },
            },
        },
    },
}


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
