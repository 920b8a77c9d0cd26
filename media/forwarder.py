"""Up tracks (one per published track) and down tracks (one per subscriber).

An :class:`UpTrack` receives encoded frames from a publisher's receiver and
fans them out, synchronously and without copying the payload, to its
:class:`DownTrack`\\ s. A down track is the ``MediaStreamTrack`` a subscriber's
``RTCRtpSender`` reads; it owns a bounded queue, a keyframe gate and pts
rebasing, so a slow or late subscriber never slows the others.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Callable

from aiortc import RTCRtpCodecParameters, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .frames import EncodedFrame
from .keyframes import KeyframeRequester
from .metrics import MediaMetrics
from .passthrough import PassthroughReceiver

logger = logging.getLogger(__name__)

# Nominal frame durations used to keep pts increasing across a source switch.
_STEP = {"audio": 960, "video": 3000}


class UpTrack:
    """One published track: receives frames, fans them out, asks for keyframes."""

    def __init__(
        self,
        participant_id: str,
        transceiver: RTCRtpTransceiver,
        *,
        pli_min_interval: float,
        incomplete_timeout: float,
        metrics: MediaMetrics,
        on_ended: Callable[[UpTrack], None],
    ) -> None:
        self.id = str(uuid.uuid4())
        self.participant_id = participant_id
        self.kind: str = transceiver.kind
        self.mid: str | None = transceiver.mid
        self._metrics = metrics
        self._on_ended = on_ended
        self._downs: list[DownTrack] = []
        self.ended = False
        self.frames_in = 0
        self._receiver = PassthroughReceiver(
            transceiver,
            on_frame=self._on_frame,
            on_end=self._end,
            on_loss=self._on_loss,
            incomplete_timeout=incomplete_timeout,
        )
        self.codec: RTCRtpCodecParameters = self._receiver.codec
        self._keyframes = KeyframeRequester(
            self._receiver.send_pli,
            pli_min_interval,
            on_sent=metrics.pli_sent,
            name=f"{participant_id}/{self.kind}",
        )

    def __repr__(self) -> str:
        return f"UpTrack({self.participant_id}/{self.kind} {self.id[:8]})"

    @property
    def mime_type(self) -> str:
        return str(self.codec.mimeType).lower()

    @property
    def subscriber_count(self) -> int:
        return len(self._downs)

    def _on_frame(self, frame: EncodedFrame) -> None:
        self.frames_in += 1
        sent = packets = 0
        for down in self._downs:
            n = down.push(frame)
            if n >= 0:
                sent += 1
                packets += n
        if sent:
            # Counted once per fan-out rather than per subscriber (hot path).
            self._metrics.packets_forwarded(self.kind, sent, packets, sent * len(frame.data))

    def _on_loss(self) -> None:
        self._metrics.frame_dropped_incomplete()
        self.request_keyframe()

    def request_keyframe(self) -> None:
        if self.kind == "video" and not self.ended:
            self._keyframes.request()

    def add_down(self, down: DownTrack) -> None:
        """Start feeding ``down``; asks the publisher for a keyframe for it."""
        if down not in self._downs:
            self._downs.append(down)
        self.request_keyframe()

    def remove_down(self, down: DownTrack) -> None:
        if down in self._downs:
            self._downs.remove(down)

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            self._on_ended(self)

    async def close(self) -> None:
        """Stop forwarding; detaches every down track (idempotent)."""
        self.ended = True
        for down in list(self._downs):
            down.detach(self)
        self._downs.clear()
        await self._keyframes.close()


class DownTrack(MediaStreamTrack):
    """A subscriber's forwarding track; yields :class:`EncodedFrame` objects.

    It never ends on its own (an aiortc sender stops for good when its track
    raises ``MediaStreamError``): with no source attached, ``recv`` just waits,
    so the transceiver can be reused for another publisher later.
    """

    def __init__(self, kind: str, queue_size: int, metrics: MediaMetrics) -> None:
        super().__init__()
        self.kind = kind
        self._queue_size = queue_size
        self._metrics = metrics
        self._queue: deque[EncodedFrame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.source: UpTrack | None = None
        self._gated = kind == "video"
        self._offset: int | None = None
        self._last_pts: int | None = None  # last queued
        self._last_sent_pts: int | None = None  # last handed to the sender
        # Set by the subscriber's sender: sends a frame at the given (rebased)
        # pts at once when it can and returns its packet count (-1: queue it
        # for the sender's loop instead).
        self.direct: Callable[[EncodedFrame, int], int] | None = None
        self.frames_out = 0
        self.bytes_out = 0
        self.skips = 0

    def attach(self, source: UpTrack) -> None:
        """Forward ``source`` from its next keyframe on, pts continuing ours."""
        if self.source is source:
            return
        if self.source is not None:
            self.source.remove_down(self)
        self.source = source
        self._queue.clear()
        self._last_pts = self._last_sent_pts  # continue from what the sender saw
        self._gated = self.kind == "video"
        self._offset = None
        source.add_down(self)

    def detach(self, source: UpTrack | None = None) -> None:
        """Stop forwarding (only if ``source`` is still ours, when given)."""
        current = self.source
        if current is None or (source is not None and current is not source):
            return
        self.source = None
        current.remove_down(self)
        self._queue.clear()

    def request_keyframe(self) -> None:
        """The subscriber asked for a keyframe (PLI/FIR): relay it upstream."""
        self._metrics.pli_relayed()
        if self.source is not None:
            self.source.request_keyframe()

    def push(self, frame: EncodedFrame) -> int:
        """Forward ``frame``; its packet count when sent at once, -1 when queued or dropped."""
        if self._gated:
            if not frame.keyframe:
                return -1
            self._gated = False
        queue = self._queue
        if len(queue) >= self._queue_size:
            if self.kind == "video":
                # Skipping frames corrupts a compressed stream: drop to the
                # next keyframe instead.
                queue.clear()
                self.skips += 1
                self._metrics.subscriber_skipped_to_keyframe()
                if not frame.keyframe:
                    self._gated = True
                    if self.source is not None:
                        self.source.request_keyframe()
                    return -1
            else:
                queue.popleft()
        if self._offset is None:
            start = 0 if self._last_pts is None else self._last_pts + _STEP[self.kind]
            self._offset = start - frame.pts
        pts = frame.pts + self._offset
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        direct = self.direct
        if direct is not None and not queue:
            packets = direct(frame, pts)
            if packets >= 0:
                # Sent synchronously by the subscriber's sender (media.fastsend);
                # the caller counts it in the metrics.
                self._last_sent_pts = pts
                self.frames_out += 1
                self.bytes_out += len(frame.data)
                return packets
        queue.append(EncodedFrame(frame.data, pts, frame.time_base, frame.keyframe))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return -1

    async def recv(self) -> EncodedFrame:  # type: ignore[override]
        queue = self._queue
        while not queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame = queue.popleft()
        self._sent(frame)
        return frame

    def _sent(self, frame: EncodedFrame) -> None:
        """A queued frame went to the sender's loop."""
        self._last_sent_pts = frame.pts
        self.frames_out += 1
        self.bytes_out += len(frame.data)
        self._metrics.packets_forwarded(self.kind, 1, 0, len(frame.data))  # packets: by the sender

    def stop(self) -> None:
        """End the track for good (only when its sender goes too)."""
        self.detach()
        self.direct = None
        super().stop()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
