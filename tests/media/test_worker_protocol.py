"""The front ↔ worker frames: any bytes never crash the parser; frames round-trip
whole and in any split; what is not a frame is skipped or breaks the stream."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.errors import BadSignal
from media.workers.protocol import (
    MAX_FRAME_BYTES,
    FrameParser,
    encode,
    error_frame,
    error_from,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
frames = st.fixed_dictionaries(
    {"kind": st.text(min_size=1, max_size=10)},
    optional={"id": st.integers(0, 2**31), "message": json_values, "call_id": st.text()},
)


@given(st.binary(max_size=4096))
@settings(max_examples=300)
def test_any_bytes_never_crash_the_parser(data: bytes) -> None:
    parser = FrameParser(max_frame=1024)
    for frame in parser.feed(data):
        assert isinstance(frame["kind"], str)


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_any_chunks_never_crash_the_parser(chunks: list[bytes]) -> None:
    parser = FrameParser(max_frame=256)
    for chunk in chunks:
        parser.feed(chunk)


@given(st.lists(frames, max_size=8), st.data())
def test_frames_round_trip_in_any_split(sent: list[dict[str, object]], data: st.DataObject) -> None:
    wire = b"".join(encode(frame) for frame in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    parser = FrameParser()
    got: list[dict[str, object]] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        got.extend(parser.feed(wire[start:cut]))
        start = cut
    assert got == sent
    assert parser.broken is None and parser.skipped == 0


def _raw(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"kind": 3}', b"{}", b"\xff\xfe", b'"kind"', b"[" * 100_000],
)
def test_what_is_not_a_frame_is_skipped_and_the_stream_goes_on(body: bytes) -> None:
    parser = FrameParser()
    assert parser.feed(_raw(body) + encode({"kind": "load"})) == [{"kind": "load"}]
    assert parser.skipped == 1 and parser.broken is None


def test_an_overlong_frame_breaks_the_stream() -> None:
    parser = FrameParser(max_frame=100)
    assert parser.feed(struct.pack(">I", 101) + b"x" * 10) == []
    assert parser.broken is not None
    assert parser.feed(encode({"kind": "load"})) == []  # nothing is read after it


def test_a_frame_too_long_to_send_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        encode({"kind": "load", "metrics": "x" * MAX_FRAME_BYTES})


def test_an_error_crosses_by_its_code() -> None:
    error = error_from(json.loads(json.dumps(error_frame(BadSignal("no sdp")))))
    assert error is not None and error.code == "bad_request" and str(error) == "no sdp"
    assert error_from({"code": ""}) is None and error_from("bad_request") is None
