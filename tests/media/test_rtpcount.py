"""media.loadtest.rtpcount: header-only counting sees what the full receive path sees."""

from __future__ import annotations

import dataclasses

from media.config import MediaConfig
from media.loadtest.preencoded import EncodedClip
from media.loadtest.rtpcount import vp8_keyframe
from tests.support.polling import eventually

from .conftest import Call


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

    await eventually(both_receiving, message="frames at both subscribers")

    def counts_agree() -> bool:
        # The same stream, sampled a moment apart: frame counts agree closely.
        for kind in ("audio", "video"):
            a = full.received_from("ana", kind)
            b = light.received_from("ana", kind)
            if a is None or b is None or abs(a.frames - b.frames) > max(5, a.frames // 20):
                return False
        return True

    await eventually(counts_agree, message="the counting and the full subscriber agreeing")
    for kind in ("audio", "video"):
        b = light.received_from("ana", kind)
        assert b is not None and b.keyframes >= 1 and b.first_frame_at is not None
    counter = light.counter
    assert counter is not None
    video = counter.totals("video")
    audio = counter.totals("audio")
    assert video["packets"] > 100 and audio["packets"] > 50
    assert video["lost"] == 0 and audio["lost"] == 0
    assert light.plis_sent == 0


async def test_counting_subscriber_still_sends_reports_and_transport_feedback(call: Call) -> None:
    """The server's RTCP work is part of a benchmark: RR and transport-wide feedback
    keep coming (transport-cc answered, as Chrome does: then no REMB)."""
    await call.join("ana")
    client = await call.join("cy", count_only=True)
    participant = call.room.participants["cy"]
    slot = next(s for s in participant._slots if s.kind == "video")
    feedback = participant._feedback  # the server's reader of cy's RTCP (media.feedback)
    transport = participant._transport  # its send-side estimate (media.transportcc)

    def got_both() -> bool:
        report = slot.fast.last_report
        # A report sent before cy saw any of our sender reports has no RTT yet.
        return report is not None and report.rtt is not None and transport.feedbacks >= 5

    await eventually(got_both, timeout=10, message="a receiver report with an RTT and feedback")
    report = slot.fast.last_report
    assert report is not None and report.cumulative_lost == 0 and report.fraction_lost == 0
    assert report.rtt is not None and 0 <= report.rtt < 1.0  # LSR/DLSR against our SRs
    assert transport.negotiated and transport.lost == 0
    assert transport.estimate is not None and transport.estimate > 50_000
    assert client.transport_feedback is not None and client.transport_feedback.feedbacks_sent >= 5
    assert feedback.remb is None and client.rembs_sent == 0


async def test_counting_subscriber_sends_remb_without_transport_cc(
    config: MediaConfig, video_clip: EncodedClip, audio_clip: EncodedClip
) -> None:
    call = Call(dataclasses.replace(config, transport_cc=False), video_clip, audio_clip)
    try:
        await call.join("ana")
        client = await call.join("cy", count_only=True)
        feedback = call.room.participants["cy"]._feedback
        await eventually(lambda: feedback.remb is not None, timeout=10, message="a REMB")
        assert feedback.remb is not None and 50_000 < feedback.remb < 2_000_000
        assert client.transport_feedback is None
    finally:
        await call.close()
