"""Simulcast publishing for the load tester: three pre-encoded VP8 layers with rid extensions.

aiortc sends one SSRC per sender and knows neither ``a=rid`` nor
``a=simulcast``, so a simulcast publisher is built beside it, as a browser
would behave on the wire:

* :func:`simulcast_clips` encodes one clip per layer (lowest first: rids
  ``q``, ``h``, ``f`` at 1/4, 1/2 and the full size, as Huddle's browser
  client sends them) once, cached like every pre-encoded clip;
* :func:`munge_offer` turns aiortc's publish offer into a browser-like
  simulcast offer: the video m-section loses its ``a=ssrc`` lines (browsers
  don't signal simulcast SSRCs), gains ``a=extmap`` lines for the rid and
  repaired-rid extensions (ids no m-section of the bundle uses),
  ``a=rid:<id> send`` per layer and ``a=simulcast:send q;h;f``;
* :class:`SimulcastSender` paces the three layers itself (one task, all
  layers' frame *n* at the same tick, each layer on its own random SSRC,
  sequence numbers, timestamp origin and VP8 picture ids) and writes their
  RTP, carrying the mid and rid header extensions, through the connection's
  SRTP; it answers a PLI (or FIR) on a layer's SSRC with a keyframe of that
  layer (at most one per 300 ms, like Chrome) and a NACK by resending the
  packets it still has (no RTX). A layer can be paused and resumed
  (:meth:`SimulcastSender.pause`), as a browser does when an encoding is set
  ``active: false``; it resumes with a keyframe. The SFU's dynacast
  ``layers`` message does the same (:meth:`SimulcastSender.set_active`).

The aiortc video transceiver stays in the offer for the m-section, with a
track that never yields a frame, so aiortc itself sends no video RTP.
The private names this needs are reached through
:mod:`media.loadtest.aiortc_compat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
)

from .aiortc_compat import route_rtcp_for_ssrc, send_rtp, vp8_payloads
from .preencoded import EncodedClip, vp8_clip

logger = logging.getLogger(__name__)

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
#: Huddle's browser client's rids, lowest first, and how much each is scaled down.
RIDS = ("q", "h", "f")
SCALE_DOWN = (4, 2, 1)
#: Share of the top layer's bitrate each layer gets (150/500/1500 kbit/s in the client).
BITRATE_SHARE = (0.1, 0.33, 1.0)
KEYFRAME_ANSWER_INTERVAL = 0.3
#: Packets per layer kept to answer NACKs.
RESEND_PACKETS = 512
RTCP_PSFB_FIR = 4


# --- clips -----------------------------------------------------------------------


@dataclass(frozen=True)
class SimulcastClips:
    """One clip per layer, lowest first, with its rid."""

    rids: tuple[str, ...]
    clips: tuple[EncodedClip, ...]
    sizes: tuple[tuple[int, int], ...]  # (width, height) per layer

    def __post_init__(self) -> None:
        if not len(self.rids) == len(self.clips) == len(self.sizes) >= 2:
            raise ValueError("simulcast needs at least two layers, one clip and size each")
        if len({c.frame_ticks for c in self.clips}) != 1:
            raise ValueError("every simulcast layer must have the same frame rate")

    @property
    def top(self) -> tuple[int, int]:
        return self.sizes[-1]

    def layer_of(self, width: int, height: int) -> str | None:
        """The rid whose frames are ``width`` x ``height`` (None: none is)."""
        for rid, size in zip(self.rids, self.sizes, strict=True):
            if size == (width, height):
                return rid
        return None


def layer_sizes(width: int, height: int) -> tuple[tuple[int, int], ...]:
    """The layers' sizes for a top layer of ``width`` x ``height``, lowest first (even)."""
    return tuple((max(16, width // s) & ~1, max(16, height // s) & ~1) for s in SCALE_DOWN)


def simulcast_clips(
    width: int = 640,
    height: int = 360,
    *,
    frames: int = 60,
    fps: int = 30,
    bitrate: int = 800_000,
    keyframe_every: int = 10_000,
) -> SimulcastClips:
    """Three VP8 clips (1/4, 1/2, full size of ``width`` x ``height``), cached.

    ``bitrate`` is the top layer's; the lower ones get 10 % and 33 % of it.
    Each clip starts with a keyframe (then one every ``keyframe_every`` frames).
    """
    sizes = layer_sizes(width, height)
    clips = tuple(
        vp8_clip(
            frames=frames,
            width=w,
            height=h,
            fps=fps,
            bitrate=max(10_000, int(bitrate * share)),
            keyframe_every=keyframe_every,
        )
        for (w, h), share in zip(sizes, BITRATE_SHARE, strict=True)
    )
    return SimulcastClips(RIDS, clips, sizes)


# --- the offer --------------------------------------------------------------------


@dataclass(frozen=True)
class SimulcastOffer:
    """A munged offer and what the sender needs of it."""

    sdp: str
    mid: str
    payload_type: int
    extension_ids: dict[str, int]  # uri -> id: mid, rid, repaired rid


def _sections(sdp: str) -> list[str]:
    return re.split(r"\r?\n(?=m=)", sdp)


def _free_ids(sdp: str, count: int) -> list[int]:
    used = {int(m) for m in re.findall(r"^a=extmap:(\d+)", sdp, re.MULTILINE)}
    free = [i for i in range(1, 15) if i not in used]
    if len(free) < count:
        raise ValueError("no free one-byte header extension ids left in the offer")
    return free[:count]


def munge_offer(sdp: str, mid: str, rids: tuple[str, ...] = RIDS) -> SimulcastOffer:
    """aiortc's offer with m-section ``mid`` made a browser-like simulcast offer."""
    newline = "\r\n" if "\r\n" in sdp else "\n"
    sections = _sections(sdp)
    rid_id, repaired_id = _free_ids(sdp, 2)
    for i, section in enumerate(sections):
        if not section.startswith("m=video") or not re.search(
            rf"^a=mid:{re.escape(mid)}\s*$", section, re.MULTILINE
        ):
            continue
        mid_ext = re.search(rf"^a=extmap:(\d+)\S* {re.escape(URI_MID)}\s*$", section, re.MULTILINE)
        vp8 = re.search(r"^a=rtpmap:(\d+) VP8/90000", section, re.MULTILINE | re.IGNORECASE)
        if mid_ext is None or vp8 is None:
            raise ValueError(f"m-section {mid} offers no mid extension or no VP8")
        lines = [
            line
            for line in section.rstrip("\r\n").splitlines()
            if not line.startswith(("a=ssrc:", "a=ssrc-group:"))
        ]
        lines += [f"a=extmap:{rid_id} {URI_RID}", f"a=extmap:{repaired_id} {URI_REPAIRED_RID}"]
        lines += [f"a=rid:{rid} send" for rid in rids]
        lines.append("a=simulcast:send " + ";".join(rids))
        sections[i] = newline.join(lines)
        out = newline.join(sections)
        return SimulcastOffer(
            sdp=out if out.endswith(newline) else out + newline,
            mid=mid,
            payload_type=int(vp8.group(1)),
            extension_ids={
                URI_MID: int(mid_ext.group(1)),
                URI_RID: rid_id,
                URI_REPAIRED_RID: repaired_id,
            },
        )
    raise ValueError(f"the offer has no video m-section {mid}")


def answered_layers(sdp: str, mid: str) -> tuple[str, ...]:
    """The rids the answer's m-section ``mid`` accepts (``a=simulcast:recv``), in order."""
    for section in _sections(sdp):
        if re.search(rf"^a=mid:{re.escape(mid)}\s*$", section, re.MULTILINE):
            found = re.search(r"^a=simulcast:recv (\S+)", section, re.MULTILINE)
            if found:
                return tuple(g.split(",")[0].lstrip("~") for g in found.group(1).split(";"))
    return ()


def answered_extension_ids(sdp: str, mid: str) -> dict[str, int]:
    """uri -> id of the header extensions the answer's m-section ``mid`` accepts."""
    for section in _sections(sdp):
        if re.search(rf"^a=mid:{re.escape(mid)}\s*$", section, re.MULTILINE):
            return {
                uri: int(ext_id)
                for ext_id, uri in re.findall(r"^a=extmap:(\d+)\S* (\S+)", section, re.MULTILINE)
            }
    return {}


# --- sending ---------------------------------------------------------------------


class SilentTrack(MediaStreamTrack):
    """A video track that never yields a frame: aiortc's sender stays quiet."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._stopped = asyncio.Event()

    async def recv(self) -> Any:
        await self._stopped.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._stopped.set()


@dataclass
class LayerStream:
    """One layer's RTP state and counters."""

    rid: str
    clip: EncodedClip
    ssrc: int = field(default_factory=lambda: random.randint(1, 0xFFFFFFFF))
    sequence_number: int = field(default_factory=lambda: random.randint(0, 0xFFFF))
    timestamp_origin: int = field(default_factory=lambda: random.randint(0, 0xFFFFFFFF))
    picture_id: int = field(default_factory=lambda: random.randint(0, 0x7FFF))
    index: int = 0
    paused: bool = False  # SimulcastSender.pause
    active: bool = True  # dynacast: SimulcastSender.set_active
    keyframe_wanted: bool = False
    last_forced: float = -1e9
    frames_sent: int = 0
    packets_sent: int = 0
    bytes_sent: int = 0
    keyframe_requests: int = 0
    keyframes_forced: int = 0
    nacks: int = 0
    resent: int = 0
    sent: dict[int, bytes] = field(default_factory=dict, repr=False)

    def next_frame(self, now: float) -> tuple[bytes, bool]:
        frames = self.clip.frames
        if self.keyframe_wanted and now - self.last_forced >= KEYFRAME_ANSWER_INTERVAL:
            self.keyframe_wanted = False
            if not frames[self.index][1]:
                self.last_forced = now
                self.keyframes_forced += 1
                keys = self.clip.keyframe_indexes or (0,)
                self.index = keys[self.keyframes_forced % len(keys)]
        data, keyframe = frames[self.index]
        self.index = (self.index + 1) % len(frames)
        return data, keyframe


class SimulcastSender:
    """Sends every unpaused layer of :class:`SimulcastClips` on one DTLS transport."""

    def __init__(self, clips: SimulcastClips, clock: Callable[[], float] | None = None) -> None:
        self.clips = clips
        self.layers: dict[str, LayerStream] = {
            rid: LayerStream(rid, clip) for rid, clip in zip(clips.rids, clips.clips, strict=True)
        }
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._transport: Any = None
        self._extensions = HeaderExtensionsMap()
        self._mid = ""
        self._payload_type = 0
        self.send_errors = 0
        self.dynacast_updates = 0

    # --- control ---------------------------------------------------------------

    def pause(self, rid: str) -> None:
        """Stop sending layer ``rid`` (as a browser does for ``active: false``)."""
        self.layers[rid].paused = True

    def resume(self, rid: str) -> None:
        """Send layer ``rid`` again, starting with a keyframe."""
        layer = self.layers[rid]
        if layer.paused:
            layer.paused = False
            self._restart(layer)

    def set_active(self, rids: list[str]) -> None:
        """Dynacast (the SFU's ``layers`` message): send only ``rids``; the others
        stop until named again (each restarts with a keyframe). Independent of
        :meth:`pause`: a layer is sent when it is active and not paused."""
        for rid, layer in self.layers.items():
            active = rid in rids
            if active and not layer.active:
                self._restart(layer)
            layer.active = active
        self.dynacast_updates += 1

    @staticmethod
    def _restart(layer: LayerStream) -> None:
        layer.keyframe_wanted = True
        layer.last_forced = -1e9

    @property
    def keyframes_forced(self) -> int:
        return sum(layer.keyframes_forced for layer in self.layers.values())

    @property
    def keyframe_requests(self) -> int:
        return sum(layer.keyframe_requests for layer in self.layers.values())

    def start(
        self, transport: Any, mid: str, payload_type: int, extension_ids: dict[str, int]
    ) -> None:
        """Start sending on ``transport`` (an ``RTCDtlsTransport``) once it connects."""
        if self._task is not None:
            return
        self._transport = transport
        self._mid = mid
        self._payload_type = payload_type
        self._extensions.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri)
                    for uri, ext_id in extension_ids.items()
                    if uri in (URI_MID, URI_RID)
                ]
            )
        )
        for layer in self.layers.values():
            route_rtcp_for_ssrc(transport, layer.ssrc, self._on_rtcp)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="simulcast sender")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- feedback --------------------------------------------------------------

    def _layer_by_ssrc(self, ssrc: int) -> LayerStream | None:
        return next((la for la in self.layers.values() if la.ssrc == ssrc), None)

    async def _on_rtcp(self, packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            layer = self._layer_by_ssrc(packet.media_ssrc)
            if layer is not None:
                layer.keyframe_requests += 1
                layer.keyframe_wanted = True
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            layer = self._layer_by_ssrc(packet.media_ssrc)
            if layer is None:
                return
            layer.nacks += 1
            for seq in packet.lost:
                data = layer.sent.get(seq)
                if data is not None and await self._write(data):
                    layer.resent += 1

    # --- the pacing loop -------------------------------------------------------

    def _packets(self, layer: LayerStream, data: bytes, timestamp: int) -> Iterator[bytes]:
        payloads = vp8_payloads(data, layer.picture_id)
        layer.picture_id = (layer.picture_id + 1) & 0x7FFF
        for i, payload in enumerate(payloads):
            packet = RtpPacket(
                payload_type=self._payload_type,
                marker=int(i == len(payloads) - 1),
                sequence_number=layer.sequence_number,
                timestamp=timestamp,
                ssrc=layer.ssrc,
                payload=payload,
            )
            packet.extensions.mid = self._mid
            packet.extensions.rtp_stream_id = layer.rid
            raw = packet.serialize(self._extensions)
            layer.sent[layer.sequence_number] = raw
            layer.sent.pop((layer.sequence_number - RESEND_PACKETS) & 0xFFFF, None)
            layer.sequence_number = (layer.sequence_number + 1) & 0xFFFF
            yield raw

    async def _write(self, data: bytes) -> bool:
        try:
            await send_rtp(self._transport, data)
        except ConnectionError:
            self.send_errors += 1
            return False
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        clock = self._clock or loop.time
        clip = self.clips.clips[-1]
        interval = clip.frame_interval
        ticks = clip.frame_ticks
        tick = 0
        start = clock()
        while True:
            due = start + tick * interval
            now = clock()
            if now - due > 1.0:  # the loop stalled: restart pacing, no burst
                start = now - tick * interval
                due = now
            if due > now:
                await asyncio.sleep(due - now)
                now = clock()
            for layer in self.layers.values():
                if layer.paused or not layer.active:
                    continue
                data, _ = layer.next_frame(now)
                timestamp = (layer.timestamp_origin + tick * ticks) & 0xFFFFFFFF
                for raw in self._packets(layer, data, timestamp):
                    if await self._write(raw):
                        layer.packets_sent += 1
                        layer.bytes_sent += len(raw)
                layer.frames_sent += 1
            tick += 1
