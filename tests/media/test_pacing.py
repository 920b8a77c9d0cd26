"""The pacer of a subscriber connection (media/_pacer.c, media/pacing.py).

Real loopback UDP and real SRTP, as in test_forwarding (whose helpers these
tests use, on the C fan-out: the pure-Python one is not paced).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from aiortc.rtp import RtpPacket as AiortcPacket

from media import downstream
from media.forwarder import forwardable
from media.pacing import CAREFUL_FACTOR, FACTOR, Pacing
from media.rtpheader import parse_rtp
from media.sendlog import TRANSPORT_OVERHEAD, new_log
from tests.media import test_forwarding as fwd
from tests.support.polling import eventually

#: Video packets of one keyframe: 30 of ~1.1 kB, 33 kB in all.
KEYFRAME_PACKETS = 30
PAYLOAD = 1100


@pytest.fixture(autouse=True)
def c_fanout() -> Iterator[None]:
    if downstream.C is None:
        if os.environ.get("CI") == "true":
            pytest.fail("media._udpsend was not built")
        pytest.skip("media._udpsend not built")
    fwd.IMPL = downstream.C
    yield
    for wire in fwd.WIRES:
        wire.close()
    fwd.WIRES.clear()


def keyframe(first_seq: int = 100) -> list[Any]:
    return [
        fwd.vp8(first_seq + i, 90_000, 7, key=i == 0, start=i == 0,
                marker=i == KEYFRAME_PACKETS - 1, size=PAYLOAD)
        for i in range(KEYFRAME_PACKETS)
    ]  # fmt: skip


def arrived(wire: fwd.Wire, into: list[bytes]) -> int:
    into.extend(wire.received())
    return len(into)


async def test_without_a_rate_a_frame_leaves_at_once() -> None:
    pacing = Pacing("t")
    try:
        log = new_log(True)
        video, _ = fwd._fast(twcc=log)
        pacing.attach(video.stream)
        assert video.stream.pacer is pacing.pacer
        for entry in keyframe():
            assert video.forward(entry)
        video.flush()
        wire = fwd._SENT[id(video)].wire
        assert len(wire.received()) == KEYFRAME_PACKETS
        assert pacing.pacer.paced == 0 and pacing.pacer.queued == 0
        # What left unpaced runs up no debt: once paced, the next frame starts at once.
        pacing.set_estimate(800_000.0)
        for entry in keyframe(first_seq=100 + KEYFRAME_PACKETS):
            assert video.forward(entry)
        video.flush()
        assert 0 < len(wire.received()) < KEYFRAME_PACKETS
    finally:
        await pacing.close()


async def test_a_keyframe_leaves_at_the_pace_and_its_numbers_are_logged_as_it_leaves() -> None:
    pacing = Pacing("t")
    try:
        log = new_log(True)
        video, _ = fwd._fast(twcc=log)
        pacing.attach(video.stream)
        estimate = 800_000.0  # paced at 1 Mbit/s: 33 kB take ~0.26 s
        pacing.set_estimate(estimate, careful=True)  # soon after a drop: at the estimate
        assert pacing.pacer.rate == pytest.approx(CAREFUL_FACTOR * estimate)
        pacing.set_estimate(estimate)
        rate = FACTOR * estimate
        assert pacing.pacer.rate == pytest.approx(rate) and FACTOR > CAREFUL_FACTOR
        for entry in keyframe():
            video.forward(entry)
        video.flush()
        wire = fwd._SENT[id(video)].wire
        got: list[bytes] = []
        # The first few leave at once (the bucket holds 40 ms of the rate), the rest wait.
        assert 0 < arrived(wire, got) < KEYFRAME_PACKETS // 2
        assert pacing.pacer.queued == KEYFRAME_PACKETS - len(got)
        await eventually(
            lambda: arrived(wire, got) == KEYFRAME_PACKETS,
            timeout=5.0, interval=0.01, message="the whole keyframe",
        )  # fmt: skip
        numbers = [AiortcPacket.parse(p, fwd._SENT[id(video)].ext_map) for p in got]
        assert [p.extensions.transport_sequence_number for p in numbers] == list(
            range(KEYFRAME_PACKETS)
        )
        entries = log.lookup(0, KEYFRAME_PACKETS)
        times = [e[0] for e in entries if e is not None]
        sizes = [e[1] for e in entries if e is not None]
        assert len(times) == KEYFRAME_PACKETS and times == sorted(times)
        # What left after the first burst left at the rate, not faster (a little
        # slack for the drain's ticks).
        burst = max(rate / 8 * 0.04, 2500)
        paced_bytes = sum(sizes) - burst - sizes[-1]
        spread = (times[-1] - times[0]) / 1e6
        assert spread >= 0.8 * paced_bytes * 8 / rate
        assert pacing.pacer.take_longest_wait() >= 0.8 * paced_bytes * 8 / rate
        assert log.disorder == 0
    finally:
        await pacing.close()


async def test_small_packets_are_paced_with_their_ip_and_udp_headers_counted() -> None:
    """A link carries a datagram's IP and UDP headers too: 28 bytes, a fifth of a
    small packet. Paced without them, a stream of small packets runs over a link
    whose rate the estimate (which counts them) found."""
    pacing = Pacing("t")
    try:
        log = new_log(True)
        video, _ = fwd._fast(twcc=log)
        pacing.attach(video.stream)
        rate = 200_000.0
        pacing.set_estimate(rate, careful=True)
        count = 60
        for i in range(count):
            video.forward(fwd.vp8(500 + i, 90_000, 7, key=i == 0, start=i == 0,
                                  marker=i == count - 1, size=100))  # fmt: skip
        video.flush()
        wire = fwd._SENT[id(video)].wire
        got: list[bytes] = []
        await eventually(
            lambda: arrived(wire, got) == count, timeout=5.0, interval=0.01, message="all"
        )
        entries = [e for e in log.lookup(0, count) if e is not None]
        sizes = [size for _, size in entries]
        # Logged as on the link: the datagram (plaintext and SRTP tag), IP and UDP.
        assert {size - len(p) for size, p in zip(sizes, got, strict=True)} == {
            10 + TRANSPORT_OVERHEAD
        }
        paced_bytes = sum(sizes) - max(rate / 8 * 0.04, 2500) - sizes[-1]
        spread = (entries[-1][0] - entries[0][0]) / 1e6
        assert spread >= 0.9 * paced_bytes * 8 / rate
    finally:
        await pacing.close()


async def test_streams_of_one_connection_leave_in_number_order_behind_what_waits() -> None:
    pacing = Pacing("t")
    try:
        log = new_log(True)
        video, video_map = fwd._fast(twcc=log)
        audio, audio_map = fwd._fast("audio", seq=10, ts=0, twcc=log)
        wire = fwd._SENT[id(video)].wire
        audio_wire = fwd._SENT[id(audio)].wire
        audio.use_output(wire.output())  # one socket, as one bundled connection
        audio_wire.close()
        for fast in (video, audio):
            pacing.attach(fast.stream)
        pacing.set_estimate(400_000.0)
        for entry in keyframe():
            video.forward(entry)
        video.flush()
        header = struct.pack("!BBHII", 0x80, 111, 50, 960, 0x3333)
        assert audio.forward(forwardable(parse_rtp(header + b"opus-frame"), True, None))
        audio.flush()
        got: list[bytes] = []
        await eventually(
            lambda: arrived(wire, got) == KEYFRAME_PACKETS + 1,
            timeout=5.0, interval=0.01, message="the keyframe and the audio",
        )  # fmt: skip
        numbers = []
        for data in got:
            kind_map = audio_map if data[1] & 0x7F == 111 else video_map
            numbers.append(AiortcPacket.parse(data, kind_map).extensions.transport_sequence_number)
        assert numbers == list(range(KEYFRAME_PACKETS + 1))
        assert got[-1][1] & 0x7F == 111  # the audio waited its turn
        assert log.disorder == 0
    finally:
        await pacing.close()


async def test_a_queue_too_long_for_the_rate_drains_within_half_a_second() -> None:
    pacing = Pacing("t")
    try:
        video, _ = fwd._fast(twcc=new_log(True))
        pacing.attach(video.stream)
        pacing.set_estimate(8_000.0)  # 1.25 kB/s: 33 kB would take 26 s
        for entry in keyframe():
            video.forward(entry)
        video.flush()
        wire = fwd._SENT[id(video)].wire
        got: list[bytes] = []
        await eventually(
            lambda: arrived(wire, got) == KEYFRAME_PACKETS,
            timeout=2.0, interval=0.02, message="the keyframe, drained faster",
        )  # fmt: skip
        assert pacing.pacer.take_longest_wait() < 1.0
    finally:
        await pacing.close()


async def test_a_probe_raises_the_pace_while_it_runs() -> None:
    pacing = Pacing("t")
    try:
        video, _ = fwd._fast(twcc=new_log(True))
        pacing.attach(video.stream)
        pacing.set_estimate(80_000.0)  # 100 kbit/s: the keyframe would take 2.6 s
        pacing.boost(10_000_000.0)  # a probe at 10 Mbit/s: ~30 ms
        assert pacing.pacer.rate == pytest.approx(FACTOR * 80_000.0)
        for entry in keyframe():
            video.forward(entry)
        video.flush()
        wire = fwd._SENT[id(video)].wire
        got: list[bytes] = []
        await eventually(
            lambda: arrived(wire, got) == KEYFRAME_PACKETS,
            timeout=2.0, interval=0.01, message="the keyframe at the probe's rate",
        )  # fmt: skip
        assert pacing.pacer.take_longest_wait() < 0.5
        pacing.boost(0.0)
        assert pacing.pacer.boost == 0.0
    finally:
        await pacing.close()


async def test_close_sends_what_waits_and_is_idempotent() -> None:
    pacing = Pacing("t")
    video, _ = fwd._fast(twcc=new_log(True))
    pacing.attach(video.stream)
    pacing.set_estimate(100_000.0)
    for entry in keyframe():
        video.forward(entry)
    video.flush()
    assert pacing.pacer.queued > 0
    await pacing.close()
    await pacing.close()
    assert pacing.pacer.queued == 0
    assert len(fwd._SENT[id(video)].wire.received()) == KEYFRAME_PACKETS


async def test_a_full_queue_drops_and_logs_the_numbers_as_sent() -> None:
    """Beyond a megabyte waiting, a batch is dropped (as a full network queue would)
    and its numbers logged, so that the subscriber's feedback reports them lost."""
    pacing = Pacing("t")
    try:
        log = new_log(True)
        video, _ = fwd._fast(twcc=log)
        pacing.attach(video.stream)
        pacing.set_estimate(1_000.0)
        frames = 0
        while pacing.pacer.dropped == 0 and frames < 100:
            for entry in keyframe(first_seq=100 + frames * KEYFRAME_PACKETS):
                video.forward(entry)
            video.flush()
            frames += 1
        assert pacing.pacer.dropped > 0
        assert pacing.pacer.queued_bytes <= 1 << 20
        assert log.packets == pacing.pacer.dropped + (
            frames * KEYFRAME_PACKETS - pacing.pacer.dropped - pacing.pacer.queued
        )
    finally:
        await pacing.close()


def test_bad_settings_are_refused() -> None:
    from media import _udpsend

    pacer = _udpsend.Pacer()
    with pytest.raises(ValueError):
        pacer.rate = -1.0
    with pytest.raises(ValueError):
        pacer.boost = float("nan")
    with pytest.raises(TypeError):
        pacer.on_queued = 3  # type: ignore[assignment]
    down = _udpsend.Down(True, 3000)
    with pytest.raises(TypeError):
        down.pacer = object()  # type: ignore[assignment]
    down.pacer = pacer
    down.pacer = None
    assert down.pacer is None
    assert pacer.drain() == 0
