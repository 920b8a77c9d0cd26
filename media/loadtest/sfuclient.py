"""Cheap, honest test and load peers for the SFU.

* :class:`ClipTrack` publishes pre-encoded media (:mod:`media.loadtest.preencoded`),
  paced at the frame rate, timestamps increasing across loops, answering a
  keyframe request by jumping to a keyframe (at most once per 300 ms, like
  Chrome's WebRTC library).
* :class:`SfuClient` speaks the SFU's publish/subscribe protocol, publishing
  clips or (``simulcast``) three VP8 layers with rid extensions
  (:mod:`media.loadtest.simulcast`); by default
  it does not decode: it counts frames, bytes, keyframes and gaps per remote
  track through a pass-through receiver (:mod:`media.loadtest.passthrough`)
  or, ``count_only``, from RTP headers (:mod:`media.loadtest.rtpcount`), and
  which picture size (simulcast layer) arrives, from the VP8 keyframes.
  As a receiver it behaves like Chrome for congestion control: it answers
  the SFU's ``transport-cc`` and sends transport-wide feedback
  (:mod:`media.loadtest.ccfeedback`; REMB only without it), and its
  downlink can be capped by a shaper (:mod:`media.loadtest.netcap`).

Both connections of an :class:`SfuClient` use ``max-bundle`` whatever
configuration it is given: the SFU always bundles, and with aiortc's default
``balanced`` policy a subscribe offer carrying two video (or two audio)
m-lines at once leaves the second one on a transport aiortc then discards
(aiortc #1414): that track never receives anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from media.aiortc_compat import IceRestart
from media.errors import MediaError
from media.keyframes import KeyframeRequester
from media.signals import PUBLISH, SFU_ID, SUBSCRIBE, Message, default_source, ice_credentials

from .aiortc_compat import (
    disable_receiver_remb,
    on_keyframe_request,
    receiver_rtcp_ssrc,
    send_receiver_rtcp,
)
from .ccfeedback import ArrivalStamps, TransportFeedback, accept_in_answer, extension_id
from .frames import EncodedFrame, time_base_for, vp8_frame_size
from .netcap import ReceiveCap, install_receive_cap
from .packer import install_packer
from .passthrough import PassthroughReceiver
from .preencoded import EncodedClip
from .rtpcount import RtpCounter
from .simulcast import (
    SilentTrack,
    SimulcastClips,
    SimulcastOffer,
    SimulcastSender,
    answered_extension_ids,
    answered_layers,
    munge_offer,
)

logger = logging.getLogger(__name__)

KEYFRAME_ANSWER_INTERVAL = 0.3
GAP_THRESHOLD = 0.5
#: A video gap longer than this is a freeze a person notices (the simulcast
#: layer report's count; issue #13's "no freeze longer than 1 s").
LONG_FREEZE = 1.0
#: Without transport-cc (the SFU's HUDDLE_TRANSPORT_CC=0, or ``transport_cc=
#: False``) the subscriber sends a REMB every REMB_INTERVAL, a model of
#: Chrome's receive-side estimate: REMB_START (Chrome's start bit rate) until
#: video has arrived for a whole interval, then REMB_GROWTH times the video
#: bit rate that arrived in the last one (Chrome's limit on its estimate: what
#: got through vouches for that much), so behind a cap it falls to what the
#: cap lets through. Loss is left to the SFU, which reads it from the
#: receiver reports. With transport-cc negotiated it sends no REMB, as Chrome.
REMB_START = 300_000
REMB_GROWTH = 1.5
REMB_INTERVAL = 1.0


class ClipTrack(MediaStreamTrack):
    """Sends an :class:`EncodedClip` in a loop, paced in real time."""

    def __init__(self, clip: EncodedClip) -> None:
        super().__init__()
        self.kind = clip.kind
        self.clip = clip
        self._time_base = time_base_for(clip.clock_rate)
        self._keyframes = clip.keyframe_indexes or (0,)
        self._index = 0
        self._sent = 0
        self._start: float | None = None
        self._keyframe_requested = False
        self._last_forced = -1.0
        self.keyframes_forced = 0
        self.keyframe_requests = 0

    def request_keyframe(self) -> None:
        """Called for a PLI/FIR from the remote end."""
        self.keyframe_requests += 1
        self._keyframe_requested = True

    async def recv(self) -> EncodedFrame:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        interval = self.clip.frame_interval
        now = loop.time()
        if self._start is None or now - (self._start + self._sent * interval) > 1.0:
            self._start = now - self._sent * interval  # (re)start pacing, no burst
        due = self._start + self._sent * interval
        if due > now:
            await asyncio.sleep(due - now)
        if self._keyframe_requested and now - self._last_forced >= KEYFRAME_ANSWER_INTERVAL:
            self._keyframe_requested = False
            if not self.clip.frames[self._index][1]:
                self._last_forced = now
                self.keyframes_forced += 1
                # Any keyframe of the clip will do: what follows references it.
                self._index = self._keyframes[self.keyframes_forced % len(self._keyframes)]
        data, keyframe = self.clip.frames[self._index]
        self._index = (self._index + 1) % len(self.clip.frames)
        pts = self._sent * self.clip.frame_ticks
        self._sent += 1
        return EncodedFrame(data, pts, self._time_base, keyframe)


@dataclass
class TrackStats:
    """What a non-decoding subscriber saw of one remote track."""

    kind: str
    mid: str
    participant_id: str | None
    announced_at: float
    source: str | None = None
    frames: int = 0
    bytes: int = 0
    keyframes: int = 0
    gaps: int = 0
    max_gap: float = 0.0
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    decoded: int = 0
    frame_times: list[float] = field(default_factory=list, repr=False)
    #: Video: the picture size of the last keyframe (which simulcast layer
    #: arrives: the SFU rewrites SSRCs, so the size tells them apart).
    size: tuple[int, int] | None = None
    #: (arrival time, width, height) each time the size changed, the first included.
    sizes: list[tuple[float, int, int]] = field(default_factory=list)
    long_freezes: int = 0  # gaps over LONG_FREEZE
    #: What the SFU says it sends (``quality`` messages): (time, layer, paused)
    #: at each change, the pauses and how long they lasted in all.
    quality: list[tuple[float, str | None, bool]] = field(default_factory=list)
    pauses: int = 0
    paused_s: float = 0.0
    paused_since: float | None = None

    @property
    def first_frame_delay(self) -> float | None:
        if self.first_frame_at is None:
            return None
        return self.first_frame_at - self.announced_at

    def add(self, nbytes: int, keyframe: bool, now: float) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = now
        elif self.last_frame_at is not None:
            gap = now - self.last_frame_at
            self.max_gap = max(self.max_gap, gap)
            if gap > GAP_THRESHOLD:
                self.gaps += 1
            if gap > LONG_FREEZE:
                self.long_freezes += 1
        self.last_frame_at = now
        self.frames += 1
        self.bytes += nbytes
        if keyframe:
            self.keyframes += 1

    def saw_size(self, width: int, height: int, now: float) -> None:
        """A keyframe of ``width`` x ``height`` arrived (VP8 keyframes carry their size)."""
        if self.size != (width, height):
            self.size = (width, height)
            self.sizes.append((now, width, height))

    def saw_quality(self, layer: str | None, paused: bool, now: float) -> None:
        """A ``quality`` entry for this track: the layer the SFU sends, or paused."""
        if self.quality and self.quality[-1][1:] == (layer, paused):
            return
        self.quality.append((now, layer, paused))
        if paused and self.paused_since is None:
            self.pauses += 1
            self.paused_since = now
        elif not paused and self.paused_since is not None:
            self.paused_s += now - self.paused_since
            self.paused_since = None

    def paused_for(self, now: float) -> float:
        """Seconds paused in all, up to ``now``."""
        ongoing = now - self.paused_since if self.paused_since is not None else 0.0
        return self.paused_s + ongoing

    @property
    def size_switches(self) -> int:
        """How often the received picture size (the simulcast layer) changed."""
        return max(0, len(self.sizes) - 1)


def max_bundle(configuration: RTCConfiguration) -> RTCConfiguration:
    """``configuration`` with ``bundlePolicy=max-bundle`` (see the module docstring)."""
    if configuration.bundlePolicy == RTCBundlePolicy.MAX_BUNDLE:
        return configuration
    return dataclasses.replace(configuration, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def unbundled_mids(pc: RTCPeerConnection) -> list[str]:
    """Mids of transceivers not on the connection's one (bundled) transport."""
    transceivers = pc.getTransceivers()
    if not transceivers:
        return []
    primary = transceivers[0].receiver.transport
    return [str(t.mid) for t in transceivers if t.receiver.transport is not primary]


def _codec_capability(kind: str, mime: str) -> list[Any]:
    caps = RTCRtpSender.getCapabilities(kind).codecs
    return [c for c in caps if c.mimeType.lower() in (mime, "video/rtx")]


class SfuClient:
    """A headless participant: publishes clips, subscribes without decoding.

    ``send`` carries client → server messages (in tests, straight to
    ``Room.handle_signal``); server → client messages are handed to
    :meth:`deliver`, which queues them for in-order processing.
    """

    def __init__(
        self,
        participant_id: str,
        send: Callable[[Message], Awaitable[None]],
        *,
        rtc_configuration: RTCConfiguration,
        video: EncodedClip | None = None,
        audio: EncodedClip | None = None,
        decode: bool = False,
        count_only: bool = False,
        simulcast: SimulcastClips | None = None,
        receive_cap_bps: int | None = None,
        transport_cc: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if simulcast is not None and video is not None:
            raise ValueError("publish either one video clip or simulcast layers, not both")
        self.id = participant_id
        self._send = send
        self._config = max_bundle(rtc_configuration)
        self._clips = [c for c in (audio, video) if c is not None]
        #: The simulcast publisher (media.loadtest.simulcast), if publishing simulcast.
        self.simulcast: SimulcastSender | None = (
            SimulcastSender(simulcast) if simulcast is not None else None
        )
        self._simulcast_offer: SimulcastOffer | None = None
        self._simulcast_transceiver: RTCRtpTransceiver | None = None
        #: Shapes what arrives on the subscribe connection (media.loadtest.netcap).
        self.receive_cap = ReceiveCap(receive_cap_bps) if receive_cap_bps else None
        self._capped: list[Any] = []  # transports the cap is installed on
        # Answer the SFU's transport-cc and send transport-wide feedback (ccfeedback).
        self._transport_cc = transport_cc
        self._twcc_ext_id: int | None = None  # the offered extension's id, once offered
        #: The subscribe connection's transport-wide feedback, once it receives.
        self.transport_feedback: TransportFeedback | None = None
        #: When its RTP reached the socket (the feedback's and the cap's clock).
        self.arrival_stamps = ArrivalStamps()
        self._video_receivers: list[Any] = []  # RTCRtpReceivers of received video
        self._remb_task: asyncio.Task[None] | None = None
        self.rembs_sent = 0
        self.last_remb: int | None = None
        #: The rids the SFU's answer accepted (empty until then, or if it refused).
        self.simulcast_layers: tuple[str, ...] = ()
        self._decode = decode
        # Count RTP from headers instead of reassembling frames (media.loadtest.rtpcount):
        # no NACK, no PLI; for load generators that must stay cheap.
        self._count_only = count_only
        self.counter: RtpCounter | None = None
        self._clock = clock
        self.publish_pc: RTCPeerConnection | None = None
        self.subscribe_pc = RTCPeerConnection(self._config)
        self.subscribe_pc.on("track", self._on_track)
        self.subscribe_pc.on("connectionstatechange", self._on_subscribe_state)
        self.subscribe_connected_at: float | None = None
        self.tracks: dict[str, ClipTrack] = {}
        self.screen: ClipTrack | None = None
        self._screen_transceiver: Any = None
        self.track_info: dict[str, dict[str, Any]] = {}  # mid -> last `tracks` entry
        self.stats: list[TrackStats] = []
        self._current: dict[str, TrackStats] = {}  # mid -> stats of its current source
        self._receivers: list[PassthroughReceiver] = []
        self._pli: list[KeyframeRequester] = []
        self.plis_sent = 0
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.errors: list[Message] = []
        self.subscribe_offers = 0
        # ICE restarts (restart_ice): in place, as a browser's restartIce().
        self._publish_restart: IceRestart | None = None
        self._subscribe_restart = IceRestart(self.subscribe_pc, SUBSCRIBE)
        self._publish_restarting = False
        self._subscribe_ufrag: str | None = None
        #: ICE restarts this client made and the server answered (publish, subscribe).
        self.ice_restarts = 0
        self._closed = False
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"client {self.id}")

    # --- outbound --------------------------------------------------------

    async def publish(self) -> None:
        """Create the publish connection and send its offer.

        With nothing to publish, enter the room receive-only instead
        (``subscribe``): no publish connection at all.
        """
        if not self._clips and self.simulcast is None:
            await self._send({"type": "subscribe", "target_id": SFU_ID})
            return
        pc = self.publish_pc = RTCPeerConnection(self._config)
        for clip in self._clips:
            track = ClipTrack(clip)
            transceiver = pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(_codec_capability(clip.kind, clip.mime_type))
            install_packer(transceiver.sender, clip.mime_type, clip.clock_rate)
            on_keyframe_request(transceiver.sender, track.request_keyframe)
            self.tracks[clip.kind] = track
        simulcast_transceiver = None
        if self.simulcast is not None:
            # The m-section for the layers; aiortc itself sends nothing on it.
            simulcast_transceiver = pc.addTransceiver(SilentTrack(), direction="sendonly")
            simulcast_transceiver.setCodecPreferences(_codec_capability("video", "video/vp8"))
        self._simulcast_transceiver = simulcast_transceiver
        await self._offer()

    async def restart_ice(self) -> None:
        """Restart ICE on both connections, as the browser client does after a network
        change: a publish offer marked ``ice_restart`` and an ``ice_restart`` asking the
        SFU for a subscribe offer with new credentials (docs/protocol.md)."""
        if self.publish_pc is not None:
            if self._publish_restart is None:
                self._publish_restart = IceRestart(self.publish_pc, PUBLISH)
            self._publish_restart.renew_local()
            self._publish_restarting = True
            await self._offer(ice_restart=True)
        await self._send({"type": "ice_restart", "target_id": SFU_ID})

    async def _offer(self, *, ice_restart: bool = False) -> None:
        """(Re)offer the publish connection, saying which m-line sends what."""
        pc = self.publish_pc
        assert pc is not None
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        layers = self._simulcast_transceiver
        if layers is not None and self.simulcast is not None:
            self._simulcast_offer = munge_offer(sdp, str(layers.mid), self.simulcast.clips.rids)
            sdp = self._simulcast_offer.sdp
        sources = {
            str(t.mid): ("screen" if t is self._screen_transceiver else default_source(t.kind))
            for t in pc.getTransceivers()
            if t.mid is not None
        }
        offer: Message = {
            "type": "offer",
            "target_id": SFU_ID,
            "pc": PUBLISH,
            "sdp": sdp,
            "sources": sources,
        }
        if ice_restart:
            offer["ice_restart"] = True
        await self._send(offer)

    async def share_screen(self, clip: EncodedClip) -> None:
        """Publish ``clip`` as a screen share: a second video m-line, renegotiated.

        A share stopped by :meth:`stop_screen` starts again on the same
        transceiver (and mid), as the browser client does.
        """
        pc = self.publish_pc
        if pc is None:
            raise RuntimeError("share_screen needs a publish connection")
        if self._screen_transceiver is None:
            track = ClipTrack(clip)
            transceiver = pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(_codec_capability(clip.kind, clip.mime_type))
            install_packer(transceiver.sender, clip.mime_type, clip.clock_rate)
            on_keyframe_request(transceiver.sender, track.request_keyframe)
            self.screen = track
            self._screen_transceiver = transceiver
        else:
            self._screen_transceiver.direction = "sendonly"
        await self._offer()

    async def stop_screen(self) -> None:
        """Stop the screen share: its m-line goes ``inactive`` in a new offer.

        aiortc's sender keeps sending on it (it cannot stop and restart one), so
        this also proves the SFU ignores what arrives on an inactive m-line.
        """
        if self._screen_transceiver is None or self.publish_pc is None:
            return
        self._screen_transceiver.direction = "inactive"
        await self._offer()

    # --- inbound ---------------------------------------------------------

    def deliver(self, message: Message) -> None:
        """Queue a server → client message."""
        if not self._closed:
            self._inbox.put_nowait(message)

    async def _run(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                await self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("SfuClient(%s) failed on %s", self.id, message.get("type"))

    async def _handle(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "answer" and message.get("pc") == PUBLISH and self.publish_pc is not None:
            await self.publish_pc.setRemoteDescription(
                RTCSessionDescription(sdp=message["sdp"], type="answer")
            )
            credentials = ice_credentials(str(message["sdp"]))
            if self._publish_restarting and self._publish_restart is not None and credentials:
                self._publish_restarting = False
                self._publish_restart.set_remote(*credentials)
                self.ice_restarts += 1
            self._start_simulcast(str(message["sdp"]))
        elif kind == "offer" and message.get("pc") == SUBSCRIBE:
            pc = self.subscribe_pc
            if self._transport_cc and self._twcc_ext_id is None:
                # Known before setRemoteDescription: its track events wrap the transport.
                self._twcc_ext_id = extension_id(str(message["sdp"]))
            credentials = ice_credentials(str(message["sdp"]))
            # New credentials on an established connection: the SFU restarts ICE;
            # an answerer restarts too (new credentials of its own, new checks).
            restart = (
                credentials is not None
                and self._subscribe_ufrag is not None
                and credentials[0] != self._subscribe_ufrag
                and pc.connectionState == "connected"
            )
            if restart:
                self._subscribe_restart.renew_local()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="offer"))
            if credentials is not None:
                self._subscribe_ufrag = credentials[0]
            if restart and credentials is not None:
                self._subscribe_restart.set_remote(*credentials)
                self.ice_restarts += 1
            if self._twcc_ext_id is not None:
                accept_in_answer(pc)
            stray = unbundled_mids(pc)
            if stray:
                logger.error(
                    "SfuClient(%s): m-lines %s are not bundled and will receive nothing",
                    self.id,
                    ", ".join(stray),
                )
            await pc.setLocalDescription(await pc.createAnswer())
            if self._twcc_ext_id is not None or self.receive_cap is not None:
                self.arrival_stamps.install(pc)  # ICE has gathered: its sockets exist
            self.subscribe_offers += 1
            sdp = pc.localDescription.sdp
            await self._send({"type": "answer", "target_id": SFU_ID, "pc": SUBSCRIBE, "sdp": sdp})
        elif kind == "tracks":
            now = self._clock()
            for entry in message.get("tracks", []):
                mid = str(entry.get("mid"))
                previous = self.track_info.get(mid)
                self.track_info[mid] = entry
                owner = entry.get("participant_id")
                source = entry.get("source")
                if (
                    previous is None
                    or previous.get("participant_id") != owner
                    or previous.get("source") != source
                ):
                    stats = TrackStats(str(entry.get("kind")), mid, owner, now, source)
                    self.stats.append(stats)
                    self._current[mid] = stats
            announced = {str(e.get("mid")) for e in message.get("tracks", [])}
            for mid in list(self.track_info):
                if mid not in announced:
                    del self.track_info[mid]
                    self._current.pop(mid, None)
        elif kind == "quality":
            now = self._clock()
            for entry in message.get("tracks", []):
                current = self._current.get(str(entry.get("mid")))
                if current is not None:
                    layer = entry.get("layer")
                    current.saw_quality(
                        str(layer) if layer is not None else None, bool(entry.get("paused")), now
                    )
        elif kind == "layers":
            self._on_layers(message)
        elif kind == "error":
            self.errors.append(message)

    def _on_layers(self, message: Message) -> None:
        """Dynacast: encode (send) only the layers the SFU names, as a browser does."""
        offer, sender = self._simulcast_offer, self.simulcast
        rids = message.get("rids")
        if offer is None or sender is None or str(message.get("mid")) != offer.mid:
            return
        if isinstance(rids, list):
            sender.set_active([str(r) for r in rids])

    def _start_simulcast(self, answer: str) -> None:
        offer, sender, pc = self._simulcast_offer, self.simulcast, self.publish_pc
        if offer is None or sender is None or pc is None:
            return
        layers = answered_layers(answer, offer.mid)
        ids = answered_extension_ids(answer, offer.mid)
        ids = {uri: ids[uri] for uri in offer.extension_ids if uri in ids}
        if not layers or set(ids) != set(offer.extension_ids):
            logger.error(
                "SfuClient(%s): the SFU did not accept simulcast on mid %s "
                "(layers %s, extensions %s)",
                self.id,
                offer.mid,
                layers,
                sorted(ids),
            )
            return
        self.simulcast_layers = layers
        for rid in sender.layers:
            if rid not in layers:
                sender.pause(rid)
        transceiver = next(t for t in pc.getTransceivers() if str(t.mid) == offer.mid)
        sender.start(transceiver.sender.transport, offer.mid, offer.payload_type, ids)

    def _on_subscribe_state(self) -> None:
        if self.subscribe_pc.connectionState == "connected" and self.subscribe_connected_at is None:
            self.subscribe_connected_at = self._clock()

    def _stats_for(self, mid: str, kind: str) -> TrackStats:
        stats = self._current.get(mid)
        if stats is None:
            stats = TrackStats(kind, mid, None, self._clock())
            self.stats.append(stats)
            self._current[mid] = stats
        return stats

    def _on_track(self, track: MediaStreamTrack) -> None:
        transceiver = next(
            t for t in self.subscribe_pc.getTransceivers() if t.receiver.track is track
        )
        mid = str(transceiver.mid)
        kind = str(track.kind)
        if self._decode:
            self._tasks.append(
                asyncio.get_running_loop().create_task(self._consume(track, mid, kind))
            )
            self._apply_cap(transceiver.receiver.transport)
            return

        if kind == "video":
            # One REMB for the connection, as a browser sends (see _remb_loop);
            # none with transport-cc.
            disable_receiver_remb(transceiver.receiver)
            self._video_receivers.append(transceiver.receiver)
            if self._remb_task is None and self._twcc_ext_id is None:
                self._remb_task = asyncio.get_running_loop().create_task(
                    self._remb_loop(), name=f"remb {self.id}"
                )
                self._tasks.append(self._remb_task)
        if self._count_only:
            self._stats_for(mid, kind)
            transport = transceiver.receiver.transport
            if self.counter is None or self.counter.transport is not transport:
                self.counter = RtpCounter(
                    self.subscribe_pc,
                    transport,
                    self._on_counted_frame,
                    self._on_counted_size,
                    remb=False,
                )
            # Still a pass-through receiver (no decoder thread), though the
            # counter takes the packets before it would see them.
            self._receivers.append(
                PassthroughReceiver(transceiver, on_frame=lambda f: None, on_loss=lambda: None)
            )
            self._apply_cap(transport)
            return

        def on_frame(frame: EncodedFrame) -> None:
            now = self._clock()
            stats = self._stats_for(mid, kind)
            stats.add(len(frame.data), frame.keyframe, now)
            if frame.keyframe and kind == "video":
                size = vp8_frame_size(frame.data)
                if size is not None:
                    stats.saw_size(size[0], size[1], now)

        def on_loss() -> None:
            # Like a browser whose decoder lost the picture: ask for a keyframe.
            requester.request()

        receiver = PassthroughReceiver(transceiver, on_frame=on_frame, on_loss=on_loss)

        async def send_pli() -> bool:
            sent = await receiver.send_pli()
            self.plis_sent += int(sent)
            return sent

        requester = KeyframeRequester(send_pli, 0.3, name=f"client {self.id}")
        self._receivers.append(receiver)
        self._pli.append(requester)
        self._apply_cap(transceiver.receiver.transport)

    def _apply_cap(self, transport: Any) -> None:
        # After the RTP counter (if any) took the transport's handler: the
        # transport-wide feedback wraps it, and the cap wraps both (feedback
        # reports packets as they leave the cap's queue).
        ext_id = self._twcc_ext_id
        if ext_id is not None and (
            self.transport_feedback is None or self.transport_feedback.transport is not transport
        ):
            if self.transport_feedback is not None:
                self._tasks.append(
                    asyncio.get_running_loop().create_task(self.transport_feedback.close())
                )
            self.transport_feedback = TransportFeedback(
                self.id, transport, ext_id, stamps=self.arrival_stamps
            )
            self.transport_feedback.start()
        if self.receive_cap is not None and not any(t is transport for t in self._capped):
            install_receive_cap(transport, self.receive_cap, self.arrival_stamps)
            self._capped.append(transport)

    def _on_counted_frame(self, mid: str, kind: str, nbytes: int, keyframe: bool) -> None:
        self._stats_for(mid, kind).add(nbytes, keyframe, self._clock())

    def _video_ssrcs(self) -> list[int]:
        if self.counter is not None:
            return [
                ssrc
                for ssrc, stream in self.counter.streams.items()
                if stream is not None and stream.kind == "video" and not stream.rtx
            ]
        return [
            r.media_ssrc for r in self._receivers if r.kind == "video" and r.media_ssrc is not None
        ]

    async def _remb_loop(self) -> None:
        """Every REMB_INTERVAL: one REMB for every received video SSRC (what the
        SFU reads as the downlink; see REMB_START)."""
        loop = asyncio.get_running_loop()
        at, received = loop.time(), 0
        estimate = REMB_START
        video_since: float | None = None  # the start of the first interval video arrived in
        while True:
            await asyncio.sleep(REMB_INTERVAL)
            now = loop.time()
            total = sum(s.bytes for s in self._current.values() if s.kind == "video")
            rate = (total - received) * 8 / (now - at) if now > at else 0.0
            start, at, received = at, now, total
            ssrcs = self._video_ssrcs()
            sender = next(
                (r for r in self._video_receivers if receiver_rtcp_ssrc(r) is not None), None
            )
            if rate > 0 and video_since is not None and now - video_since >= REMB_INTERVAL:
                estimate = int(rate * REMB_GROWTH)  # what got through vouches for this
            elif rate > 0 and video_since is None:
                video_since = start
            if not ssrcs or sender is None:
                continue
            packet = RtcpPsfbPacket(
                fmt=RTCP_PSFB_APP,
                ssrc=receiver_rtcp_ssrc(sender) or 0,
                media_ssrc=0,
                fci=pack_remb_fci(estimate, ssrcs),
            )
            try:
                await send_receiver_rtcp(sender, packet)
            except ConnectionError:
                continue
            self.rembs_sent += 1
            self.last_remb = estimate

    def _on_counted_size(self, mid: str, size: tuple[int, int]) -> None:
        self._stats_for(mid, "video").saw_size(size[0], size[1], self._clock())

    async def _consume(self, track: MediaStreamTrack, mid: str, kind: str) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = self._clock()
                stats = self._stats_for(mid, kind)
                stats.add(0, False, now)
                stats.decoded += 1
                width, height = getattr(frame, "width", None), getattr(frame, "height", None)
                if isinstance(width, int) and isinstance(height, int):
                    stats.saw_size(width, height, now)

    # --- queries ---------------------------------------------------------

    def received_from(
        self, participant_id: str, kind: str, source: str | None = None
    ) -> TrackStats | None:
        """The current ``kind`` track (of ``source``, if given) from ``participant_id``."""
        for stats in self._current.values():
            if (
                stats.participant_id == participant_id
                and stats.kind == kind
                and (source is None or stats.source == source)
            ):
                return stats
        return None

    def sources(self) -> set[tuple[str, str]]:
        """(participant_id, kind) of every announced remote track."""
        return {
            (str(e.get("participant_id")), str(e.get("kind"))) for e in self.track_info.values()
        }

    async def close(self) -> None:
        """Close both connections and stop every task (idempotent)."""
        if self._closed:
            return
        self._closed = True
        tasks = [self._runner, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.transport_feedback is not None:
            await self.transport_feedback.close()
        if self.receive_cap is not None:
            await self.receive_cap.close()
        if self.simulcast is not None:
            await self.simulcast.stop()
        if self.publish_pc is not None:
            await self.publish_pc.close()
        await self.subscribe_pc.close()
        for requester in self._pli:
            await requester.close()
        self._pli.clear()
        self._receivers.clear()


class LocalSignaling:
    """In-process signaling for tests and load runs: server → client by id."""

    def __init__(self) -> None:
        self.clients: dict[str, SfuClient] = {}
        self.sent: list[tuple[str, Message]] = []

    async def send(self, participant_id: str, message: Message) -> None:
        self.sent.append((participant_id, message))
        client = self.clients.get(participant_id)
        if client is not None:
            client.deliver(message)

    async def send_error(self, participant_id: str, error: MediaError) -> None:
        """As signaling renders it (``signaling.errors.error_message``), unstamped."""
        await self.send(
            participant_id,
            {"type": "error", "code": error.code, "message": str(error) or error.code},
        )
