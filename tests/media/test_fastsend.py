"""media.fastsend builds the same packets aiortc's own sender would."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from aiortc import RTCRtpSender
from aiortc.clock import current_ntp_time
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, wrap_rtx

from media.fastsend import FastRtp, ntp_now
from media.forwarder import DownTrack
from media.frames import EncodedFrame, time_base_for
from media.packer import Packer, shared_vp8_chunks

from .conftest import Call, eventually


async def test_room_sends_from_the_fan_out(call: Call) -> None:
    for name in ("ana", "ben"):
        await call.join(name)
    slots = call.room.participants["ben"]._slots
    assert slots

    def direct() -> bool:
        return all(slot.fast.direct_frames > 10 for slot in slots)

    await eventually(direct, what="frames sent synchronously from the fan-out")
    stats = call.clients["ben"].received_from("ana", "video")
    assert stats is not None and stats.frames > 0
    down: DownTrack = slots[0].down
    assert down.frames_out >= slots[0].fast.direct_frames
    # Video frames of several packets leave in one GSO sendmsg each.
    video = next(slot for slot in slots if slot.kind == "video")
    out = video.fast.out
    assert out is not None and out.dropped == 0
    assert out.syscalls < out.datagrams, (out.syscalls, out.datagrams)
    # Forwarded packets are counted per kind: one per Opus frame, several per
    # VP8 keyframe.
    counts = call.metrics.counts
    assert counts["audio_packets"] == counts["audio_frames"] > 0
    assert counts["video_packets"] > counts["video_frames"] > 0


class _Transport:
    state = "new"
    _RTCDtlsTransport__tx_bytes = 0
    _RTCDtlsTransport__tx_packets = 0


def _sender() -> tuple[RTCRtpSender, HeaderExtensionsMap]:
    sender = RTCRtpSender("video", _Transport())  # type: ignore[arg-type]
    params = RTCRtpParameters(
        headerExtensions=[
            RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
            RTCRtpHeaderExtensionParameters(
                id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
            ),
        ]
    )
    ext_map = HeaderExtensionsMap()
    ext_map.configure(params)
    getattr(sender, "_RTCRtpSender__rtp_header_extensions_map").configure(params)  # noqa: B009
    setattr(sender, "_RTCRtpSender__mid", "3")  # noqa: B010
    return sender, ext_map


def _fast(sender: RTCRtpSender) -> FastRtp:
    fast = FastRtp(sender, Packer("video/vp8", 90000))
    # The sequence number wraps inside the frame.
    fast.prepare(payload_type=96, sequence_number=65534, timestamp_origin=0xFFFFFF00)
    return fast


async def test_vp8_packets_match_aiortc() -> None:
    sender, ext_map = _sender()
    fast = _fast(sender)
    data = random.Random(1).randbytes(5000)
    frame = EncodedFrame(data, 9000, time_base_for(90000), True)
    picture_id = fast.packer.picture_id
    before = current_ntp_time() >> 14
    packets = [RtpPacket.parse(p, ext_map) for p in fast._packets(frame, frame.pts)]
    after = current_ntp_time() >> 14

    expected = Vp8Encoder._packetize(data, picture_id)
    assert [p.payload for p in packets] == expected
    assert [p.sequence_number for p in packets] == [65534, 65535, 0, 1]
    assert [p.marker for p in packets] == [0, 0, 0, 1]
    assert {p.timestamp for p in packets} == {(0xFFFFFF00 + 9000) & 0xFFFFFFFF}
    assert {p.payload_type for p in packets} == {96}
    assert {p.ssrc for p in packets} == {sender._ssrc}
    for p in packets:
        assert p.extensions.mid == "3"
        assert p.extensions.abs_send_time is not None
        assert (before - 1) & 0xFFFFFF <= p.extensions.abs_send_time <= (after + 1) & 0xFFFFFF
    assert fast.packer.picture_id == (picture_id + 1) % (1 << 15)
    # the split is shared between subscribers
    assert shared_vp8_chunks(data) is shared_vp8_chunks(data)
    assert abs(ntp_now() - current_ntp_time()) < (1 << 32) // 100  # within 10 ms


async def test_retransmission_matches_wrap_rtx() -> None:
    sender, ext_map = _sender()
    fast = _fast(sender)
    setattr(sender, "_RTCRtpSender__rtx_payload_type", 97)  # noqa: B010
    frame = EncodedFrame(b"\x10" + bytes(2000), 3000, time_base_for(90000), False)
    originals = [RtpPacket.parse(p, ext_map) for p in fast._packets(frame, frame.pts)]
    sent: list[bytes] = []

    def capture(data: bytes) -> Any:
        sent.append(data)
        return None

    fast._send = capture  # type: ignore[method-assign]
    rtx_seq = fast.rtx_sequence_number
    await fast.retransmit(originals[1].sequence_number)
    await fast.retransmit(1234)  # not in the history: ignored
    assert len(sent) == 1
    expected = wrap_rtx(
        originals[1], payload_type=97, sequence_number=rtx_seq, ssrc=sender._rtx_ssrc
    ).serialize(ext_map)
    assert sent[0] == expected
    await asyncio.sleep(0)


async def test_opus_packets_match_aiortc() -> None:
    sender, ext_map = _sender()
    fast = FastRtp(sender, Packer("audio/opus", 48000))
    fast.prepare(payload_type=111, sequence_number=65535, timestamp_origin=7)
    frames = [EncodedFrame(bytes([i]) * 80, 960 * i, time_base_for(48000), True) for i in (1, 2)]
    packets = [RtpPacket.parse(fast._packets(f, f.pts)[0], ext_map) for f in frames]
    assert [p.payload for p in packets] == [f.data for f in frames]
    assert [p.sequence_number for p in packets] == [65535, 0]
    assert [p.timestamp for p in packets] == [7 + 960, 7 + 1920]
    assert {p.marker for p in packets} == {1}  # aiortc marks the last packet of each frame
    assert {p.payload_type for p in packets} == {111}
    assert {p.extensions.mid for p in packets} == {"3"}
    assert fast.packets_sent == 2 and fast.octets_sent == 160
    assert fast.rtp_timestamp == 7 + 1920


async def test_sender_reports_carry_the_forwarded_counts(call: Call) -> None:
    """Our own _run_rtcp: subscribers get SRs whose counts match what was sent."""
    for name in ("ana", "ben"):
        await call.join(name)
    slot = next(s for s in call.room.participants["ben"]._slots if s.kind == "video")
    receiver = next(
        t.receiver
        for t in call.clients["ben"].subscribe_pc.getTransceivers()
        if t.kind == "video" and t.receiver.track is not None
    )

    async def reported() -> int:
        stats = await receiver.getStats()
        remote = [s for s in stats.values() if s.type == "remote-outbound-rtp"]
        return remote[0].packetsSent if remote else 0

    for _ in range(100):  # reports come every 0.5-1.5 s
        count = await reported()
        if count > 50:
            break
        await asyncio.sleep(0.1)
    # A report counts what was sent up to it.
    assert 50 < count <= slot.fast.packets_sent
    sender_stats = await slot.transceiver.sender.getStats()
    outbound = [s for s in sender_stats.values() if s.type == "outbound-rtp"]
    assert outbound and 0 < outbound[0].packetsSent <= slot.fast.packets_sent
