"""Forwarding jitter buffers: prompt audio, whole video frames, bounded waits."""

from __future__ import annotations

from dataclasses import dataclass

from media.loadtest.frames import EncodedFrame
from media.loadtest.reassembly import AudioForwardingBuffer, VideoForwardingBuffer

VP8 = {96: "vp8"}


@dataclass
class Pkt:
    sequence_number: int
    timestamp: int
    marker: int
    payload: bytes
    _data: bytes
    payload_type: int = 96
    ssrc: int = 1234


def vp8_frame(first_seq: int, ts: int, parts: int, key: bool) -> list[Pkt]:
    packets = []
    for i in range(parts):
        start = i == 0
        descriptor = bytes([0x10 if start else 0x00])
        body = (b"\x00" if key else b"\x01") if start else bytes([i])
        packets.append(
            Pkt((first_seq + i) & 0xFFFF, ts, int(i == parts - 1), descriptor + body, body)
        )
    return packets


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_video() -> tuple[VideoForwardingBuffer, list[EncodedFrame], list[int], Clock]:
    out: list[EncodedFrame] = []
    losses: list[int] = []
    clock = Clock()
    buf = VideoForwardingBuffer(
        VP8, 90000, out.append, lambda: losses.append(1), incomplete_timeout=0.2, clock=clock
    )
    return buf, out, losses, clock


def test_audio_is_emitted_at_once_and_duplicates_dropped() -> None:
    out: list[EncodedFrame] = []
    buf = AudioForwardingBuffer({111: "opus"}, 48000, out.append)
    buf.add(Pkt(10, 1000, 1, b"a", b"a", 111))
    buf.add(Pkt(12, 2920, 1, b"c", b"c", 111))  # 11 lost: no waiting
    buf.add(Pkt(11, 1960, 1, b"b", b"b", 111))  # late: dropped, never reordered back
    buf.add(Pkt(12, 2920, 1, b"c", b"c", 111))  # duplicate
    assert [f.data for f in out] == [b"a", b"c"]
    assert [f.pts for f in out] == [0, 1920]


def test_video_frame_emitted_on_marker_when_complete() -> None:
    buf, out, _, _ = make_video()
    packets = vp8_frame(100, 9000, 3, key=True)
    buf.add(packets[0])
    buf.add(packets[2])
    assert out == []
    buf.add(packets[1])  # retransmission completes it
    assert len(out) == 1 and out[0].keyframe
    assert out[0].data == b"\x00\x01\x02"


def test_retransmission_completing_two_frames_emits_both_in_order() -> None:
    buf, out, _, _ = make_video()
    f1 = vp8_frame(100, 3000, 2, key=True)
    f2 = vp8_frame(102, 6000, 2, key=False)
    f3 = vp8_frame(104, 9000, 1, key=False)
    for p in [f1[0], f2[0], f2[1], f3[0]]:
        buf.add(p)
    assert out == []  # frame 1 incomplete blocks the later ones
    buf.add(f1[1])
    assert [f.pts for f in out] == [0, 3000, 6000]


def test_incomplete_frame_dropped_after_timeout_then_waits_for_keyframe() -> None:
    buf, out, losses, clock = make_video()
    for p in vp8_frame(100, 3000, 1, key=True):
        buf.add(p)
    lost = vp8_frame(101, 6000, 3, key=False)
    buf.add(lost[0])  # lost[1] never arrives
    buf.add(lost[2])
    clock.now = 0.25
    for p in vp8_frame(104, 9000, 1, key=False):
        buf.add(p)
    assert losses == [1]
    assert len(out) == 1  # the delta after the loss is held back
    for p in vp8_frame(105, 12000, 2, key=True):
        buf.add(p)
    assert len(out) == 2 and out[1].keyframe
    assert out[1].pts == 9000
    buf.add(lost[1])  # too late: ignored
    assert len(out) == 2


def test_a_frame_lost_whole_holds_the_next_until_its_repair() -> None:
    buf, out, losses, _ = make_video()
    for p in vp8_frame(100, 3000, 1, key=True):
        buf.add(p)
    lost = vp8_frame(101, 6000, 1, key=False)  # one packet: nothing of it arrives
    for p in vp8_frame(102, 9000, 1, key=False):
        buf.add(p)
    assert len(out) == 1  # complete, but a decoder needs the frame before it
    buf.add(lost[0])  # the retransmission
    assert [f.pts for f in out] == [0, 3000, 6000]
    assert losses == [] and buf.frames_dropped == 0


def test_a_frame_lost_whole_and_never_repaired_counts_as_lost() -> None:
    buf, out, losses, clock = make_video()
    for p in vp8_frame(100, 3000, 1, key=True):
        buf.add(p)
    for p in vp8_frame(102, 9000, 1, key=False):  # 101, a whole frame, lost
        buf.add(p)
    clock.now = 0.1
    for p in vp8_frame(103, 12000, 1, key=False):
        buf.add(p)
    assert len(out) == 1 and losses == []
    clock.now = 0.25
    for p in vp8_frame(104, 15000, 1, key=False):
        buf.add(p)
    assert losses == [1] and buf.frames_dropped == 4  # the lost one, and 3 deltas after it
    assert len(out) == 1
    for p in vp8_frame(106, 21000, 1, key=True):  # a keyframe doesn't wait for 105
        buf.add(p)
    assert len(out) == 2 and out[1].keyframe and out[1].pts == 18000


def test_sequence_and_timestamp_wraparound() -> None:
    buf, out, _, _ = make_video()
    for p in vp8_frame(0xFFFE, 0xFFFFFFFF - 1000, 3, key=True):
        buf.add(p)
    for p in vp8_frame(1, 2000, 1, key=False):
        buf.add(p)
    assert len(out) == 2
    assert out[1].pts - out[0].pts == 3001
