"""The workers benchmark's per-room quality measure."""

from __future__ import annotations

from bench.workers.quality import QualityBar, room_quality
from media.loadtest.metrics import PeerResult, TrackResult
from media.loadtest.orchestration import RoomReport


def track(kind: str, fps: float, *, frames: int = 300, lost: int = 0) -> TrackResult:
    return TrackResult(
        source="x",
        kind=kind,
        announced=True,
        frames=frames,
        bytes=1000,
        keyframes=1,
        freezes=0,
        max_gap_s=0.1,
        first_frame_s=0.5,
        fps=fps,
        bitrate_bps=300_000,
        packets_received=1000,
        packets_lost=lost,
        retransmitted=0,
        loss_pct=None,
    )


def room(*tracks: TrackResult) -> RoomReport:
    peer = PeerResult("u", "r0-p0", 0, "publisher", True, 0.5, [], 0, 0, list(tracks))
    return RoomReport(0, "call", None, [peer])


def test_a_room_at_full_rate_holds() -> None:
    quality = room_quality(room(track("video", 30), track("audio", 50)), QualityBar())
    assert quality.holds and quality.fps_p10 == 30 and quality.loss_pct == 0


def test_slow_video_loss_or_a_missing_track_fail_the_room() -> None:
    bar = QualityBar(min_fps=24, max_loss_pct=2)
    assert not room_quality(room(track("video", 20), track("video", 30)), bar).holds
    assert not room_quality(room(track("video", 30, lost=50)), bar).holds
    missing = room_quality(room(track("video", 30), track("audio", 0, frames=0)), bar)
    assert not missing.holds and missing.missing == 1
