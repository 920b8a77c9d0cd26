"""HTTP fuzzing from ``/openapi.json`` (schemathesis), plus targeted hostile inputs.

Every operation of the OpenAPI document gets generated requests, valid and
invalid (schemathesis' positive and negative modes), against a real
``huddle serve`` subprocess on 127.0.0.1: no answer may be a 5xx, and every
4xx must be the JSON error of docs/api.md. Path ids that the generator makes
valid UUIDs are swapped for a real conversation and call, so the fuzz reaches
the handlers behind the lookups too.

The server is a subprocess, not an in-process TestServer: schemathesis calls
it with ``requests`` (blocking), which cannot share the test's event loop.
Sized with tests/reliability/scale.py: a few dozen examples per operation in
``make test``, hundreds under ``make reliability``.
"""

from __future__ import annotations

import json
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from server.http.openapi import DOCUMENT
from tests.reliability.scale import examples
from tests.support.edge import parse_response, serve_settings
from tests.support.serve import huddle_serve

schema = schemathesis.openapi.from_dict(DOCUMENT)
MAX_EXAMPLES = examples(bounded=50, full=1000)


class Target:
    """The server under fuzz, with a user, a conversation and a call of its own."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = requests.Session()
        ana = self.post("/v1/dev/token", {"name": "ana"})
        bob = self.post("/v1/dev/token", {"name": "bob"})
        self.headers = {"Authorization": f"Bearer {ana['token']}"}
        conversation = self.post(
            "/v1/conversations", {"member_ids": [bob["user_id"]]}, self.headers
        )
        self.ids = {"conversation_id": conversation["conversation_id"]}
        self.ids["call_id"] = self.post(
            "/v1/calls/initiate",
            {
                "call_type": "audio",
                "conversation_id": self.ids["conversation_id"],
                "callee_ids": [bob["user_id"]],
            },
            self.headers,
        )["call_id"]

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        response = self.session.post(self.base + path, json=body, headers=headers, timeout=10)
        assert response.status_code in (200, 201), response.text
        return response.json()

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz")
    settings = {**serve_settings(tmp), "HUDDLE_INITIATE_PER_MINUTE": "100000"}
    with huddle_serve(tmp, **settings) as server:
        target = Target(server.base_url)
        yield target
        target.session.close()
        # The server logged no unhandled error while being fuzzed.
        log = server.log()
        assert "unhandled error" not in log, log
        assert "Traceback" not in log, log


def assert_clean(status: int, content_type: str, body: bytes, what: object) -> None:
    """No 5xx; every error is ``{"error": {"code", "message"}}`` as JSON."""
    assert status < 500, (status, body[:500], what)
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, what)
        error = json.loads(body)["error"]
        assert isinstance(error["code"], str) and error["code"], (body, what)
        assert isinstance(error["message"], str) and error["message"], (body, what)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
def test_every_operation(case: Any, target: Target) -> None:
    if case.path_parameters:
        for name, value in case.path_parameters.items():
            try:
                uuid.UUID(str(value))
            except ValueError:
                continue  # keep the invalid id: that is a case too
            if name in target.ids:
                case.path_parameters[name] = target.ids[name]
    headers = {} if case.operation.definition.raw.get("security") == [] else target.headers
    response = case.call(base_url=target.base, session=target.session, headers=headers, timeout=10)
    assert_clean(
        response.status_code,
        # schemathesis' Response: lowercase keys, list values.
        ",".join(response.headers.get("content-type", [])),
        response.content,
        (case.method, case.formatted_path, case.body),
    )


# --- targeted inputs: what the generators are unlikely to hit -----------------

JSON_BODY_OPERATIONS = sorted(
    (method.upper(), path)
    for path, item in DOCUMENT["paths"].items()
    for method, op in item.items()
    if "requestBody" in op
)

HOSTILE_BODIES = {
    "deep array": "[" * 20_000 + "]" * 20_000,
    "deep object": '{"a":' * 10_000 + "1" + "}" * 10_000,
    "deep field": '{"name": ' + "[" * 50 + "]" * 50 + "}",
    "lone surrogate": '{"name": "\\ud800", "title": "\\ud800", "member_ids": ["\\udc00"]}',
    "nul": '{"name": "a\\u0000b", "title": "a\\u0000b", "callee_ids": ["a\\u0000b"]}',
    "surrogate key": '{"\\ud800": 1}',
    "huge number": '{"name": 1' + "0" * 5000 + "}",
    "nan": '{"name": NaN, "member_ids": [Infinity]}',
}


@pytest.mark.parametrize("raw", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
@pytest.mark.parametrize(("method", "path"), JSON_BODY_OPERATIONS)
def test_hostile_bodies(target: Target, method: str, path: str, raw: str) -> None:
    url = target.base + path.replace("{call_id}", target.ids["call_id"])
    headers = {**target.headers, "Content-Type": "application/json"}
    response = target.session.request(method, url, data=raw.encode(), headers=headers, timeout=10)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert_clean(
        response.status_code, response.headers["Content-Type"], response.content, (path, raw)
    )


HOSTILE_QUERIES = [
    "before=0001-01-01T00:00:00%2B01:00",
    "before=9999-12-31T23:59:59-01:00",
    "before=0001-01-01T00:00:00%2B23:59",
    "before=99999-01-01T00:00:00Z",
    "before=%00",
    "before=%ED%A0%80",
    "limit=99999999999999999999999",
    "limit=%00",
]
# The query names conversation_id itself for these (the first one counts).
BAD_CONVERSATION_IDS = ["%00", "%ED%A0%80", "%FF", "0" * 10_000]


@pytest.mark.parametrize("query", HOSTILE_QUERIES)
def test_hostile_history_queries(target: Target, query: str) -> None:
    url = f"{target.base}/v1/calls?conversation_id={target.ids['conversation_id']}&{query}"
    response = target.session.get(url, headers=target.headers, timeout=10)
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert_clean(400, response.headers["Content-Type"], response.content, query)


@pytest.mark.parametrize("value", BAD_CONVERSATION_IDS)
def test_hostile_conversation_ids(target: Target, value: str) -> None:
    url = f"{target.base}/v1/calls?conversation_id={value}"
    response = target.session.get(url, headers=target.headers, timeout=10)
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert_clean(400, response.headers["Content-Type"], response.content, value)


HOSTILE_REQUESTS = {
    "100 KB header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "100 KB header name": b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X" * 100_000 + b": 1\r\n\r\n",
    "huge request line": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad request line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "NUL in path": b"GET /v1/calls/\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    "NUL in header": b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-A: a\x00b\r\n\r\n",
    "bad chunking": b"POST /v1/dev/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"\r\nzz\r\n",
    "two lengths": b"POST /v1/dev/token HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    "bad token header": b"GET /v1/turn/credentials HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"Authorization: Bearer \xff\xfe\r\n\r\n",
    "NUL in token": b"GET /v1/turn/credentials HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    b"Authorization: Bearer a\x00b\r\n\r\n",
}


@pytest.mark.parametrize("data", HOSTILE_REQUESTS.values(), ids=HOSTILE_REQUESTS.keys())
def test_hostile_requests(target: Target, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = parse_response(b"".join(chunks))
    assert 400 <= response.status < 500, response
    assert_clean(response.status, response.headers["content-type"], response.body, data[:80])


def test_the_fuzzed_server_still_answers(target: Target) -> None:
    with urllib.request.urlopen(f"{target.base}/ready", timeout=5) as response:
        assert response.status == 200
