"""Load peers: an :class:`~media.loadtest.sfuclient.SfuClient` over the real signaling socket.

:class:`SignaledPeer` (also the end-to-end tests' peer): SFU messages
(``sender_id == "sfu"``) go to the media client, everything else is read and
dropped here (so nothing piles up over a long run) except ``error`` and
``call_ended``, which are recorded. It adds what a load run measures: when
each connection came up, and per-track RTP packet counters.

Publishers send pre-encoded clips (:mod:`media.loadtest.preencoded`) through
:class:`~media.loadtest.sfuclient.ClipTrack`, which answers a PLI with a
keyframe from the clip; nobody decodes: received frames are counted from the
encoded stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection

from media.signals import SFU_ID
from signaling.client import SignalingClient, SignalingClosed

from .aiortc_compat import receiver_remote_streams, receiver_rtx_ssrcs
from .preencoded import EncodedClip
from .sfuclient import SfuClient, TrackStats
from .simulcast import SimulcastClips

logger = logging.getLogger(__name__)

PUBLISHER = "publisher"
SUBSCRIBER = "subscriber"


@dataclass(frozen=True)
class PacketCounts:
    """RTP packets of one received track, from the receiver's RTCP statistics.

    ``lost`` counts media packets that never arrived on the media SSRC, before
    any repair: the network (or the server) dropped them. ``retransmitted``
    counts RTX packets received, i.e. NACK repairs.
    """

    received: int = 0
    lost: int = 0
    retransmitted: int = 0

    @property
    def expected(self) -> int:
        return self.received + self.lost

    def __add__(self, other: PacketCounts) -> PacketCounts:
        return PacketCounts(
            self.received + other.received,
            self.lost + other.lost,
            self.retransmitted + other.retransmitted,
        )


def _receiver_counts(receiver: Any) -> PacketCounts:
    # aiortc 1.16 keeps per-SSRC statistics privately; getStats() reports only
    # one SSRC per receiver (RTX overwrites media), so read them directly.
    streams = receiver_remote_streams(receiver) or {}
    rtx = receiver_rtx_ssrcs(receiver)
    counts = PacketCounts()
    for ssrc, stream in list(streams.items()):
        if ssrc in rtx:
            counts += PacketCounts(retransmitted=int(stream.packets_received))
        else:
            counts += PacketCounts(int(stream.packets_received), int(stream.packets_lost))
    return counts


class SignaledPeer:
    """A headless participant joined over HTTP, signaling and the SFU.

    ``video``/``audio`` are the clips it publishes, or ``simulcast`` the
    video layers instead of ``video`` (all None: it only receives).
    Construct with :meth:`connect`, then :meth:`publish`.

    ``receive_cap_bps``: police what arrives on its subscribe connection
    (:mod:`media.loadtest.netcap`), like a slow downlink.

    ``sfu_messages_only``: take only the SFU's messages off the socket and
    leave every other one in ``signaling`` for the caller to read (as tests
    do); ``error`` and ``call_ended`` are then not recorded here.
    """

    def __init__(
        self,
        user_id: str,
        signaling: SignalingClient,
        *,
        video: EncodedClip | None,
        audio: EncodedClip | None,
        rtc_configuration: RTCConfiguration | None = None,
        clock: Callable[[], float] = time.monotonic,
        started_at: float | None = None,
        count_only: bool = False,
        sfu_messages_only: bool = False,
        simulcast: SimulcastClips | None = None,
        receive_cap_bps: int | None = None,
    ) -> None:
        self.user_id = user_id
        self._sfu_messages_only = sfu_messages_only
        self.signaling = signaling
        sends = video is not None or audio is not None or simulcast is not None
        self.role = PUBLISHER if sends else SUBSCRIBER
        self._clock = clock
        self.started_at = clock() if started_at is None else started_at
        self.media = SfuClient(
            user_id,
            signaling.send,
            rtc_configuration=rtc_configuration or RTCConfiguration(iceServers=[]),
            video=video,
            audio=audio,
            clock=clock,
            count_only=count_only,
            simulcast=simulcast,
            receive_cap_bps=receive_cap_bps,
        )
        self.publish_connected_at: float | None = None
        self.subscribe_connected_at: float | None = None
        self.failures: list[str] = []
        self.call_ended: str | None = None
        self._watch(self.media.subscribe_pc, "subscribe")
        self._pump = asyncio.get_running_loop().create_task(self._run(), name=f"pump {user_id}")

    @classmethod
    async def connect(
        cls,
        base_url: str,
        call_id: str,
        token: str,
        user_id: str,
        *,
        video: EncodedClip | None,
        audio: EncodedClip | None,
        session: aiohttp.ClientSession | None = None,
        rtc_configuration: RTCConfiguration | None = None,
        started_at: float | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - the WebSocket handshake's
        count_only: bool = False,
        sfu_messages_only: bool = False,
        simulcast: SimulcastClips | None = None,
        receive_cap_bps: int | None = None,
    ) -> SignaledPeer:
        """Open the signaling socket of a participant that already joined over HTTP."""
        signaling = await SignalingClient.open(
            base_url, call_id, token, session=session, timeout=timeout
        )
        return cls(
            user_id,
            signaling,
            video=video,
            audio=audio,
            rtc_configuration=rtc_configuration,
            started_at=started_at,
            count_only=count_only,
            sfu_messages_only=sfu_messages_only,
            simulcast=simulcast,
            receive_cap_bps=receive_cap_bps,
        )

    # --- actions ---------------------------------------------------------

    async def publish(self) -> None:
        """Send the publish offer; a receive-only peer sends ``subscribe`` instead
        (the SFU admits it without a publish connection)."""
        await self.media.publish()
        if self.media.publish_pc is not None:
            self._watch(self.media.publish_pc, "publish")

    # --- state -----------------------------------------------------------

    @property
    def connected_at(self) -> float | None:
        """When the connection this peer is here for came up: publish for a
        publisher, subscribe for a receive-only peer."""
        if self.role == PUBLISHER:
            return self.publish_connected_at
        return self.subscribe_connected_at

    @property
    def connected(self) -> bool:
        return self.connected_at is not None and not self.failed

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def tracks(self) -> dict[tuple[str, str], TrackStats]:
        """Current stats of every received track, by (source participant, kind)."""
        out: dict[tuple[str, str], TrackStats] = {}
        for source, kind in self.media.sources():
            stats = self.media.received_from(source, kind)
            if stats is not None:
                out[(source, kind)] = stats
        return out

    def packet_counts(self) -> dict[tuple[str, str], PacketCounts]:
        """RTP packet counters of every received track, by (source participant, kind)."""
        out: dict[tuple[str, str], PacketCounts] = {}
        for transceiver in self.media.subscribe_pc.getTransceivers():
            entry = self.media.track_info.get(str(transceiver.mid))
            if entry is None:
                continue
            key = (str(entry.get("participant_id")), str(entry.get("kind")))
            out[key] = out.get(key, PacketCounts()) + _receiver_counts(transceiver.receiver)
        return out

    def _watch(self, pc: RTCPeerConnection, name: str) -> None:
        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                now = self._clock()
                if name == "publish" and self.publish_connected_at is None:
                    self.publish_connected_at = now
                elif name == "subscribe" and self.subscribe_connected_at is None:
                    self.subscribe_connected_at = now
            elif state == "failed" and not self._closing:
                self.failures.append(f"{name} connection failed")

    _closing = False

    async def _run(self) -> None:
        # Bounded by close(): it cancels this task; a closed socket ends it too.
        where = (lambda m: m.get("sender_id") == SFU_ID) if self._sfu_messages_only else None
        while True:
            try:
                message = await self.signaling.receive(where=where, timeout=60)
            except TimeoutError:
                continue
            except SignalingClosed as exc:
                if not self._closing and self.call_ended is None:
                    self.failures.append(f"signaling closed (code {exc.code})")
                return
            sender = message.get("sender_id")
            kind = message.get("type")
            if sender == SFU_ID:
                self.media.deliver(message)
            if kind == "error":
                self.failures.append(f"{message.get('code')}: {message.get('message')}")
            elif kind == "call_ended":
                self.call_ended = str(message.get("reason"))

    async def stop_media(self) -> None:
        """Stop handling SFU messages and close both peer connections; the
        signaling socket stays open (to leave over it or over HTTP). Idempotent."""
        self._closing = True
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        await self.media.close()

    async def close(self) -> None:
        """Close the media connections and the socket (idempotent)."""
        await self.stop_media()
        await self.signaling.close()
