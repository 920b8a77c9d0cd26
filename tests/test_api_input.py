"""Bad input and bad tokens get a clear status and JSON error code, never a 500."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from server.auth import TokenService
from tests.conftest import TEST_SECRET, AppFactory
from tests.support.api import Api, error_code

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def _setup(make_client: AppFactory) -> tuple[Api, Any, Any, str]:
    api = Api(await make_client())
    ana, bob = await api.users("ana", "bob")
    conversation_id = await api.conversation(ana, bob)
    return api, ana, bob, conversation_id


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"conversation_id": "C", "callee_ids": ["B"]}, "missing_field"),
        ({"call_type": "hologram", "conversation_id": "C", "callee_ids": ["B"]}, "invalid_field"),
        ({"call_type": 1, "conversation_id": "C", "callee_ids": ["B"]}, "invalid_field"),
        ({"call_type": "audio", "callee_ids": ["B"]}, "missing_field"),
        (
            {"call_type": "audio", "conversation_id": "not-a-uuid", "callee_ids": ["B"]},
            "invalid_id",
        ),
        ({"call_type": "audio", "conversation_id": 42, "callee_ids": ["B"]}, "invalid_id"),
        ({"call_type": "audio", "conversation_id": "C"}, "missing_field"),
        ({"call_type": "audio", "conversation_id": "C", "callee_ids": []}, "invalid_field"),
        ({"call_type": "audio", "conversation_id": "C", "callee_ids": "B"}, "invalid_field"),
        ({"call_type": "audio", "conversation_id": "C", "callee_ids": [7]}, "invalid_field"),
        (
            {"call_type": "audio", "conversation_id": "C", "callee_ids": ["bad id!"]},
            "invalid_field",
        ),
        ({"call_type": "audio", "conversation_id": "C", "callee_ids": ["u"] * 51}, "invalid_field"),
        ({"call_type": "audio", "conversation_id": "C", "callee_ids": ["A"]}, "invalid_callees"),
    ],
)
async def test_initiate_rejects_bad_bodies(
    make_client: AppFactory, body: dict[str, Any], code: str
) -> None:
    api, ana, bob, conversation_id = await _setup(make_client)
    substituted = {
        key: (
            conversation_id
            if value == "C"
            else [ana.user_id if v == "A" else bob.user_id if v == "B" else v for v in value]
            if isinstance(value, list)
            else value
        )
        for key, value in body.items()
    }
    result = await api.call("POST", "/v1/calls/initiate", ana, json=substituted, expect=400)
    assert error_code(result) == code
    assert result["error"]["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
async def test_invalid_json_is_400(make_client: AppFactory, raw: bytes) -> None:
    api, ana, _, _ = await _setup(make_client)
    response = await api.client.post(
        "/v1/calls/initiate", data=raw, headers={**ana.headers, "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert error_code(await response.json()) == "invalid_json"


async def test_oversized_body_is_413(make_client: AppFactory) -> None:
    api, ana, _, conversation_id = await _setup(make_client)
    body = {
        "call_type": "audio",
        "conversation_id": conversation_id,
        "callee_ids": ["x"],
        "padding": "x" * 70_000,
    }
    response = await api.client.post("/v1/calls/initiate", json=body, headers=ana.headers)
    assert response.status == 413
    assert error_code(await response.json()) == "payload_too_large"


@pytest.mark.parametrize("path", ["/v1/calls/nope", "/v1/calls/nope/join", "/v1/conversations/123"])
async def test_bad_path_ids_are_400(make_client: AppFactory, path: str) -> None:
    api, ana, _, _ = await _setup(make_client)
    method = "POST" if path.endswith("join") else "GET"
    assert error_code(await api.call(method, path, ana, expect=400)) == "invalid_id"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", "missing_field"),
        ("?conversation_id=zzz", "invalid_id"),
        ("?conversation_id=C&limit=0", "invalid_query"),
        ("?conversation_id=C&limit=abc", "invalid_query"),
        ("?conversation_id=C&before=yesterday", "invalid_query"),
    ],
)
async def test_history_rejects_bad_queries(make_client: AppFactory, query: str, code: str) -> None:
    api, ana, _, conversation_id = await _setup(make_client)
    result = await api.call(
        "GET", "/v1/calls" + query.replace("C", conversation_id), ana, expect=400
    )
    assert error_code(result) == code


async def test_conversation_bodies(make_client: AppFactory) -> None:
    api, ana, _, _ = await _setup(make_client)
    for body, code in [
        ({}, "missing_field"),
        ({"member_ids": []}, "invalid_field"),
        ({"member_ids": ["b"], "title": 5}, "invalid_field"),
        ({"member_ids": ["b"], "title": "t" * 201}, "invalid_field"),
    ]:
        assert (
            error_code(await api.call("POST", "/v1/conversations", ana, json=body, expect=400))
            == code
        )


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "token_missing"),
        ("Token abc", "token_missing"),
        ("Bearer not-a-jwt", "token_invalid"),
        (
            "Bearer "
            + jwt.encode(
                {"sub": "ana", "exp": int(time.time()) + 86_400},
                "another-secret-that-is-long-enough-xx",
                algorithm="HS256",
            ),
            "token_invalid",
        ),
        ("Bearer " + TokenService(TEST_SECRET).issue("ana", ttl_s=-120), "token_expired"),
        ("Bearer " + jwt.encode({"sub": "ana"}, TEST_SECRET, algorithm="HS256"), "token_invalid"),
        (
            "Bearer "
            + jwt.encode(
                {"sub": "x y", "exp": int(time.time()) + 86_400}, TEST_SECRET, algorithm="HS256"
            ),
            "token_invalid",
        ),
        (
            "Bearer "
            + jwt.encode(
                {"sub": "ana", "exp": int(time.time()) + 86_400}, TEST_SECRET * 2, algorithm="HS512"
            ),
            "token_invalid",
        ),
    ],
)
async def test_bad_tokens_are_401(make_client: AppFactory, header: str | None, code: str) -> None:
    client = await make_client()
    headers = {"Authorization": header} if header else {}
    response = await client.post("/v1/conversations", json={"member_ids": ["b"]}, headers=headers)
    assert response.status == 401
    assert error_code(await response.json()) == code


async def test_dev_token_validation(make_client: AppFactory) -> None:
    client = await make_client()
    for body in ({}, {"name": ""}, {"name": 5}, {"name": "x" * 65}):
        response = await client.post("/v1/dev/token", json=body)
        assert response.status == 400, body
    response = await client.post("/v1/dev/token", json={"name": "  Ana   Lima "})
    assert (await response.json())["name"] == "Ana Lima"


async def test_unknown_route_and_method(make_client: AppFactory) -> None:
    client = await make_client()
    response = await client.get("/v1/nothing-here")
    assert response.status == 404
    assert error_code(await response.json()) == "not_found"
    response = await client.delete("/v1/calls/initiate")
    assert response.status == 405
    assert error_code(await response.json()) == "method_not_allowed"


async def test_openapi_documents_every_route(make_client: AppFactory) -> None:
    client = await make_client()
    document = await (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        and not route.resource.canonical.startswith("/static")
        and route.resource.canonical != "/"
    }
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served <= documented, served - documented
    # Everything documented is served, except the WebSocket route until signaling lands.
    assert documented - served <= {("get", "/v1/calls/ws/signaling")}
    for path, item in document["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)


async def test_metrics_exposes_the_old_service_names(make_client: AppFactory) -> None:
    api, ana, bob, conversation_id = await _setup(make_client)
    call = await api.initiate(ana, conversation_id, bob)
    await api.action(call["call_id"], "join", bob)
    await api.action(call["call_id"], "end", ana)
    response = await api.client.get("/metrics")
    text = await response.text()
    assert response.headers["Content-Type"].startswith("text/plain")
    for name in [
        "video_call_created_total 1.0",
        "video_call_joined_total 1.0",
        'video_call_ended_total{reason="completed"} 1.0',
        "video_call_duration_seconds_count 1.0",
        "video_active_calls",
        "video_call_initiate_rate_limit_exceeded_total",
        "video_call_unauthorized_join_attempt_total",
        "video_cleanup_stale_calls_total",
        'db_query_duration_seconds_count{operation="mutate_call"}',
        "db_query_timeout_total",
        'http_requests_total{method="POST",route="/v1/calls/{call_id}/join",status="200"} 1.0',
        "process_resident_memory_bytes",
    ]:
        assert name in text, name
    assert call["call_id"] not in text and ana.user_id not in text
