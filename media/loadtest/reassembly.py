"""Forwarding jitter buffers: turn RTP packets into whole encoded frames fast.

aiortc's ``JitterBuffer`` is built for decoding: audio waits for a prefetch and
can stay ~280 ms late after one loss (aiortc #543), and one unrecovered video
packet can stall video for seconds (aiortc PR #1418). A forwarding SFU wants
the opposite: audio out at once, video out as soon as a frame is complete
(marker bit and no gap), and an incomplete frame dropped after a short wait
with a keyframe request, so subscribers freeze briefly instead of stalling.

These classes replace the receiver's jitter buffer (see
:mod:`media.loadtest.passthrough`); ``add()`` keeps aiortc's signature but hands frames
to a callback itself, because one packet (a retransmission) can complete
several frames at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .aiortc_compat import depayloaded
from .frames import EncodedFrame, is_keyframe, time_base_for

logger = logging.getLogger(__name__)

FrameSink = Callable[[EncodedFrame], None]

MAX_PENDING_FRAMES = 32
MAX_FRAME_PACKETS = 512


class TimestampUnwrapper:
    """32-bit RTP timestamps to a monotonic-ish 64-bit count starting at 0."""

    __slots__ = ("_last", "_origin", "_value")

    def __init__(self) -> None:
        self._last: int | None = None
        self._value = 0

    def unwrap(self, timestamp: int) -> int:
        if self._last is None:
            self._last = timestamp
            return 0
        delta = (timestamp - self._last) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        self._last = timestamp
        self._value += delta
        return self._value


def _seq_newer(a: int, b: int) -> bool:
    """True if 16-bit sequence number ``a`` comes after ``b``."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


def _ts_newer(a: int, b: int) -> bool:
    return a != b and ((a - b) & 0xFFFFFFFF) < 0x80000000


class AudioForwardingBuffer:
    """Emits each audio packet at once; drops duplicates and late packets."""

    def __init__(self, codec_names: dict[int, str], clock_rate: int, sink: FrameSink) -> None:
        self._sink = sink
        self._time_base = time_base_for(clock_rate)
        self._last_seq: int | None = None
        self._unwrapper = TimestampUnwrapper()
        self.ssrc: int | None = None

    @property
    def capacity(self) -> int:
        return 1

    def add(self, packet: Any) -> tuple[bool, None]:
        seq = packet.sequence_number
        if self._last_seq is not None and not _seq_newer(seq, self._last_seq):
            return False, None
        self._last_seq = seq
        self.ssrc = packet.ssrc
        data = depayloaded(packet)
        if data:
            pts = self._unwrapper.unwrap(packet.timestamp)
            self._sink(EncodedFrame(data, pts, self._time_base, True))
        return False, None


class _PendingFrame:
    __slots__ = ("end_seq", "first_arrival", "packets", "start_seq", "timestamp")

    def __init__(self, timestamp: int, now: float) -> None:
        self.timestamp = timestamp
        self.first_arrival = now
        self.packets: dict[int, Any] = {}
        self.start_seq: int | None = None
        self.end_seq: int | None = None


class VideoForwardingBuffer:
    """Reassembles video frames; emits on marker bit when no packet is missing,
    in the frame itself or between it and the frame emitted before it.

    A frame still incomplete ``incomplete_timeout`` seconds after its first
    packet is dropped, ``on_loss`` is called (the owner sends a rate-limited
    PLI), and delta frames are held back until the next keyframe so nobody
    decodes from a broken reference. A whole delta frame that follows missing
    packets (a frame lost entirely, as a one-packet frame is) waits as long for
    them, then counts as one lost frame the same way; a keyframe never waits.
    """

    def __init__(
        self,
        codec_names: dict[int, str],
        clock_rate: int,
        sink: FrameSink,
        on_loss: Callable[[], None],
        incomplete_timeout: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._codec_names = codec_names
        self._sink = sink
        self._on_loss = on_loss
        self._timeout = incomplete_timeout
        self._clock = clock
        self._time_base = time_base_for(clock_rate)
        self._pending: dict[int, _PendingFrame] = {}
        self._last_ts: int | None = None
        self._prev_end_seq: int | None = None
        self._need_keyframe = False
        self._unwrapper = TimestampUnwrapper()
        self.ssrc: int | None = None
        self.frames_dropped = 0

    @property
    def capacity(self) -> int:
        return MAX_FRAME_PACKETS

    def add(self, packet: Any) -> tuple[bool, None]:
        ts = packet.timestamp
        if self._last_ts is not None and not _ts_newer(ts, self._last_ts):
            return False, None  # late packet of a frame already emitted or dropped
        self.ssrc = packet.ssrc
        now = self._clock()
        frame = self._pending.get(ts)
        if frame is None:
            if len(self._pending) >= MAX_PENDING_FRAMES:
                self._drop(self._oldest())
            frame = self._pending[ts] = _PendingFrame(ts, now)
        seq = packet.sequence_number
        if len(frame.packets) < MAX_FRAME_PACKETS:
            frame.packets[seq] = packet
        if packet.marker:
            frame.end_seq = seq
        if frame.start_seq is None and self._starts_frame(packet):
            frame.start_seq = seq
        self._drain(now)
        return False, None

    def _starts_frame(self, packet: Any) -> bool:
        payload: bytes = packet.payload
        if not payload:
            return False
        name = self._codec_names.get(packet.payload_type, "")
        if name == "vp8":
            # VP8 payload descriptor: S bit set and partition index 0.
            return payload[0] & 0x10 != 0 and payload[0] & 0x0F == 0
        if name == "h264":
            nal_type = payload[0] & 0x1F
            if nal_type == 28:  # FU-A: start bit
                return (
                    len(payload) > 1 and payload[1] & 0x80 != 0 and (payload[1] & 0x1F in (5, 7, 9))
                )
            return nal_type in (7, 9, 24)  # SPS, AUD, STAP-A open an access unit
        return False

    def _oldest(self) -> _PendingFrame:
        ref = self._last_ts
        if ref is None:
            ref = next(iter(self._pending))
        base = ref
        return min(self._pending.values(), key=lambda f: (f.timestamp - base) & 0xFFFFFFFF)

    def _drain(self, now: float) -> None:
        while self._pending:
            frame = self._oldest()
            start = frame.start_seq
            prev = self._prev_end_seq
            if prev is not None and ((prev + 1) & 0xFFFF) in frame.packets:
                start = (prev + 1) & 0xFFFF
            end = frame.end_seq
            if start is None or end is None or not self._complete(frame, start, end):
                if now - frame.first_arrival < self._timeout:
                    return
                self._drop(frame)
                continue
            data = self._payload(frame, start, end)
            name = self._codec_names.get(frame.packets[start].payload_type, "")
            keyframe = is_keyframe(name, data)
            follows_gap = prev is not None and start != (prev + 1) & 0xFFFF
            if follows_gap and not keyframe and not self._need_keyframe:
                # Whole packets between the last frame and this one are missing: a
                # frame lost entirely (one packet, often), its repair may be on the
                # way. A decoder can't use this one before it: wait as for a gap,
                # then count the lost frame and wait for a keyframe.
                if now - frame.first_arrival < self._timeout:
                    return
                self._lost_before()
            self._emit(frame, data, keyframe)

    @staticmethod
    def _complete(frame: _PendingFrame, start: int, end: int) -> bool:
        count = ((end - start) & 0xFFFF) + 1
        if count > len(frame.packets):
            return False
        packets = frame.packets
        return all(((start + i) & 0xFFFF) in packets for i in range(count))

    def _finish(self, frame: _PendingFrame) -> None:
        del self._pending[frame.timestamp]
        self._last_ts = frame.timestamp
        if frame.end_seq is not None:
            self._prev_end_seq = frame.end_seq
        # Anything older than this frame can no longer be forwarded.
        for other in list(self._pending.values()):
            if not _ts_newer(other.timestamp, frame.timestamp):
                del self._pending[other.timestamp]

    @staticmethod
    def _payload(frame: _PendingFrame, start: int, end: int) -> bytes:
        count = ((end - start) & 0xFFFF) + 1
        packets = frame.packets
        return b"".join(depayloaded(packets[(start + i) & 0xFFFF]) for i in range(count))

    def _emit(self, frame: _PendingFrame, data: bytes, keyframe: bool) -> None:
        self._finish(frame)
        pts = self._unwrapper.unwrap(frame.timestamp)
        if self._need_keyframe:
            if not keyframe:
                self.frames_dropped += 1
                return
            self._need_keyframe = False
        if data:
            self._sink(EncodedFrame(data, pts, self._time_base, keyframe))

    def _drop(self, frame: _PendingFrame) -> None:
        self._finish(frame)
        self._unwrapper.unwrap(frame.timestamp)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("dropped incomplete video frame ts=%d", frame.timestamp)
        self._lost_before()

    def _lost_before(self) -> None:
        """A frame was lost: count it, hold delta frames back until a keyframe."""
        self.frames_dropped += 1
        self._need_keyframe = True
        self._on_loss()
