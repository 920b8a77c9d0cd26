"""The load generator's participant: an :class:`~media.loadtest.sfuclient.SfuClient` plus
first-keyframe times.

Both benchmark modes (Huddle's WebSocket signaling and Janus's VideoRoom, see
:mod:`bench.sfu.janus`) drive this same class, so the peers, their pacing and
their RTCP are identical whichever server they talk to.
"""

from __future__ import annotations

from typing import Any

from media.loadtest.sfuclient import SfuClient


class BenchClient(SfuClient):
    """Records when the first keyframe of each kind arrived (header-counting mode)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_keyframe_at: dict[str, float] = {}

    def _on_counted_frame(self, mid: str, kind: str, nbytes: int, keyframe: bool) -> None:
        super()._on_counted_frame(mid, kind, nbytes, keyframe)
        if keyframe:
            self.first_keyframe_at.setdefault(kind, self._clock())
