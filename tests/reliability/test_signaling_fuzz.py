"""A seeded fuzzer for the signaling WebSocket, against the real app on loopback.

Hypothesis draws frames of every shape a client could send: random JSON,
messages that are structured but wrong (types, field types, sizes, unicode
with lone surrogates and NUL, deep nesting), binary frames, invalid UTF-8,
frames over the size limit. After each frame the fuzzing client sends
``ping`` and waits for ``pong`` (or the close). The server must never crash,
must answer only with error codes and close codes that ``docs/protocol.md``
documents, and the fuzzing participant's seat and the other participant (its
socket, its seat, what it receives) must be unaffected. Raw RFC 6455
violations (1002) and floods (4029, 4030) have their own cases.

The app runs on a background event loop so hypothesis can drive it from a
plain test function; ``tests/reliability/scale.py`` sizes the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, assume, given, seed, settings
from hypothesis import strategies as st

from server.app import create_app
from signaling.client import SignalingClient, SignalingClosed
from signaling.keys import HUB
from signaling.protocol import CLIENT_TYPES
from tests.reliability.scale import examples
from tests.signaling.cluster import BackgroundLoop
from tests.signaling.conftest import signaling_config
from tests.signaling.messages import CANDIDATE_LINE, SDP
from tests.support.own_services import RawWebSocket

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 60.0  # reconnecting after a documented close keeps the seat
MAX_BYTES = 64 * 1024


def documented() -> tuple[set[str], set[int]]:
    """Error codes and close codes as docs/protocol.md lists them."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    errors_part = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    closes_part = text.split("## Close codes", 1)[1].split("\n## ", 1)[0]
    errors = set(re.findall(r"`([a-z_]+)`", errors_part))
    closes = {int(code) for code in re.findall(r"^\| (\d{4}) \|", closes_part, re.M)}
    return errors, closes


ERROR_CODES, CLOSE_CODES = documented()


@dataclass
class Party:
    user_id: str
    token: str
    client: SignalingClient | None = None


@dataclass
class Arena:
    loop: BackgroundLoop
    base_url: str
    port: int
    call_id: str
    fuzzer: Party
    observer: Party
    raw: Party
    http: aiohttp.ClientSession
    closes: list[int] = field(default_factory=list)
    #: ERROR records the server logged (a crash of a handler, an unexpected error).
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return self.loop.run(coro, timeout)


async def _setup(tmp_path: Path, **signaling: Any) -> tuple[TestServer, aiohttp.ClientSession, Any]:
    # Under make reliability the fuzzing outlasts the 60 s connect timeout:
    # between its sockets, the fuzzing participant must not be released as
    # "never connected".
    signaling.setdefault("connect_timeout_s", 3600.0)
    config = signaling_config(tmp_path, grace_s=GRACE_S, **signaling)
    app = create_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession(base_url=str(server.make_url("/")))
    return server, http, app


async def _user(http: aiohttp.ClientSession, name: str) -> Party:
    response = await http.post("/v1/dev/token", json={"name": name})
    body = await response.json()
    return Party(body["user_id"], body["token"])


async def _call(http: aiohttp.ClientSession, caller: Party, *callees: Party) -> str:
    def auth(p: Party) -> dict[str, str]:
        return {"Authorization": f"Bearer {p.token}"}

    response = await http.post(
        "/v1/conversations", headers=auth(caller), json={"member_ids": [c.user_id for c in callees]}
    )
    conversation_id = (await response.json())["conversation_id"]
    response = await http.post(
        "/v1/calls/initiate",
        headers=auth(caller),
        json={
            "call_type": "video",
            "conversation_id": conversation_id,
            "callee_ids": [c.user_id for c in callees],
        },
    )
    call_id = str((await response.json())["call_id"])
    for callee in callees:
        response = await http.post(f"/v1/calls/{call_id}/join", headers=auth(callee))
        assert response.status == 200, await response.text()
    return call_id


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    loop = BackgroundLoop()
    tmp_path = tmp_path_factory.mktemp("fuzz")
    server, http, app = loop.run(
        _setup(tmp_path, messages_per_second=100_000.0, message_burst=100_000)
    )
    hub = app[HUB]
    # Every fuzz frame is an error: without this the abuse limit (4030) would
    # close the socket every 20 frames; it has its own test below.
    hub.options = dataclasses.replace(hub.options, error_burst=10**9, errors_per_second=10**9)
    try:

        async def prepare() -> Arena:
            fuzzer, observer, raw = (
                await _user(http, "fuzzer"),
                await _user(http, "observer"),
                await _user(http, "raw"),
            )
            call_id = await _call(http, observer, fuzzer, raw)
            base = str(server.make_url("/"))
            observer.client = await SignalingClient.open(base, call_id, observer.token)
            fuzzer.client = await SignalingClient.open(base, call_id, fuzzer.token)
            port = server.port
            assert port is not None
            return Arena(loop, base, port, call_id, fuzzer, observer, raw, http)

        arena = loop.run(prepare())
        catcher = _Failures(arena.failures)
        logging.getLogger().addHandler(catcher)
        try:
            yield arena
        finally:
            logging.getLogger().removeHandler(catcher)

        async def teardown() -> None:
            for party in (arena.fuzzer, arena.observer):
                if party.client is not None:
                    await party.client.close()
            await http.close()
            await server.close()

        loop.run(teardown())
    finally:
        loop.close()


class _Failures(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self._into = into

    def emit(self, record: logging.LogRecord) -> None:
        self._into.append(f"{record.name}: {record.getMessage()}")


# -- what a frame can be ---------------------------------------------------------------

NASTY = st.sampled_from(
    ["", "\x00", "a\x00b", "\ud800", "\udfff", "x\ud83d", "\U0001f600", "\u202e", "\ufeff", "\n"]
)
TEXT = st.one_of(NASTY, st.text(max_size=40), st.text(st.characters(codec=None), max_size=20))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def _field_values(arena_ids: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from([*arena_ids, "sfu", "server", "", "x" * 200]), JSON)


@st.composite
def structured(draw: st.DrawFn, ids: list[str]) -> dict[str, Any]:
    """A message that looks right and is wrong somewhere (or, sometimes, is right)."""
    kind = draw(
        st.one_of(st.sampled_from(sorted(CLIENT_TYPES - {"leave"})), TEXT, JSON, st.just(None))
    )
    message: dict[str, Any] = {"type": kind}
    values = _field_values(ids)
    sdp = st.one_of(
        st.just(SDP),
        st.just(SDP + "a=x:" + "\ud800\x00" + "\r\n"),
        st.just("v=0\r\no=\ud800\r\ns=\x00\r\n"),
        values,
    )
    line = st.one_of(st.just(CANDIDATE_LINE), st.just(""), TEXT, JSON)
    candidate = st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {"candidate": line, "sdpMid": st.one_of(st.just("0"), JSON)},
            optional={"sdpMLineIndex": st.one_of(st.integers(-5, 5000), JSON)},
        ),
        JSON,
    )
    optional = {
        "target_id": values,
        "sdp": sdp,
        "candidate": candidate,
        "pc": st.one_of(st.sampled_from(["publish", "subscribe", "both"]), JSON),
        "muted": st.one_of(st.booleans(), JSON),
        "video": st.one_of(st.booleans(), JSON),
        "id": st.one_of(st.integers(), TEXT, JSON),
        "sender_id": values,
        "call_id": values,
    }
    for name in draw(st.sets(st.sampled_from(sorted(optional)), max_size=6)):
        message[name] = draw(optional[name])
    return message


def _json_text(value: Any, ascii_only: bool) -> str:
    """JSON as a client would send it; lone surrogates always travel as escapes."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True)
    return text


@dataclass(frozen=True)
class Frame:
    data: str | bytes
    kind: WSMsgType = WSMsgType.TEXT

    @property
    def wire(self) -> bytes:
        if isinstance(self.data, bytes):
            return self.data
        # surrogatepass: a lone surrogate outside JSON escapes is not UTF-8 (1007).
        return self.data.encode("utf-8", "surrogatepass")

    @property
    def expected_close(self) -> int | None:
        """The one close this frame may cause; None: the socket must stay open."""
        if len(self.wire) > MAX_BYTES:
            return 1009
        if self.kind is WSMsgType.TEXT:
            try:
                self.wire.decode("utf-8")
            except UnicodeDecodeError:
                return 1007
        return None


@st.composite
def frames(draw: st.DrawFn, ids: list[str]) -> Frame:
    choice = draw(st.integers(0, 9))
    ascii_only = draw(st.booleans())
    if choice <= 3:
        return Frame(_json_text(draw(structured(ids)), ascii_only))
    if choice == 4:
        return Frame(_json_text(draw(JSON), ascii_only))
    if choice == 5:
        depth = draw(
            st.one_of(st.sampled_from([999, 1_000, 3_000, 20_000]), st.integers(1, 20_000))
        )
        opener = draw(st.sampled_from(["[", '{"a":', '{"type":"offer","sdp":[']))
        closer = {"[": "]", '{"a":': "}", '{"type":"offer","sdp":[': "]"}[opener]
        tail = draw(st.sampled_from(["", "1" + closer * depth, closer * depth]))
        return Frame((opener * depth + tail)[: MAX_BYTES - 16])
    if choice == 6:
        return Frame(draw(st.binary(max_size=2048)), WSMsgType.BINARY)
    if choice == 7:
        # A text frame that is not UTF-8 (1007).
        body = draw(st.binary(min_size=1, max_size=64))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
        return Frame(body + bad, WSMsgType.TEXT)
    if choice == 8:
        size = draw(st.integers(MAX_BYTES - 64, MAX_BYTES + 4096))
        return Frame('{"type":"ping","pad":"' + "x" * size + '"}')
    return Frame(draw(TEXT))


# -- the exchange ------------------------------------------------------------------------


async def _exchange(arena: Arena, frame: Frame) -> None:
    party = arena.fuzzer
    if party.client is None or party.client.closed:
        party.client = await SignalingClient.open(arena.base_url, arena.call_id, party.token)
    client = party.client
    try:
        await client.ws.send_frame(frame.wire, frame.kind)
        await client.ws.send_str('{"type":"ping"}')
        await client.receive("pong", timeout=10)
    except (SignalingClosed, ConnectionError):
        pass
    if client.closed:
        code = await client.wait_closed()
        assert code in CLOSE_CODES, f"undocumented close {code} after {frame!r:.300}"
        assert code == frame.expected_close, f"closed with {code} after {frame!r:.300}"
        arena.closes.append(code)
        party.client = None
    else:
        assert frame.expected_close is None, f"still open after {frame!r:.300}"
    for message in client.messages:
        if message.get("type") == "error":
            assert message.get("code") in ERROR_CODES, message
            assert message["code"] != "internal_error", f"{message} after {frame!r:.300}"
            arena.errors.append(message["code"])
    client._inbox.clear()
    if party.client is None:
        await client.close()
    observer = arena.observer.client
    assert observer is not None and not observer.closed, "the observer lost its socket"
    for message in observer.messages:
        assert message.get("type") not in {"leave", "call_ended", "error"}, message
    observer._inbox.clear()
    assert not arena.failures, arena.failures[0]


@pytest.mark.slow
@seed(20261201)
@settings(
    max_examples=examples(1500, 20000),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_fuzzed_frames_get_documented_answers_only(arena: Arena, data: st.DataObject) -> None:
    ids = [arena.fuzzer.user_id, arena.observer.user_id, arena.raw.user_id]
    frame = data.draw(frames(ids))
    if isinstance(frame.data, str):
        try:
            parsed = json.loads(frame.data)
        except (ValueError, RecursionError):
            parsed = None
        assume(not (isinstance(parsed, dict) and parsed.get("type") == "leave"))
    arena.run(_exchange(arena, frame))


# -- raw protocol violations and floods ---------------------------------------------------


def _masked(first: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    return (
        bytes([first, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


#: (aiohttp accepts unmasked client frames, against RFC 6455 5.1: not a case here.)
VIOLATIONS = {
    "reserved bit set": _masked(0xC1, b'{"type":"ping"}'),
    "reserved opcode": _masked(0x83, b"x"),
    "oversized control frame": b"\x89\xfe\x00\xc8" + b"\x00" * 4 + b"p" * 200,
    "continuation first": _masked(0x80, b"x"),
    "fragmented ping": _masked(0x09, b"x"),
    "one-byte close": _masked(0x88, b"\x03"),
}


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_protocol_violations_close_with_1002_and_the_seat_stays(arena: Arena, name: str) -> None:
    async def scenario() -> None:
        raw = await RawWebSocket.open(arena.port, arena.call_id, arena.raw.token)
        try:
            await raw.send_bytes(VIOLATIONS[name])
            code = await raw.close_code(timeout=10)
        finally:
            raw.close()
        assert code in CLOSE_CODES and code == 1002, (name, code)
        # Reconnecting within the grace period: still joined, welcomed as usual.
        async with SignalingClient.connect(arena.base_url, arena.call_id, arena.raw.token) as c:
            roster = await c.receive("participants")
            ids = {p["participant_id"] for p in roster["participants"]}
            assert {arena.raw.user_id, arena.fuzzer.user_id, arena.observer.user_id} <= ids

    arena.run(scenario())


def test_floods_close_with_documented_codes_and_spare_the_others(tmp_path: Path) -> None:
    loop = BackgroundLoop()
    try:

        async def scenario() -> None:
            server, http, _ = await _setup(tmp_path)  # default limits: 50/s, burst 100
            try:
                flooder, other = await _user(http, "flooder"), await _user(http, "other")
                call_id = await _call(http, other, flooder)
                base = str(server.make_url("/"))
                async with SignalingClient.connect(base, call_id, other.token) as watcher:
                    for frame, expected in (('{"type":"ping"}', 4029), ("nope", 4030)):
                        async with SignalingClient.connect(base, call_id, flooder.token) as f:
                            await f.receive("participants")
                            for _ in range(1_000):
                                if f.closed:
                                    break
                                try:
                                    await f.ws.send_str(frame)
                                except ConnectionError:
                                    break
                                await asyncio.sleep(0)
                                if expected == 4030:
                                    await asyncio.sleep(0.001)
                            assert await f.wait_closed(10) == expected
                    assert not watcher.closed
                    assert not any(m.get("type") == "leave" for m in watcher.messages)
                    status = await http.get(
                        f"/v1/calls/{call_id}", headers={"Authorization": f"Bearer {other.token}"}
                    )
                    seats = {p["user_id"]: p for p in (await status.json())["participants"]}
                    assert not seats[flooder.user_id]["left_at"]  # within the grace period
            finally:
                await http.close()
                await server.close()

        loop.run(scenario(), timeout=60)
    finally:
        loop.close()


def test_the_fuzzed_call_is_intact(arena: Arena) -> None:
    """After everything above: both seats held, the observer still connected."""

    async def check() -> None:
        headers = {"Authorization": f"Bearer {arena.observer.token}"}
        status = await (await arena.http.get(f"/v1/calls/{arena.call_id}", headers=headers)).json()
        seats = {p["user_id"]: p for p in status["participants"]}
        for party in (arena.fuzzer, arena.observer, arena.raw):
            assert seats[party.user_id]["joined_at"] and not seats[party.user_id]["left_at"]
        assert status["status"] == "active"
        assert arena.observer.client is not None and not arena.observer.client.closed
        health = await arena.http.get("/health")
        assert health.status == 200

    arena.run(check())
