"""The per-room quality measure of the workers benchmark, the same for every run.

A room *holds* when every peer receives every other peer's audio and video,
the 10th percentile of its video tracks' frame rates is at least ``min_fps``,
its loss is at most ``max_loss_pct`` and no track froze for more than 0.5 s
over ``max_freezes`` times (all over the load tester's steady window).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from media.loadtest.metrics import percentile
from media.loadtest.orchestration import RoomReport


@dataclass(frozen=True)
class QualityBar:
    min_fps: float = 24.0
    max_loss_pct: float = 2.0
    max_freezes: int = 2


@dataclass(frozen=True)
class RoomQuality:
    room: int
    tracks: int
    missing: int
    fps_p10: float
    fps_median: float
    loss_pct: float
    freezes: int
    holds: bool


def room_quality(room: RoomReport, bar: QualityBar) -> RoomQuality:
    tracks = [t for p in room.peers for t in p.tracks]
    video = sorted(t.fps for t in tracks if t.kind == "video")
    received = sum(t.packets_received for t in tracks)
    lost = sum(t.packets_lost for t in tracks)
    loss = 100.0 * lost / (received + lost) if received + lost else 100.0
    missing = sum(1 for t in tracks if not t.receiving) + sum(1 for p in room.peers if not p.joined)
    freezes = sum(t.freezes for t in tracks)
    fps_p10 = percentile(video, 10) if video else 0.0
    holds = (
        room.error is None
        and bool(tracks)
        and missing == 0
        and fps_p10 >= bar.min_fps
        and loss <= bar.max_loss_pct
        and freezes <= bar.max_freezes
    )
    return RoomQuality(
        room=room.index,
        tracks=len(tracks),
        missing=missing,
        fps_p10=round(fps_p10, 1),
        fps_median=round(statistics.median(video), 1) if video else 0.0,
        loss_pct=round(loss, 2),
        freezes=freezes,
        holds=holds,
    )
