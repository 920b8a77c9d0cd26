"""Protocol validation as pure functions: what passes, and the code of what does not."""

from __future__ import annotations

from typing import Any

import pytest

from signaling.protocol import ErrorCode, SignalError, decode, validate
from tests.signaling.messages import CANDIDATE_LINE, SDP, answer, candidate, offer

PEER = "peer-1"


@pytest.mark.parametrize(
    "line",
    [
        CANDIDATE_LINE,
        CANDIDATE_LINE.removeprefix("candidate:"),
        "candidate:1 1 UDP 2122252543 192.168.1.10 50000 typ host",
        "candidate:2 1 udp 2122262783 2001:db8::1 50001 typ host generation 0 ufrag abcd",
        "candidate:3 1 udp 2122260223 4ac2a0e1-58b5-4b27-9fd9-6f8b6d1d2e3f.local 60000 typ host",
        "candidate:4 1 tcp 1518280447 10.0.0.1 9 typ host tcptype active",
        "candidate:5 1 udp 41885439 203.0.113.7 3478 typ relay raddr 198.51.100.1 rport 5000",
    ],
)
def test_valid_candidates(line: str) -> None:
    message = validate(candidate(PEER, line))
    assert message["candidate"]["candidate"] == line


@pytest.mark.parametrize(
    "line",
    [
        "garbage",
        "candidate:1 1 udp 2122252543 192.168.1.10 50000 host",  # no "typ"
        "candidate:1 1 udp 2122252543 192.168.1.10 70000 typ host",  # port out of range
        "candidate:1 0 udp 2122252543 192.168.1.10 5000 typ host",  # component 0
        "candidate:1 1 udp 2122252543 192.168.1.10 5000 typ bogus",  # unknown type
        "candidate:1 1 udp 2122252543 bad_host! 5000 typ host",
        "candidate:1 1 udp 2122252543 10.0.0.1 5000 typ host generation",  # odd extensions
        "candidate:1 1 udp 99999999999 10.0.0.1 5000 typ host",  # priority > 2^32-1
    ],
)
def test_malformed_candidate_lines(line: str) -> None:
    with pytest.raises(SignalError) as caught:
        validate(candidate(PEER, line))
    assert caught.value.code == ErrorCode.INVALID_CANDIDATE


def test_end_of_candidates_forms() -> None:
    assert (
        validate({"type": "ice_candidate", "target_id": PEER, "candidate": None})["candidate"]
        is None
    )
    empty = validate(candidate(PEER, ""))
    assert empty["candidate"]["candidate"] == ""


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ({}, ErrorCode.MISSING_FIELD),
        ({"type": "dance"}, ErrorCode.UNKNOWN_TYPE),
        ({"type": 7}, ErrorCode.UNKNOWN_TYPE),
        ({"type": "call_ended"}, ErrorCode.UNKNOWN_TYPE),  # server → client only
        ({"type": "offer", "sdp": SDP}, ErrorCode.MISSING_FIELD),
        ({"type": "offer", "target_id": PEER}, ErrorCode.MISSING_FIELD),
        ({"type": "offer", "target_id": "", "sdp": SDP}, ErrorCode.INVALID_TARGET),
        ({"type": "offer", "target_id": "server", "sdp": SDP}, ErrorCode.INVALID_TARGET),
        ({"type": "offer", "target_id": PEER, "sdp": "hello"}, ErrorCode.INVALID_SDP),
        ({"type": "answer", "target_id": PEER, "sdp": 12}, ErrorCode.INVALID_SDP),
        ({"type": "offer", "target_id": PEER, "sdp": "v=0\r\ns=-\r\n"}, ErrorCode.INVALID_SDP),
        ({"type": "offer", "target_id": PEER, "sdp": SDP + "junk\r\n"}, ErrorCode.INVALID_SDP),
        ({"type": "offer", "target_id": "sfu", "sdp": SDP}, ErrorCode.MISSING_FIELD),
        ({"type": "offer", "target_id": "sfu", "sdp": SDP, "pc": "x"}, ErrorCode.INVALID_FIELD),
        ({"type": "ice_candidate", "target_id": PEER}, ErrorCode.MISSING_FIELD),
        (
            {"type": "ice_candidate", "target_id": PEER, "candidate": "x"},
            ErrorCode.INVALID_CANDIDATE,
        ),
        (
            {
                "type": "ice_candidate",
                "target_id": PEER,
                "candidate": {"candidate": CANDIDATE_LINE},
            },
            ErrorCode.INVALID_CANDIDATE,
        ),
        (
            {
                "type": "ice_candidate",
                "target_id": PEER,
                "candidate": {"candidate": CANDIDATE_LINE, "sdpMid": None, "sdpMLineIndex": None},
            },
            ErrorCode.INVALID_CANDIDATE,
        ),
        (
            {
                "type": "ice_candidate",
                "target_id": PEER,
                "candidate": {"candidate": CANDIDATE_LINE, "sdpMid": "0", "sdpMLineIndex": True},
            },
            ErrorCode.INVALID_CANDIDATE,
        ),
        ({"type": "mute"}, ErrorCode.MISSING_FIELD),
        ({"type": "mute", "muted": "yes"}, ErrorCode.INVALID_FIELD),
        ({"type": "ping", "id": ["x"]}, ErrorCode.INVALID_FIELD),
        ({"type": "subscribe"}, ErrorCode.MISSING_FIELD),
        ({"type": "subscribe", "target_id": PEER}, ErrorCode.INVALID_TARGET),
        ({"type": "track_settings", "target_id": "sfu"}, ErrorCode.MISSING_FIELD),
        ({"type": "track_settings", "target_id": PEER, "tracks": []}, ErrorCode.INVALID_TARGET),
        ({"type": "track_settings", "target_id": "sfu", "tracks": {}}, ErrorCode.INVALID_FIELD),
        ({"type": "track_settings", "target_id": "sfu", "tracks": [1]}, ErrorCode.INVALID_FIELD),
        ({"type": "track_settings", "target_id": "sfu", "tracks": [{}]}, ErrorCode.INVALID_FIELD),
        (
            {"type": "track_settings", "target_id": "sfu", "tracks": [{"mid": "a b"}]},
            ErrorCode.INVALID_FIELD,
        ),
        (
            {"type": "track_settings", "target_id": "sfu", "tracks": [{"mid": "1", "width": 1.5}]},
            ErrorCode.INVALID_FIELD,
        ),
        (
            {"type": "track_settings", "target_id": "sfu", "tracks": [{"mid": "1", "height": -1}]},
            ErrorCode.INVALID_FIELD,
        ),
        (
            {"type": "track_settings", "target_id": "sfu", "tracks": [{"mid": "1", "width": True}]},
            ErrorCode.INVALID_FIELD,
        ),
        (
            {"type": "track_settings", "target_id": "sfu", "tracks": [{"mid": "1", "visible": 1}]},
            ErrorCode.INVALID_FIELD,
        ),
        (
            {"type": "track_settings", "target_id": "sfu", "tracks": [{"mid": "1"}] * 65},
            ErrorCode.INVALID_FIELD,
        ),
    ],
)
def test_invalid_messages(raw: dict[str, Any], code: str) -> None:
    with pytest.raises(SignalError) as caught:
        validate(raw)
    assert caught.value.code == code


def test_resume_goes_to_the_sfu() -> None:
    assert validate({"type": "resume", "target_id": "sfu", "extra": 1}) == {
        "type": "resume",
        "target_id": "sfu",
    }
    for target, code in (
        ({}, ErrorCode.MISSING_FIELD),
        ({"target_id": "ana"}, ErrorCode.INVALID_TARGET),
    ):
        with pytest.raises(SignalError) as caught:
            validate({"type": "resume", **target})
        assert caught.value.code == code


def test_ice_restart_goes_to_the_sfu() -> None:
    assert validate({"type": "ice_restart", "target_id": "sfu"}) == {
        "type": "ice_restart",
        "target_id": "sfu",
    }
    with pytest.raises(SignalError) as caught:
        validate({"type": "ice_restart", "target_id": "ana"})
    assert caught.value.code == ErrorCode.INVALID_TARGET


def test_a_publish_offer_may_restart_ice() -> None:
    publish = {"type": "offer", "target_id": "sfu", "pc": "publish", "sdp": SDP}
    assert validate({**publish, "ice_restart": True})["ice_restart"] is True
    assert "ice_restart" not in validate(publish)
    for wrong in (
        {**publish, "ice_restart": "yes"},
        {**publish, "pc": "subscribe", "ice_restart": True},
        {"type": "offer", "target_id": "bob", "sdp": SDP, "ice_restart": True},
        {"type": "answer", "target_id": "sfu", "pc": "subscribe", "sdp": SDP, "ice_restart": True},
    ):
        with pytest.raises(SignalError) as caught:
            validate(wrong)
        assert caught.value.code == ErrorCode.INVALID_FIELD, wrong


def test_decode_rejects_non_objects() -> None:
    with pytest.raises(SignalError) as caught:
        decode("{nope")
    assert caught.value.code == ErrorCode.INVALID_JSON
    with pytest.raises(SignalError) as caught:
        decode("[1, 2]")
    assert caught.value.code == ErrorCode.INVALID_MESSAGE


def test_only_defined_fields_survive() -> None:
    raw = offer(PEER, sender_id="forged", call_id="forged", timestamp="x", extra="junk", id="r1")
    assert validate(raw) == {"type": "offer", "id": "r1", "target_id": PEER, "sdp": SDP}
    sfu = validate(answer("sfu", pc="subscribe"))
    assert sfu["pc"] == "subscribe"


def test_subscribe_goes_to_the_sfu_only() -> None:
    raw = {"type": "subscribe", "target_id": "sfu", "pc": "publish", "sdp": SDP}
    assert validate(raw) == {"type": "subscribe", "target_id": "sfu"}


def test_track_settings_keep_only_what_the_protocol_defines() -> None:
    raw = {
        "type": "track_settings",
        "target_id": "sfu",
        "tracks": [
            {"mid": "1", "width": 320, "height": 180, "junk": 1},
            {"mid": "2", "visible": False},
        ],
    }
    assert validate(raw) == {
        "type": "track_settings",
        "target_id": "sfu",
        "tracks": [
            {"mid": "1", "width": 320, "height": 180, "visible": True},
            {"mid": "2", "visible": False},
        ],
    }


def test_sources_survive_on_offers_and_answers() -> None:
    sources = {"0": "microphone", "1": "camera", "2": "screen"}
    assert validate(offer(PEER, sources=sources))["sources"] == sources
    assert validate(answer(PEER, sources={"1": "screen"}))["sources"] == {"1": "screen"}
    sfu = validate(offer("sfu", pc="publish", sources=sources))
    assert sfu["sources"] == sources
    assert "sources" not in validate(offer(PEER))


@pytest.mark.parametrize(
    "sources",
    [
        ["0", "screen"],
        "screen",
        None,
        {"0": "webcam"},
        {"0": "Screen"},
        {"0": 1},
        {"0": None},
        {"0": {"source": "screen"}},
        {"": "camera"},
        {"a b": "camera"},
        {"x" * 65: "camera"},
        {str(i): "camera" for i in range(33)},
    ],
)
def test_bad_sources_are_invalid_fields(sources: Any) -> None:
    with pytest.raises(SignalError) as caught:
        validate(offer(PEER, sources=sources))
    assert caught.value.code == ErrorCode.INVALID_FIELD
    with pytest.raises(SignalError) as caught:
        validate(offer("sfu", pc="publish", sources=sources))
    assert caught.value.code == ErrorCode.INVALID_FIELD
