"""The benchmark's pre-encoded media, encoded once and cached on disk.

:func:`media.loadtest.preencoded.vp8_clip` encodes a noisy test pattern that libvpx
cannot squeeze below ~1.6 Mbps at 640x480; the issue asks for ~1 Mbps, so this
module encodes a calmer pattern (gradient plus a small moving noise tile) with
libvpx in CBR mode. Encoding 640x480 takes tens of seconds on a busy machine,
hence the cache (``$XDG_CACHE_HOME/huddle-bench-sfu``, or ``~/.cache``).
"""

from __future__ import annotations

import fractions
import os
import pickle
import random
from pathlib import Path

import av
from av.video.frame import PictureType

from media.loadtest.preencoded import EncodedClip, opus_clip

CACHE_VERSION = 1


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "huddle-bench-sfu"


def _pattern(frame: av.VideoFrame, t: int, noise: bytes, tile: int) -> None:
    width, height = frame.width, frame.height
    y_plane = frame.planes[0]
    stride = y_plane.line_size
    ramp = bytes((i * 2) & 0xFF for i in range(stride + 512))
    luma = bytearray(
        b"".join(ramp[(y + 2 * t) % 256 : (y + 2 * t) % 256 + stride] for y in range(height))
    )
    x0 = (t * 5) % max(1, width - tile)
    y0 = (t * 3) % max(1, height - tile)
    shift = (t * tile) % len(noise)
    moving = noise[shift:] + noise[:shift]  # the tile's content changes every frame
    for row in range(tile):
        start = (y0 + row) * stride + x0
        luma[start : start + tile] = moving[row * tile : (row + 1) * tile]
    y_plane.update(bytes(luma))
    for index in (1, 2):
        plane = frame.planes[index]
        plane.update(bytes([(128 + 3 * t + 40 * index) & 0xFF]) * (plane.line_size * (height // 2)))


def _encode_vp8(
    frames: int, width: int, height: int, fps: int, bitrate: int, tile: int
) -> EncodedClip:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width = width
    codec.height = height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = bitrate
    codec.framerate = fractions.Fraction(fps, 1)
    codec.time_base = fractions.Fraction(1, fps)
    codec.gop_size = 100_000
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": str(bitrate),
        "maxrate": str(bitrate),
        "bufsize": str(bitrate),
        "qmin": "4",
        "qmax": "63",
    }
    rng = random.Random(4)
    noise = bytes(rng.getrandbits(8) for _ in range(tile * tile))
    out: list[tuple[bytes, bool]] = []
    for t in range(frames):
        frame = av.VideoFrame(width, height, "yuv420p")
        _pattern(frame, t, noise, tile)
        frame.pts = t
        frame.time_base = codec.time_base
        # Only frame 0 is a keyframe: keyframe requests are visible (the
        # publisher answers a PLI by jumping back to it).
        frame.pict_type = PictureType.I if t == 0 else PictureType.NONE
        for packet in codec.encode(frame):
            out.append((bytes(packet), bool(packet.is_keyframe)))
    for packet in codec.encode(None):
        out.append((bytes(packet), bool(packet.is_keyframe)))
    if not out or not out[0][1]:
        raise RuntimeError("the VP8 encoder did not start with a keyframe")
    return EncodedClip("video", "video/vp8", 90000, 90000 // fps, tuple(out))


def video_clip(
    frames: int = 300,
    width: int = 640,
    height: int = 480,
    fps: int = 30,
    bitrate: int = 1_000_000,
    tile: int = 96,
) -> EncodedClip:
    """A looping VP8 clip, encoded once and then read from the cache."""
    key = f"vp8-v{CACHE_VERSION}-{frames}-{width}x{height}-{fps}-{bitrate}-{tile}.pickle"
    path = _cache_dir() / key
    if path.exists():
        try:
            with path.open("rb") as f:
                clip = pickle.load(f)  # our own cache file
        except (ImportError, AttributeError, EOFError, pickle.UnpicklingError):
            clip = None  # written by an older layout of the code: encode again
        if isinstance(clip, EncodedClip):
            return clip
    clip = _encode_vp8(frames, width, height, fps, bitrate, tile)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        pickle.dump(clip, f)
    tmp.replace(path)
    return clip


def audio_clip() -> EncodedClip:
    """One second of 20 ms Opus frames at 32 kbps (cheap to encode, not cached)."""
    return opus_clip(frames=50, bitrate=32_000)


if __name__ == "__main__":
    clip = video_clip()
    sizes = [len(d) for d, _ in clip.frames]
    print(
        f"{len(sizes)} frames, keyframe {sizes[0]} B, mean {sum(sizes) / len(sizes):.0f} B, "
        f"{clip.bitrate / 1e6:.2f} Mbps at {clip.clock_rate / clip.frame_ticks:.0f} fps"
    )
