"""Hostile input at the HTTP edge: deep nesting, text no store can hold,
out-of-range times and reserved ids all get a 4xx with a JSON code, never a 500.

The text and time cases run on both store backends (the ``database_url``
fixture): what SQLite accepts, Postgres may refuse, and the other way round.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from server.auth import TokenService
from server.errors import Unauthorized
from server.ids import RESERVED_USER_IDS
from tests.conftest import TEST_SECRET, AppFactory
from tests.support.api import Api, User, error_code

_sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

DEEP_ARRAY = "[" * 20_000 + "]" * 20_000
DEEP_OBJECT = '{"a":' * 10_000 + "1" + "}" * 10_000
# Shallow enough for json.loads, deeper than the edge allows.
DEEP_FIELD = '{"member_ids": ' + "[" * 40 + '"x"' + "]" * 40 + "}"


def _jwt(sub: str, name: str | None = None) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 3600}
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, TEST_SECRET, algorithm="HS256")


async def _post_raw(api: Api, path: str, raw: str | bytes, user: User | None) -> Any:
    headers = {"Content-Type": "application/json", **(user.headers if user else {})}
    data = raw.encode() if isinstance(raw, str) else raw
    response = await api.client.post(path, data=data, headers=headers)
    assert response.content_type == "application/json"
    return response.status, await response.json()


@_sqlite_only
@pytest.mark.parametrize(
    "raw", [DEEP_ARRAY, DEEP_OBJECT, DEEP_FIELD], ids=["array", "object", "field"]
)
@pytest.mark.parametrize(
    "path", ["/v1/dev/token", "/v1/conversations", "/v1/calls/initiate", "/v1/calls/C/invite"]
)
async def test_deeply_nested_json_is_400(make_client: AppFactory, path: str, raw: str) -> None:
    api = Api(await make_client())
    ana, bob = await api.users("ana", "bob")
    call = await api.group_call(ana, bob)
    status, body = await _post_raw(api, path.replace("C", call["call_id"]), raw, ana)
    assert status == 400, body
    assert error_code(body) == "invalid_json"


BAD_TEXT = {
    "surrogate": '"\\ud800"',
    "low surrogate": '"x\\udfffy"',
    "nul": '"a\\u0000b"',
}


@pytest.mark.parametrize("text", BAD_TEXT.values(), ids=BAD_TEXT.keys())
async def test_unstorable_text_in_any_field_is_400(make_client: AppFactory, text: str) -> None:
    api = Api(await make_client())
    ana, bob = await api.users("ana", "bob")
    conversation_id = await api.conversation(ana, bob)
    cases = [
        ("/v1/conversations", f'{{"member_ids": ["{bob.user_id}"], "title": {text}}}'),
        ("/v1/conversations", f'{{"member_ids": [{text}]}}'),
        ("/v1/conversations", f'{{"member_ids": ["{bob.user_id}"], {text}: 1}}'),
        (
            "/v1/calls/initiate",
            f'{{"call_type": "audio", "conversation_id": "{conversation_id}", '
            f'"callee_ids": ["{bob.user_id}"], "extra": [{text}]}}',
        ),
        (
            "/v1/calls/initiate",
            f'{{"call_type": "audio", "conversation_id": {text}, "callee_ids": ["{bob.user_id}"]}}',
        ),
        ("/v1/dev/token", f'{{"name": {text}}}'),
    ]
    for path, raw in cases:
        status, body = await _post_raw(api, path, raw, ana)
        assert status == 400, (raw, body)
        assert error_code(body) in {"invalid_field", "invalid_id"}, (raw, body)
    # Nothing was half-created: ana's history is still empty and her next call works.
    await api.initiate(ana, conversation_id, bob)


async def test_utf8_encoded_surrogate_bytes_are_400(make_client: AppFactory) -> None:
    # json.loads decodes bytes with surrogatepass: raw ED A0 80 becomes "\ud800".
    api = Api(await make_client())
    ana, bob = await api.users("ana", "bob")
    raw = b'{"member_ids": ["' + bob.user_id.encode() + b'"], "title": "\xed\xa0\x80"}'
    status, body = await _post_raw(api, "/v1/conversations", raw, ana)
    assert status == 400, body
    assert error_code(body) == "invalid_field"


@pytest.mark.parametrize("name", ["\ud800", "a\x00b", "ok\udc80"])
async def test_jwt_with_unstorable_name_is_refused_not_500(
    make_client: AppFactory, name: str
) -> None:
    """A real issuer's token whose ``name`` cannot be stored: 401 on join (and
    everywhere), where it used to be a 500 on every join."""
    api = Api(await make_client())
    ana = await api.user("ana")
    conversation_id = await api.conversation(ana, User("ext-bob", "bob", _jwt("ext-bob")))
    call = await api.initiate(ana, conversation_id, User("ext-bob", "bob", _jwt("ext-bob")))
    bad = User("ext-bob", "bob", _jwt("ext-bob", name))
    body = await api.call("POST", f"/v1/calls/{call['call_id']}/join", bad, expect=401)
    assert error_code(body) == "token_invalid"
    # The same user with a storable name joins.
    good = User("ext-bob", "bob", _jwt("ext-bob", "Bob"))
    await api.action(call["call_id"], "join", good)


@pytest.mark.parametrize("sub", ["bob\x00", "b\ud800b", "bob\n"])
async def test_jwt_with_unstorable_sub_is_401(make_client: AppFactory, sub: str) -> None:
    api = Api(await make_client())
    body = await api.call("GET", "/v1/turn/credentials", User(sub, "x", _jwt(sub)), expect=401)
    assert error_code(body) == "token_invalid"


@pytest.mark.parametrize(
    "before",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+23:59"],
)
async def test_history_before_out_of_range_is_400(make_client: AppFactory, before: str) -> None:
    api = Api(await make_client())
    ana, bob = await api.users("ana", "bob")
    conversation_id = await api.conversation(ana, bob)
    query = f"?conversation_id={conversation_id}&before={before.replace('+', '%2B')}"
    body = await api.call("GET", "/v1/calls" + query, ana, expect=400)
    assert error_code(body) == "invalid_query"


@pytest.mark.parametrize("before", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
async def test_history_before_at_the_edges_of_the_range_answers(
    make_client: AppFactory, before: str
) -> None:
    api = Api(await make_client())
    ana, bob = await api.users("ana", "bob")
    conversation_id = await api.conversation(ana, bob)
    call = await api.initiate(ana, conversation_id, bob)
    body = await api.call(
        "GET", f"/v1/calls?conversation_id={conversation_id}&before={before}", ana, expect=200
    )
    expected = [] if before.startswith("0001") else [call["call_id"]]
    assert [c["call_id"] for c in body["calls"]] == expected


@_sqlite_only
@pytest.mark.parametrize("reserved", [*sorted(RESERVED_USER_IDS), "SFU"])
async def test_reserved_ids_are_refused_over_http(make_client: AppFactory, reserved: str) -> None:
    api = Api(await make_client())
    ana, bob = await api.users("ana", "bob")
    body = await api.call(
        "POST", "/v1/conversations", ana, json={"member_ids": [reserved]}, expect=400
    )
    assert error_code(body) == "reserved_id"
    conversation_id = await api.conversation(ana, bob)
    body = await api.call(
        "POST",
        "/v1/calls/initiate",
        ana,
        json={"call_type": "audio", "conversation_id": conversation_id, "callee_ids": [reserved]},
        expect=400,
    )
    assert error_code(body) == "reserved_id"
    call = await api.initiate(ana, conversation_id, bob)
    body = await api.call(
        "POST",
        f"/v1/calls/{call['call_id']}/invite",
        ana,
        json={"callee_ids": [reserved]},
        expect=400,
    )
    assert error_code(body) == "reserved_id"
    impostor = User(reserved, "x", _jwt(reserved))
    body = await api.call("GET", f"/v1/calls/{call['call_id']}", impostor, expect=401)
    assert error_code(body) == "token_invalid"


@pytest.mark.parametrize("token", ["\udcff\udcfe", "\u00e9.\u00e9.\u00e9"])
def test_undecodable_bearer_bytes_are_401(token: str) -> None:
    """aiohttp decodes header bytes with surrogateescape; PyJWT then raised
    UnicodeEncodeError (a 500). Found by tests/reliability/test_http_fuzz.py,
    whose raw-socket case sends the bytes themselves."""
    with pytest.raises(Unauthorized) as caught:
        TokenService(TEST_SECRET).verify(token)
    assert caught.value.code == "token_invalid"
