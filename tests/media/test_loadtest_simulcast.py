"""The load tester publishes simulcast (issue #13 item 9): real aiortc peers through a Room.

One :class:`~media.loadtest.sfuclient.SfuClient` publishes three pre-encoded
VP8 layers with rid extensions (:mod:`media.loadtest.simulcast`); two
subscribers tell the layer they get from the keyframes' picture size (the SFU
rewrites SSRCs), one through the pass-through receiver, one counting RTP
headers only (``count_only``).
"""

from __future__ import annotations

import time

import pytest

from media.config import MediaConfig
from media.loadtest.frames import vp8_frame_size
from media.loadtest.metrics import layer_changes, layer_time
from media.loadtest.netcap import WIRE_OVERHEAD, ReceiveCap
from media.loadtest.preencoded import EncodedClip
from media.loadtest.sfuclient import SfuClient, TrackStats
from media.loadtest.simulcast import (
    SimulcastClips,
    SimulcastSender,
    answered_layers,
    munge_offer,
    simulcast_clips,
)
from tests.support.polling import eventually

from .conftest import Call


@pytest.fixture(scope="module")
def layers() -> SimulcastClips:
    # Small frames, a two-second loop: cheap to encode and to send.
    return simulcast_clips(320, 180, frames=30, fps=15, bitrate=300_000)


def video(client: SfuClient) -> TrackStats:
    stats = client.received_from("pub", "video")
    return stats if stats is not None else TrackStats("video", "", None, 0.0)


async def all_on(subscribers: list[SfuClient], size: tuple[int, int], timeout: float) -> None:
    def on_size() -> list[str]:
        return [s.id for s in subscribers if video(s).size != size]

    await eventually(lambda: not on_size(), timeout=timeout, message=f"everyone on {size}")


def test_clips_and_offer(layers: SimulcastClips) -> None:
    assert layers.rids == ("q", "h", "f")
    assert layers.sizes == ((80, 44), (160, 90), (320, 180))
    for clip, size in zip(layers.clips, layers.sizes, strict=True):
        assert vp8_frame_size(clip.frames[0][0]) == size  # keyframe: its size
        assert vp8_frame_size(clip.frames[1][0]) is None  # interframe
    assert layers.layer_of(160, 90) == "h" and layers.layer_of(1, 1) is None
    sdp = "\r\n".join(
        [
            "v=0",
            "a=group:BUNDLE 0 1",
            "m=audio 9 UDP/TLS/RTP/SAVPF 96",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=mid:0",
            "m=video 9 UDP/TLS/RTP/SAVPF 97 98",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "a=mid:1",
            "a=ssrc-group:FID 1 2",
            "a=ssrc:1 cname:x",
            "a=ssrc:2 cname:x",
            "a=rtpmap:97 VP8/90000",
            "a=rtpmap:98 rtx/90000",
            "",
        ]
    )
    offer = munge_offer(sdp, "1")
    assert offer.payload_type == 97
    # Ids no m-section of the bundle uses (1, 2, 3 are taken).
    assert offer.extension_ids == {
        "urn:ietf:params:rtp-hdrext:sdes:mid": 1,
        "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id": 4,
        "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id": 5,
    }
    video_section = offer.sdp.split("m=video")[1]
    assert "a=ssrc" not in video_section  # browsers don't signal simulcast SSRCs
    assert "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f" in offer.sdp
    assert "a=ssrc" not in offer.sdp.split("m=audio")[1].split("m=video")[0]
    with pytest.raises(ValueError, match="no video m-section 7"):
        munge_offer(sdp, "7")
    assert answered_layers("m=video 9\r\na=mid:1\r\na=simulcast:recv q;h;f\r\n", "1") == (
        "q",
        "h",
        "f",
    )
    assert answered_layers("m=video 9\r\na=mid:1\r\n", "1") == ()


async def test_subscribers_get_the_top_layer_then_move_down_when_it_stops(
    config: MediaConfig, layers: SimulcastClips, audio_clip: EncodedClip
) -> None:
    call = Call(config, None, audio_clip)
    t0 = time.monotonic()
    try:
        publisher = await call.join("pub", simulcast=layers)
        subscribers = [
            await call.join("sub1", publish=False),
            await call.join("sub2", publish=False, count_only=True),
        ]
        _, mid, top = layers.sizes
        await all_on(subscribers, top, timeout=15)
        assert publisher.simulcast_layers == ("q", "h", "f")
        sender = publisher.simulcast
        assert sender is not None
        # Every layer is sent (the SFU takes the highest for each subscriber).
        await eventually(lambda: all(la.frames_sent > 15 for la in sender.layers.values()))
        # (The very first frames may be of a lower layer: the one whose packets came first.)
        seen = {s.id: len(video(s).sizes) for s in subscribers}
        frames = {s.id: video(s).frames for s in subscribers}

        paused_at = time.monotonic()
        sender.pause("f")
        await all_on(subscribers, mid, timeout=6)
        moved_after = time.monotonic() - paused_at
        await eventually(lambda: all(video(s).frames >= frames[s.id] + 30 for s in subscribers))
        names = {size: rid for rid, size in zip(layers.rids, layers.sizes, strict=True)}
        for sub in subscribers:
            stats = video(sub)
            assert [(w, h) for _, w, h in stats.sizes[seen[sub.id] - 1 :]] == [top, mid], sub.id
            assert stats.size_switches == seen[sub.id]
            # What the report shows: the layer over time (rids), time on each.
            changes = layer_changes(stats, names, t0)
            assert [c.layer for c in changes[seen[sub.id] - 1 :]] == ["f", "h"]
            spent = layer_time(changes, time.monotonic() - t0)
            assert spent["f"] > 0.5 and spent["h"] > 1.0, spent
            # The SFU notices that a layer stopped only at the second
            # receiver-report tick (0.5-1.5 s apart) after its last packet,
            # then waits for the keyframe of the layer below that it asks for:
            # this freeze is about 0.7-3 s, so issue #13's "no freeze over 1 s"
            # does not hold when the layer a subscriber is on stops dead.
            assert stats.max_gap < 3.5, (sub.id, stats.max_gap)
            assert stats.long_freezes <= 1, sub.id
        assert moved_after < 4.0
        # The SFU asked for a keyframe of the middle layer, and got one.
        assert sender.layers["h"].keyframe_requests >= 1
        assert sender.layers["h"].keyframes_forced >= 1
        long_freezes = {s.id: video(s).long_freezes for s in subscribers}

        sender.resume("f")
        await all_on(subscribers, top, timeout=6)
        for sub in subscribers:
            # The up-switch happens at a keyframe of the top layer: no new freeze.
            assert video(sub).long_freezes == long_freezes[sub.id]
            assert [(w, h) for _, w, h in video(sub).sizes[-3:]] == [top, mid, top]
    finally:
        await call.close()


def test_receive_cap_is_a_shaper_with_a_bounded_queue() -> None:
    now = [0.0]
    # 10 kB/s, a 6 kB burst, 0.3 s of queue (tc's tbf rate/burst/latency)
    cap = ReceiveCap(80_000, burst_bytes=6000, queue_s=0.3, clock=lambda: now[0])
    size = 1000 - WIRE_OVERHEAD  # 1000 bytes on the wire
    waits = [cap.delay(size) for _ in range(10)]
    # The burst passes at once, then each waits 0.1 s longer; past 0.3 s: dropped.
    assert waits[:6] == [0.0] * 6
    assert waits[6:9] == pytest.approx([0.1, 0.2, 0.3])
    assert waits[9] is None
    assert (cap.passed, cap.dropped, cap.dropped_bytes, cap.delayed) == (9, 1, 1000, 3)
    assert cap.max_delay == pytest.approx(0.3)
    now[0] += 0.35  # the queue drained to 0.05 s, no tokens saved meanwhile
    assert cap.delay(size) == pytest.approx(0.05)
    now[0] += 10.0  # idle: the bucket refills, never beyond its depth
    assert [cap.delay(size) for _ in range(7)][-2:] == [0.0, pytest.approx(0.1)]
    with pytest.raises(ValueError, match="positive"):
        ReceiveCap(0)


async def test_a_capped_subscriber_receives_at_most_its_cap(
    config: MediaConfig, layers: SimulcastClips, audio_clip: EncodedClip
) -> None:
    call = Call(config, None, audio_clip)
    try:
        await call.join("pub", simulcast=layers)
        capped = await call.join("slow", publish=False, count_only=True, receive_cap_bps=100_000)
        assert capped.receive_cap is not None
        await eventually(lambda: video(capped).frames > 0, timeout=15)
        start_bytes, start = video(capped).bytes, time.monotonic()
        await eventually(lambda: time.monotonic() - start > 3)
        rate = (video(capped).bytes - start_bytes) * 8 / (time.monotonic() - start)
        # The video layer the SFU sends (the top, ~300 kbit/s: it does not
        # estimate subscribers' bandwidth yet) is policed down to the cap.
        assert capped.receive_cap.dropped > 0
        assert rate < 100_000, rate
    finally:
        await call.close()


def test_dynacast_layers_stop_and_restart_with_a_keyframe(layers: SimulcastClips) -> None:
    sender = SimulcastSender(layers)
    sender.set_active(["q", "h"])  # the SFU's `layers` message
    assert [la.active for la in sender.layers.values()] == [True, True, False]
    sender.set_active(["q", "h", "f"])
    assert sender.layers["f"].active and sender.layers["f"].keyframe_wanted
    assert not sender.layers["h"].keyframe_wanted  # it never stopped
    sender.pause("h")
    sender.set_active(["q", "h", "f"])
    assert sender.layers["h"].paused  # pause() is the tester's own, apart from dynacast
