"""Load peers: an :class:`~media.loadtest.sfuclient.SfuClient` over the real signaling socket.

:class:`SignaledPeer` (also the end-to-end tests' peer): SFU messages
(``sender_id == "sfu"``) go to the media client, everything else is read and
dropped here (so nothing piles up over a long run) except ``error`` and
``call_ended``, which are recorded. It adds what a load run measures: when
each connection came up, and per-track RTP packet counters.

On ``reconnect`` (the node is draining, docs/protocol.md) a peer opened with
:meth:`SignaledPeer.connect` opens its socket again (where its ``reconnect_url``
says, by default the same base URL: behind a load balancer, a ready node) and,
with ``republish``, starts its SFU session over with a fresh media client:
:attr:`SignaledPeer.media` is then a new :class:`SfuClient` (its statistics
start again) and :attr:`SignaledPeer.reconnects` counts the moves. A socket
that drops for any other reason that is worth a retry (the node died: 1006)
is opened again the same way; the peer then asks the SFU whether its session
is still there (``resume``). ``error {code: "sfu_session_lost"}``, the answer
when it is not and what the other nodes send when a room's node died, starts
the SFU session over on the same socket (:attr:`SignaledPeer.restarts`).

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
from signaling.client import SignalingClient, SignalingClosed, SignalingRejected
from signaling.errors import CloseCode

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


@dataclass(frozen=True)
class Reconnect:
    """How a peer opens its socket again on ``reconnect``."""

    call_id: str
    token: str
    url: Callable[[], str]
    session: aiohttp.ClientSession | None = None
    timeout: float = 10.0
    #: Attempts (a node still draining refuses with 503) stop after this long.
    give_up_after_s: float = 30.0


class SignaledPeer:
    """A headless participant joined over HTTP, signaling and the SFU.

    ``video``/``audio`` are the clips it publishes, or ``simulcast`` the
    video layers instead of ``video`` (all None: it only receives).
    Construct with :meth:`connect`, then :meth:`publish`.

    ``receive_cap_bps``: shape what arrives on its subscribe connection
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
        reconnect: Reconnect | None = None,
    ) -> None:
        self.user_id = user_id
        self._sfu_messages_only = sfu_messages_only
        self.signaling = signaling
        sends = video is not None or audio is not None or simulcast is not None
        self.role = PUBLISHER if sends else SUBSCRIBER
        self._clock = clock
        self.started_at = clock() if started_at is None else started_at

        def new_media() -> SfuClient:
            return SfuClient(
                user_id,
                self._send,
                rtc_configuration=rtc_configuration or RTCConfiguration(iceServers=[]),
                video=video,
                audio=audio,
                clock=clock,
                count_only=count_only,
                simulcast=simulcast,
                receive_cap_bps=receive_cap_bps,
            )

        self._new_media = new_media
        self.media = new_media()
        self._reconnect = reconnect
        #: How many times a ``reconnect`` moved this peer (socket, and media if asked).
        self.reconnects = 0
        #: How many times ``sfu_session_lost`` made it start its SFU session over.
        self.restarts = 0
        self._published = False
        self.publish_connected_at: float | None = None
        self.subscribe_connected_at: float | None = None
        self.failures: list[str] = []
        self.call_ended: str | None = None
        self._watch(self.media.subscribe_pc, "subscribe")
        self._resuming: asyncio.Task[None] | None = None
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
        reconnect_url: Callable[[], str] | None = None,
    ) -> SignaledPeer:
        """Open the signaling socket of a participant that already joined over HTTP.
        On ``reconnect`` it opens it again at ``reconnect_url()`` (default: ``base_url``)."""
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
            reconnect=Reconnect(
                call_id, token, reconnect_url or (lambda: base_url), session, timeout
            ),
        )

    # --- actions ---------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        await self.signaling.send(message)  # the current socket, also after a reconnect

    async def publish(self) -> None:
        """Send the publish offer; a receive-only peer sends ``subscribe`` instead
        (the SFU admits it without a publish connection)."""
        self._published = True
        await self.media.publish()
        if self.media.publish_pc is not None:
            self._watch(self.media.publish_pc, "publish")

    async def wait_resumed(self, count: int = 1, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Until ``count`` reconnects have completed (socket open, media republished)."""
        async with asyncio.timeout(timeout):
            while self.reconnects < count:
                task = self._resuming
                if task is not None:
                    await asyncio.shield(task)
                else:
                    await asyncio.sleep(0.05)

    async def _resume(self, republish: bool, *, ask: bool = False) -> None:
        """``reconnect``: open the socket again and, with ``republish``, start the SFU
        session over on whichever node now places the room; ``ask``: the socket
        dropped (no ``reconnect``): ask the SFU whether the session is still there."""
        target = self._reconnect
        assert target is not None
        await self.signaling.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + target.give_up_after_s
        while True:
            try:
                self.signaling = await SignalingClient.open(
                    target.url(),
                    target.call_id,
                    target.token,
                    session=target.session,
                    timeout=target.timeout,
                )
                break
            except (SignalingRejected, aiohttp.ClientError, OSError) as exc:
                if loop.time() > deadline:
                    self.failures.append(f"reconnect failed: {exc}")
                    return
                await asyncio.sleep(0.2)
        if republish:
            await self._renew_media()
        self._pump = loop.create_task(self._run(), name=f"pump {self.user_id}")
        if republish and self._published:
            await self.publish()
        elif ask and self._published:
            await self._send({"type": "resume", "target_id": SFU_ID})
        self.reconnects += 1

    async def _renew_media(self) -> None:
        old, self.media = self.media, self._new_media()
        await old.close()
        self._watch(self.media.subscribe_pc, "subscribe")

    async def _start_over(self) -> None:
        """``sfu_session_lost``: a fresh SFU session on the same socket."""
        await self._renew_media()
        await self.publish()
        self.restarts += 1

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
        media = self.media

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if media is not self.media:
                return  # a media client replaced after a reconnect
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
        where = _sfu_or_reconnect if self._sfu_messages_only else None
        signaling = self.signaling
        while True:
            try:
                message = await signaling.receive(where=where, timeout=60)
            except TimeoutError:
                continue
            except SignalingClosed as exc:
                if (
                    exc.code == CloseCode.SERVICE_RESTART
                    and self._reconnect is not None
                    and not self._closing
                ):
                    # Closed for a drain without its ``reconnect`` read: move all the same.
                    self._resuming = asyncio.create_task(self._resume(True))
                elif (
                    exc.code not in FINAL_CLOSES
                    and self._reconnect is not None
                    and not self._closing
                    and self.call_ended is None
                ):
                    self._resuming = asyncio.create_task(self._resume(False, ask=True))
                elif not self._closing and self.call_ended is None:
                    self.failures.append(f"signaling closed (code {exc.code})")
                return
            sender = message.get("sender_id")
            kind = message.get("type")
            if kind == "reconnect" and sender != SFU_ID and self._reconnect is not None:
                republish = bool(message.get("republish"))
                self._resuming = asyncio.create_task(
                    self._resume(republish), name=f"resume {self.user_id}"
                )
                return  # the resumed socket gets a pump of its own
            if kind == "error" and message.get("code") == SESSION_LOST:
                if self._published and not self._closing:
                    self._resuming = asyncio.create_task(
                        self._start_over(), name=f"start over {self.user_id}"
                    )
                continue
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
        if self._resuming is not None:
            self._resuming.cancel()
            await asyncio.gather(self._resuming, return_exceptions=True)
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        await self.media.close()

    async def close(self) -> None:
        """Close the media connections and the socket (idempotent)."""
        await self.stop_media()
        await self.signaling.close()


#: Close codes after which opening the socket again would not help (docs/protocol.md).
FINAL_CLOSES = frozenset({1000, 1002, 1007, 1009, CloseCode.REPLACED, CloseCode.TOO_MANY_ERRORS})
#: The ``error`` code that means "start the SFU session over".
SESSION_LOST = "sfu_session_lost"


def _sfu_or_reconnect(message: dict[str, Any]) -> bool:
    return (
        message.get("sender_id") == SFU_ID
        or message.get("type") == "reconnect"
        or (message.get("type") == "error" and message.get("code") == SESSION_LOST)
    )
