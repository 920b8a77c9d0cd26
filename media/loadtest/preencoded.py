"""Pre-encoded media for test and load peers: encode once, send many times.

Encoding a synthetic pattern once with PyAV makes a publisher cost almost
nothing per frame, so a load generator measures the server, not itself.
"""

from __future__ import annotations

import fractions
import functools
import math
import os
from dataclasses import dataclass

import av
from av.video.frame import PictureType


@dataclass(frozen=True)
class EncodedClip:
    """A loopable list of encoded frames; frame 0 is a keyframe."""

    kind: str
    mime_type: str
    clock_rate: int
    frame_ticks: int  # RTP clock ticks per frame
    frames: tuple[tuple[bytes, bool], ...]  # (data, is_keyframe)

    @property
    def keyframe_indexes(self) -> tuple[int, ...]:
        return tuple(i for i, (_, key) in enumerate(self.frames) if key)

    @property
    def frame_interval(self) -> float:
        return self.frame_ticks / self.clock_rate

    @property
    def bitrate(self) -> float:
        total = sum(len(data) for data, _ in self.frames)
        return total * 8 / (len(self.frames) * self.frame_interval)


def _fill_video_frame(frame: av.VideoFrame, t: int, noise: bytes, tile: int) -> None:
    width, height = frame.width, frame.height
    y_plane = frame.planes[0]
    stride = y_plane.line_size
    ramp = bytes((i * 2) & 0xFF for i in range(stride + 512))
    rows = (ramp[(y + 4 * t) % 256 : (y + 4 * t) % 256 + stride] for y in range(height))
    luma = bytearray(b"".join(rows))
    # A noisy square moving across the picture keeps the encoder busy.
    x0 = (t * 7) % max(1, width - tile)
    y0 = (t * 3) % max(1, height - tile)
    for row in range(tile):
        start = (y0 + row) * stride + x0
        luma[start : start + tile] = noise[row * tile : (row + 1) * tile]
    y_plane.update(bytes(luma))
    for index in (1, 2):
        plane = frame.planes[index]
        value = 128 + int(40 * math.sin(t / 15 + index))
        plane.update(bytes([value & 0xFF]) * (plane.line_size * (height // 2)))


@functools.lru_cache(maxsize=8)
def vp8_clip(
    frames: int = 90,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    bitrate: int = 300_000,
    keyframe_every: int = 30,
) -> EncodedClip:
    """Encode ``frames`` frames of a moving pattern; keyframes every ``keyframe_every``."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width = width
    codec.height = height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = bitrate
    codec.framerate = fractions.Fraction(fps, 1)
    codec.time_base = fractions.Fraction(1, fps)
    codec.gop_size = 10_000
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
    }
    tile = max(16, min(width, height) // 3)
    noise = os.urandom(tile * tile)
    out: list[tuple[bytes, bool]] = []
    for t in range(frames):
        frame = av.VideoFrame(width, height, "yuv420p")
        _fill_video_frame(frame, t, noise, tile)
        frame.pts = t
        frame.time_base = codec.time_base
        frame.pict_type = PictureType.I if t % keyframe_every == 0 else PictureType.NONE
        for packet in codec.encode(frame):
            out.append((bytes(packet), bool(packet.is_keyframe)))
    for packet in codec.encode(None):
        out.append((bytes(packet), bool(packet.is_keyframe)))
    if not out or not out[0][1]:
        raise RuntimeError("the VP8 encoder did not start with a keyframe")
    return EncodedClip("video", "video/vp8", 90000, 90000 // fps, tuple(out))


@functools.lru_cache(maxsize=4)
def opus_clip(frames: int = 50, bitrate: int = 32_000) -> EncodedClip:
    """Encode ``frames`` 20 ms Opus frames of a warbling tone."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, 48000)
    out: list[tuple[bytes, bool]] = []
    samples = 960
    for t in range(frames):
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        freq = 440 + 100 * math.sin(t / 10)
        pcm = bytearray()
        for i in range(samples):
            value = int(8000 * math.sin(2 * math.pi * freq * (t * samples + i) / 48000))
            pcm += value.to_bytes(2, "little", signed=True)
        frame.planes[0].update(bytes(pcm))
        frame.sample_rate = 48000
        frame.pts = t * samples
        frame.time_base = codec.time_base
        for packet in codec.encode(frame):
            out.append((bytes(packet), True))
    for packet in codec.encode(None):
        out.append((bytes(packet), True))
    return EncodedClip("audio", "audio/opus", 48000, 960, tuple(out))
