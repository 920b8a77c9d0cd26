"""media.rtpcount: header-only counting sees what the full receive path sees."""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtcpRrPacket, unpack_remb_fci

from media.rtpcount import vp8_keyframe

from .conftest import Call, eventually


def test_vp8_keyframe_reads_the_descriptor_and_frame_tag() -> None:
    # S=1, PID=0, X=1, I=1 with a 15-bit picture id; tag bit 0 = 0: keyframe
    assert vp8_keyframe(bytes([0x90, 0x80, 0x81, 0x23, 0x10, 0x02]))
    assert not vp8_keyframe(bytes([0x90, 0x80, 0x81, 0x23, 0x11, 0x02]))  # interframe
    assert not vp8_keyframe(bytes([0x80, 0x80, 0x81, 0x23, 0x10]))  # not a frame start
    assert vp8_keyframe(bytes([0x10, 0x00]))  # no extension
    assert vp8_keyframe(bytes([0x90, 0x80, 0x05, 0x00]))  # 7-bit picture id
    assert not vp8_keyframe(b"\x90")


async def test_counting_subscriber_matches_the_full_one(call: Call) -> None:
    await call.join("ana")
    full = await call.join("ben")
    light = await call.join("cy", count_only=True)
    assert light.counter is None or light.counter.streams is not None

    def both_receiving() -> bool:
        a = full.received_from("ana", "video")
        b = light.received_from("ana", "video")
        return bool(a and b and a.frames > 60 and b.frames > 60)

    await eventually(both_receiving, what="frames at both subscribers")
    await asyncio.sleep(1.0)
    for kind in ("audio", "video"):
        a = full.received_from("ana", kind)
        b = light.received_from("ana", kind)
        assert a is not None and b is not None
        # The same stream, sampled a moment apart: frame counts agree closely.
        assert abs(a.frames - b.frames) <= max(5, a.frames // 20), (kind, a, b)
        assert b.keyframes >= 1 and b.first_frame_at is not None
    counter = light.counter
    assert counter is not None
    video = counter.totals("video")
    audio = counter.totals("audio")
    assert video["packets"] > 100 and audio["packets"] > 50
    assert video["lost"] == 0 and audio["lost"] == 0
    assert light.plis_sent == 0


async def test_counting_subscriber_still_sends_reports_and_remb(call: Call) -> None:
    """The server's RTCP work is part of a benchmark: RR and REMB keep coming."""
    await call.join("ana")
    await call.join("cy", count_only=True)
    slot = next(s for s in call.room.participants["cy"]._slots if s.kind == "video")
    sender = slot.transceiver.sender
    seen: list[object] = []
    original = sender._handle_rtcp_packet

    async def record(packet: Any) -> None:
        seen.append(packet)
        await original(packet)

    sender._handle_rtcp_packet = record  # type: ignore[method-assign]

    def got_both() -> bool:
        rr = [p for p in seen if isinstance(p, RtcpRrPacket) and p.reports]
        remb = [p for p in seen if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_APP]
        return bool(rr and remb)

    await eventually(got_both, timeout=10, what="a receiver report and a REMB")
    rr = next(p for p in seen if isinstance(p, RtcpRrPacket) and p.reports)
    report = next(r for r in rr.reports if r.ssrc == sender._ssrc)
    assert report.packets_lost == 0 and report.highest_sequence > 0
    remb = next(p for p in seen if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_APP)
    bitrate, ssrcs = unpack_remb_fci(remb.fci)
    assert ssrcs == [sender._ssrc] and 50_000 < bitrate < 2_000_000
