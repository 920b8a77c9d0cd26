"""The HTTP edge on a real server (raw sockets on 127.0.0.1): aiohttp's own
parser errors come back as JSON, 405 carries Allow, every response has the
security headers and no version banner, and connections that never finish
their request head are capped per address and timed out."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from server.config import HttpSettings
from server.http.edge import EdgeServer
from tests.conftest import AppFactory, make_config
from tests.support.api import error_code
from tests.support.edge import (
    edge_server,
    parse_response,
    raw_request,
    read_all,
    serve_settings,
)
from tests.support.polling import eventually
from tests.support.serve import spawn_serve

_sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

HUGE_HEADER = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
PARSER_ERRORS = {
    "huge header": HUGE_HEADER,
    "huge request line": b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad request line": b"NOT HTTP AT ALL\r\n\r\n",
    "bad method": b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad version": b"GET / HTTP/9.x\r\nHost: x\r\n\r\n",
    "bad header": b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    "bad content-length": b"POST /v1/dev/token HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(300))
    + b"\r\n",
}


def _assert_json_error(response: Any, status: int) -> None:
    assert response.status == status, response
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert response.headers["server"] == "huddle"


@pytest.mark.parametrize("data", PARSER_ERRORS.values(), ids=PARSER_ERRORS.keys())
async def test_parser_errors_are_json(tmp_path: Path, data: bytes) -> None:
    async with edge_server(tmp_path) as (_, port):
        response = await raw_request(port, data)
    _assert_json_error(response, 400)


async def test_huddle_serve_answers_parser_errors_with_json(tmp_path: Path) -> None:
    """The same through the real command line, which is what an operator runs;
    and SIGTERM still stops it cleanly (exit 0)."""
    server = spawn_serve(tmp_path, **serve_settings(tmp_path))
    try:
        await asyncio.to_thread(server.wait_healthy)
        _assert_json_error(await raw_request(server.port, HUGE_HEADER), 400)
    finally:
        returncode = await asyncio.to_thread(server.stop)
    assert returncode == 0, server.tail()
    assert "Traceback" not in server.log(), server.log()


@_sqlite_only
async def test_405_carries_allow(make_client: AppFactory) -> None:
    client = await make_client()
    response = await client.delete("/v1/calls/initiate")
    assert response.status == 405
    assert error_code(await response.json()) == "method_not_allowed"
    # GET also matches there: /v1/calls/{call_id} (which answers invalid_id).
    allowed = set(response.headers["Allow"].replace(" ", "").split(","))
    assert "POST" in allowed and "DELETE" not in allowed
    response = await client.put("/health")
    assert response.status == 405
    assert "GET" in response.headers["Allow"]


@_sqlite_only
async def test_client_page_and_static_files_carry_security_headers(
    make_client: AppFactory,
) -> None:
    client = await make_client()
    for path in ["/", "/static/js/main.js", "/static/css/app.css"]:
        response = await client.get(path)
        assert response.status == 200, path
        headers = response.headers
        csp = headers["Content-Security-Policy"]
        assert "frame-ancestors 'self'" in csp
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
        assert headers["X-Frame-Options"] == "SAMEORIGIN"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Server"] == "huddle"


@_sqlite_only
async def test_api_responses_carry_security_headers_and_no_versions(
    make_client: AppFactory,
) -> None:
    client = await make_client()
    for method, path in [("GET", "/health"), ("GET", "/nothing"), ("POST", "/v1/conversations")]:
        response = await client.request(method, path)
        headers = response.headers
        assert headers["Server"] == "huddle", path
        assert not re.search(r"\d", headers["Server"])
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert headers["X-Frame-Options"] == "DENY"


@_sqlite_only
async def test_frame_ancestors_are_configurable(make_client: AppFactory, database_url: str) -> None:
    settings = HttpSettings(frame_ancestors=("'self'", "https://app.example"))
    config = dataclasses.replace(make_config(database_url), http=settings)
    client = await make_client(config=config)
    response = await client.get("/")
    assert (
        "frame-ancestors 'self' https://app.example" in response.headers["Content-Security-Policy"]
    )
    # X-Frame-Options cannot name another origin: it would forbid the embedder.
    assert "X-Frame-Options" not in response.headers


def test_the_csp_fits_what_the_client_loads() -> None:
    """Everything index.html loads is same-origin (or the data: favicon), and no
    script or style is inline: the client CSP needs nothing more than 'self'."""
    static = Path(__file__).resolve().parent.parent / "static"
    html = (static / "index.html").read_text()
    for url in re.findall(r'(?:src|href)="([^"#]+)"', html):
        assert url.startswith("/static/") or url == "data:,", url
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    assert "<style" not in html and " style=" not in html
    for script in (static / "js").glob("*.js"):
        text = script.read_text()
        assert not re.search(r"\beval\(|new Function\(|\.innerHTML\s*=.*style=", text), script
        assert not re.search(r"""(?:fetch|WebSocket)\(\s*['"`]https?:""", text), script


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _slow_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that starts its request head and never finishes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    await writer.drain()
    return reader, writer


async def test_pending_heads_are_capped_per_address(tmp_path: Path) -> None:
    settings = HttpSettings(max_pending_per_ip=4, header_timeout_s=60)
    slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    async with edge_server(tmp_path, settings) as (server, port):
        assert isinstance(server, EdgeServer)
        try:
            for _ in range(4):
                slow.append(await _slow_client(port))
            await eventually(lambda: server.pending("127.0.0.1") == 4, timeout=5)
            # The fifth is refused at once, with a JSON 503 (not held for 75 s).
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            refused = parse_response(await read_all(reader, timeout=5))
            await _close(writer)
            _assert_json_error(refused, 503)
            assert refused.json()["error"]["code"] == "too_many_pending_connections"
            # A slow client that finishes its head frees its slot.
            first_reader, first_writer = slow.pop(0)
            first_writer.write(b"1\r\nConnection: close\r\n\r\n")
            done = parse_response(await read_all(first_reader, timeout=5))
            await _close(first_writer)
            assert done.status == 200
            await eventually(lambda: server.pending("127.0.0.1") == 3, timeout=5)
            ok = await raw_request(
                port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert ok.status == 200
        finally:
            for _, writer in slow:
                await _close(writer)
        await eventually(lambda: server.pending("127.0.0.1") == 0, timeout=5)


async def test_a_head_that_never_completes_times_out(tmp_path: Path) -> None:
    settings = HttpSettings(max_pending_per_ip=4, header_timeout_s=0.5)
    async with edge_server(tmp_path, settings) as (server, port):
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await _slow_client(port)
        try:
            response = parse_response(await read_all(reader, timeout=10))
        finally:
            await _close(writer)
        assert loop.time() - started < 5
        _assert_json_error(response, 408)
        assert response.json()["error"]["code"] == "request_timeout"
        await eventually(lambda: server.pending("127.0.0.1") == 0, timeout=5)
        # A silent connection (not a byte sent) is timed out the same way.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            _assert_json_error(parse_response(await read_all(reader, timeout=10)), 408)
        finally:
            await _close(writer)


async def test_keep_alive_requests_are_not_counted_as_pending(tmp_path: Path) -> None:
    settings = HttpSettings(max_pending_per_ip=2, header_timeout_s=0.5)
    async with edge_server(tmp_path, settings) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(3):
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                match = re.search(rb"Content-Length: (\d+)", head, re.I)
                assert match is not None, head
                length = int(match[1])
                await asyncio.wait_for(reader.readexactly(length), 5)
                assert head.startswith(b"HTTP/1.1 200")
                assert server.pending("127.0.0.1") == 0
        finally:
            await _close(writer)
