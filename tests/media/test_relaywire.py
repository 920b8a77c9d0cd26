"""The relay's datagram format is network input: it must survive garbage, truncated
and forged datagrams (media/relaywire.py), and the span state off the bus too
(media/span.py's parse_state)."""

from __future__ import annotations

import random

import pytest

from media import relaywire
from media.downstream import PacketTuple
from media.relay import LEVEL_ID, parse_addr, rtp_body
from media.rtpheader import parse_rtp
from media.span import parse_state

KEY = relaywire.relay_key("a cluster secret of at least 32 chars")
OTHER = relaywire.relay_key("another cluster's secret, 32+ chars")


def frame(kind: int = relaywire.RTP, body: bytes = b"\x80" + bytes(15)) -> bytes:
    return relaywire.encode(KEY, kind, 7, 1_000, body)


def test_a_frame_round_trips() -> None:
    parsed = relaywire.parse(KEY, frame())
    assert (parsed.type, parsed.stream, parsed.counter) == (relaywire.RTP, 7, 1_000)
    assert parsed.body == b"\x80" + bytes(15)
    pli = relaywire.parse(KEY, frame(relaywire.PLI, b""))
    assert pli.type == relaywire.PLI and pli.body == b""
    nack = relaywire.parse(KEY, frame(relaywire.NACK, relaywire.nack_body([65535, 0, 7])))
    assert relaywire.nack_seqs(nack.body) == [65535, 0, 7]
    assert len(relaywire.nack_body(list(range(100)))) == 2 * relaywire.MAX_NACK
    switched = relaywire.parse(KEY, frame(relaywire.RTP_SWITCH))
    assert switched.type == relaywire.RTP_SWITCH and len(switched.body) == 16


def test_forged_and_foreign_datagrams_are_refused() -> None:
    with pytest.raises(relaywire.BadFrame) as foreign:
        relaywire.parse(KEY, relaywire.encode(OTHER, relaywire.RTP, 7, 1, bytes(20)))
    assert foreign.value.reason == "auth"
    good = bytearray(frame())
    for index in range(2, len(good)):  # any byte changed after the magic
        forged = bytearray(good)
        forged[index] ^= 0x01
        with pytest.raises(relaywire.BadFrame) as exc:
            relaywire.parse(KEY, bytes(forged))
        assert exc.value.reason == "auth", index


def test_truncated_datagrams_are_refused() -> None:
    good = frame()
    for size in range(len(good)):
        with pytest.raises(relaywire.BadFrame):
            relaywire.parse(KEY, good[:size])


def test_garbage_never_raises_anything_else() -> None:
    rng = random.Random(15)
    for _ in range(5_000):
        size = rng.choice([0, 1, 16, 31, 32, 33, 64, 200, 1600])
        data = bytes(rng.getrandbits(8) for _ in range(size))
        if rng.random() < 0.5 and size >= 2:
            data = b"HR" + data[2:]
        with pytest.raises(relaywire.BadFrame):
            relaywire.parse(KEY, data)


def test_signed_frames_that_break_the_rules_are_refused() -> None:
    head = relaywire._HEAD  # a peer with the secret but another version or type

    def signed(version: int, kind: int, body: bytes) -> bytes:
        data = head.pack(b"HR", version, kind, 1, 1) + body
        return data + relaywire._tag(KEY, data)

    for data, reason in [
        (signed(2, relaywire.RTP, bytes(12)), "version"),
        (signed(1, 9, bytes(12)), "type"),
        (signed(1, relaywire.PLI, b"x"), "body"),
        (signed(1, relaywire.RTP, bytes(11)), "body"),
        (signed(1, relaywire.RTP_SWITCH, b""), "body"),
        (signed(1, relaywire.NACK, b""), "body"),
        (signed(1, relaywire.NACK, b"\x00\x01\x02"), "body"),
        (signed(1, relaywire.NACK, bytes(2 * relaywire.MAX_NACK + 2)), "body"),
        (bytes(relaywire.MAX_DATAGRAM + 1), "long"),
        (b"XX" + frame()[2:], "magic"),
    ]:
        with pytest.raises(relaywire.BadFrame) as exc:
            relaywire.parse(KEY, data)
        assert exc.value.reason == reason
    with pytest.raises(ValueError, match="unknown relay frame type"):
        relaywire.encode(KEY, 9, 1, 1)


def test_the_replay_window_refuses_repeats_and_the_too_old() -> None:
    window = relaywire.ReplayWindow(size=64)
    assert window.accept(100)
    assert not window.accept(100)  # replayed
    assert window.accept(98) and window.accept(99)  # reordered, new
    assert not window.accept(98)
    assert window.accept(200)  # a jump ahead
    assert not window.accept(136)  # 64 behind the newest: too old
    assert window.accept(137) and not window.accept(137)
    assert window.accept(10_000)


def test_a_restarted_sender_counts_on_above_its_old_counters() -> None:
    old = relaywire.Counter()
    for _ in range(1000):
        last = old.take()
    assert relaywire.Counter().take() > last


def test_relayed_rtp_keeps_the_numbers_and_the_audio_level() -> None:
    payload = b"opus-frame"
    data = b"\x90\x6f\x00\x01" + bytes(8) + b"\xbe\xde\x00\x01\x10\x2a\x00\x00" + payload
    end = 20 + len(payload)
    entry: PacketTuple = (data, 20, end, 4242, 987654, True, True, -1, -1, -1, -1, 0x2A)
    packet = parse_rtp(rtp_body(entry, 111, 5))
    assert (packet.sequence_number, packet.timestamp, packet.marker) == (4242, 987654, True)
    assert packet.payload_type == 111 and packet.ssrc == 5
    assert packet.extensions is not None and packet.extensions[LEVEL_ID] == b"\x2a"
    assert packet.data[packet.payload_start : packet.payload_end] == payload
    silent: PacketTuple = (data, 20, end, 4243, 987654, False, False, -1, -1, -1, -1, -1)
    video = parse_rtp(rtp_body(silent, 96, 5))
    assert video.extensions is None or LEVEL_ID not in video.extensions


def test_relay_addresses_and_span_states_are_checked() -> None:
    assert parse_addr("10.0.0.5:7882") == ("10.0.0.5", 7882)
    assert parse_addr("[::1]:7882") == ("::1", 7882)
    for bad in (None, 7, "", "host", ":1", "h:0", "h:70000", "h:x"):
        assert parse_addr(bad) is None
    track = {
        "stream": 3,
        "participant_id": "ana",
        "kind": "video",
        "source": "camera",
        "codec": {"mimeType": "video/VP8", "clockRate": 90000, "payloadType": 96},
    }
    state = {"v": 1, "node": "n1", "relay": "127.0.0.1:9", "subscribers": 2, "tracks": [track]}
    parsed = parse_state(state)
    assert parsed is not None and parsed.subscribers == 2 and list(parsed.tracks) == [3]
    bad_states: list[object] = [None, [], {**state, "v": 2}, {**state, "relay": "x"}]
    for bad_state in [*bad_states, {**state, "node": 1}]:
        assert parse_state(bad_state) is None
    for bad_track in (
        {**track, "stream": 0},
        {**track, "kind": "data"},
        {**track, "source": "window"},
        {**track, "codec": {"mimeType": "video/AV1", "clockRate": 90000}},
        {**track, "codec": {"mimeType": "audio/opus", "clockRate": 48000}},  # not video
        {**track, "codec": {"mimeType": "video/VP8", "clockRate": 90000, "payloadType": 300}},
        "garbage",
    ):
        parsed = parse_state({**state, "tracks": [bad_track]})
        assert parsed is not None and parsed.tracks == {}, bad_track
