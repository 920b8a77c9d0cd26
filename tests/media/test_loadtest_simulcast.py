"""The load tester publishes simulcast (issue #13 item 9): real aiortc peers through a Room.

One :class:`~media.loadtest.sfuclient.SfuClient` publishes three pre-encoded
VP8 layers with rid extensions (:mod:`media.loadtest.simulcast`); two
subscribers tell the layer they get from the keyframes' picture size (the SFU
rewrites SSRCs), one through the pass-through receiver, one counting RTP
headers only.
"""

from __future__ import annotations

import pytest

from media.config import MediaConfig
from media.loadtest.preencoded import EncodedClip
from media.loadtest.sfuclient import SfuClient, TrackStats
from media.loadtest.simulcast import SimulcastClips, simulcast_clips
from tests.support.polling import eventually

from .conftest import Call


@pytest.fixture(scope="module")
def layers() -> SimulcastClips:
    # Small frames, a two-second loop: cheap to encode and to send.
    return simulcast_clips(320, 180, frames=30, fps=15, bitrate=300_000)


def video_of(client: SfuClient, source: str) -> TrackStats | None:
    return client.received_from(source, "video")


def on_size(client: SfuClient, source: str, size: tuple[int, int]) -> bool:
    stats = video_of(client, source)
    return stats is not None and stats.size == size


async def test_subscribers_get_the_top_layer_then_move_down_when_it_stops(
    config: MediaConfig, layers: SimulcastClips, audio_clip: EncodedClip
) -> None:
    call = Call(config, None, audio_clip)
    try:
        publisher = await call.join("pub", simulcast=layers)
        subscribers = [
            await call.join("sub1", publish=False),
            await call.join("sub2", publish=False, count_only=True),
        ]
        low, mid, top = layers.sizes
        assert top == (320, 180) and mid == (160, 90) and low == (80, 44)
        for sub in subscribers:
            await eventually(lambda s=sub: on_size(s, "pub", top), timeout=15, message=sub.id)
        assert publisher.simulcast_layers == ("q", "h", "f")
        sender = publisher.simulcast
        assert sender is not None
        # Every layer arrives at the SFU (it takes the highest for each subscriber).
        for rid in ("q", "h", "f"):
            await eventually(lambda r=rid: sender.layers[r].frames_sent > 15)
        before = {s.id: video_of(s, "pub") for s in subscribers}
        # (The first frames may be of a lower layer: the one whose packets came first.)
        seen = {
            s.id: len((video_of(s, "pub") or TrackStats("", "", None, 0)).sizes)
            for s in subscribers
        }
        frames = {
            s.id: (video_of(s, "pub") or TrackStats("", "", None, 0)).frames for s in subscribers
        }

        sender.pause("f")
        for sub in subscribers:
            await eventually(lambda s=sub: on_size(s, "pub", mid), timeout=6, message=sub.id)
        # A few more frames of the middle layer, then: one switch down, no freeze.
        for sub in subscribers:
            await eventually(
                lambda s=sub: (
                    (video_of(s, "pub") or TrackStats("", "", None, 0)).frames >= frames[s.id] + 30
                ),
                message=f"{sub.id} frames",
            )
        for sub in subscribers:
            stats = video_of(sub, "pub")
            assert stats is not None and stats is before[sub.id]
            assert [(w, h) for _, w, h in stats.sizes[seen[sub.id] - 1 :]] == [top, mid], sub.id
            assert stats.size_switches == seen[sub.id]
            # The SFU notices a layer stopped only at the second receiver-report
            # tick (0.5-1.5 s apart) after its last packet, then waits for the
            # PLI's keyframe of the layer below: this freeze is 0.5-3 s long,
            # so issue #13's "no freeze over 1 s" cannot hold for a layer that
            # stops dead (see the report of the branch). Bounded here:
            assert stats.max_gap < 3.5, (sub.id, stats.max_gap)
            assert stats.long_freezes <= 1, sub.id
            print(f"{sub.id}: freeze at the down-switch {stats.max_gap:.2f} s")
        long_freezes = {
            s.id: (video_of(s, "pub") or TrackStats("", "", None, 0)).long_freezes
            for s in subscribers
        }
        # The SFU asked for a keyframe of the middle layer, and got one.
        assert sender.layers["h"].keyframe_requests >= 1

        sender.resume("f")
        for sub in subscribers:
            await eventually(lambda s=sub: on_size(s, "pub", top), timeout=6, message=sub.id)
            stats = video_of(sub, "pub")
            # The up-switch waits for a keyframe of the top layer: no new freeze.
            assert stats is not None and stats.long_freezes == long_freezes[sub.id]
    finally:
        await call.close()
