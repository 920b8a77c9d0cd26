"""A participant of an SFU room: one publish and one subscribe connection.

The client offers on **publish** and the server answers; the server offers on
**subscribe** whenever the set of tracks the participant should receive
changes, one offer at a time (aiortc has no rollback): changes made while an
offer is outstanding, or within ``MediaConfig.renegotiation_delay`` of the
first change after an earlier offer (a burst of joiners), are folded into one
offer.

A participant whose connection fails, whose subscribe answer does not come
within ``MediaConfig.negotiation_timeout``, or whose negotiation task dies
tells its room (``on_failed``), which removes it: no zombie participants.

A client whose network changed restarts ICE (docs/protocol.md "ICE restart")
instead of starting over: a publish offer with ``ice_restart: true``, and an
``ice_restart`` message for the subscribe connection (the next subscribe
offer carries new credentials). :class:`media.aiortc_compat.IceRestart` does
it in place, under the running DTLS session, tracks and subscriptions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCIceCandidate, RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamTrack

from . import downstream
from .adaptation import SubscriberAdaptation
from .aiortc_compat import (
    IceRestart,
    accept_header_extensions,
    accept_transport_cc,
    negotiated_codecs,
    server_peer_connection,
)
from .config import MediaConfig
from .errors import BadSignal, MediaError, NegotiationTimeout, SessionFailed
from .fastsend import ResendBudget
from .feedback import FeedbackTarget, SubscriberFeedback
from .forwarder import DownTrack, UpTrack
from .inbound import PublisherInbound
from .metrics import MediaMetrics
from .pacing import Pacing
from .probe import Prober
from .rtpheader import URI_REPAIRED_RID, URI_RID, URI_TRANSPORT_CC
from .signals import (
    PUBLISH,
    SUBSCRIBE,
    Message,
    RoomSignaling,
    announce_ip,
    default_source,
    description_message,
    ice_credentials,
    ice_ufrag,
    parse_candidate,
    parse_description,
    parse_sources,
)
from .simulcast import answer_layers, offered_layers
from .subscription import Slot
from .transportcc import TransportCc

logger = logging.getLogger(__name__)

FORWARDABLE = frozenset({"audio/opus", "video/vp8", "video/h264"})
_AIORTC_ERRORS = (ValueError, InternalError, InvalidAccessError, InvalidStateError, OperationError)
# Applying a remote description: aiortc also raises AttributeError, KeyError,
# TypeError, ... for SDP that parses but lacks what it relies on (an m-line
# without a DTLS fingerprint, say). Any of them is the peer's bad input.
_DESCRIPTION_ERRORS = (Exception,)
# Remote candidates held for a connection without a remote description yet (a
# browser gathers a handful per connection; more means a misbehaving client).
MAX_HELD_CANDIDATES = 64


class HeldCandidates:
    """Remote ICE candidates of one connection, held until it has a remote description.

    Trickled candidates can overtake the description they belong to (the
    subscribe answer is applied by the negotiation task, after
    ``handle_subscribe_answer`` returned). aiortc adds such a candidate to the
    ICE transport but cannot record it in the remote description and warns;
    on a connection without transceivers yet it drops it. So candidates are
    held, at most ``limit`` of them, and added in arrival order by
    :meth:`release` once the remote description is set; later ones go straight
    through.
    """

    def __init__(self, pc: RTCPeerConnection, name: str, limit: int = MAX_HELD_CANDIDATES) -> None:
        self._pc = pc
        self._name = name
        self._limit = limit
        self._held: list[RTCIceCandidate] = []
        self._released = False

    @property
    def held(self) -> int:
        return len(self._held)

    async def add(self, candidate: RTCIceCandidate) -> None:
        if not self._released:
            if len(self._held) >= self._limit:
                raise BadSignal(
                    f"more than {self._limit} {self._name} ICE candidates before its description"
                )
            self._held.append(candidate)
            return
        try:
            await self._pc.addIceCandidate(candidate)
        except _AIORTC_ERRORS as exc:
            raise BadSignal(f"cannot add ICE candidate: {exc}") from exc

    async def release(self) -> None:
        """The remote description is set: add the held candidates, in order."""
        # Candidates arriving while this awaits are still held, so appended
        # behind the others and added by this loop: arrival order is kept.
        while self._held:
            candidate = self._held.pop(0)
            try:
                await self._pc.addIceCandidate(candidate)
            except _AIORTC_ERRORS as exc:
                logger.warning("ignoring a bad held %s ICE candidate: %s", self._name, exc)
        self._released = True


class Participant:
    """Server side of one participant: publish/subscribe connections and tracks."""

    def __init__(
        self,
        room_id: str,
        participant_id: str,
        *,
        config: MediaConfig,
        metrics: MediaMetrics,
        signaling: RoomSignaling,
        on_published_changed: Callable[[], None],
        on_failed: Callable[[Participant, MediaError], None] = lambda p, e: None,
    ) -> None:
        self.room_id = room_id
        self.id = participant_id
        self._config = config
        self._metrics = metrics
        self._signaling = signaling
        self._on_published_changed = on_published_changed
        self._on_failed = on_failed
        self._failure: MediaError | None = None
        self._publish_pc = server_peer_connection(config.rtc_configuration())
        self._subscribe_pc = server_peer_connection(config.rtc_configuration())
        self._publish_pc.on("track", self._on_publish_track)
        self._publish_pc.on("connectionstatechange", self._on_publish_state)
        self._subscribe_pc.on("connectionstatechange", self._on_subscribe_state)
        self._publish_lock = asyncio.Lock()
        self._publish_ufrag: str | None = None
        self._publish_candidates = HeldCandidates(self._publish_pc, PUBLISH)
        # The publish connection's media goes through Huddle's own receive path.
        self._inbound = PublisherInbound(
            f"{room_id}/{participant_id}",
            metrics=metrics,
            remb_bitrate=config.max_publish_bitrate,
        )
        self._subscribe_candidates = HeldCandidates(self._subscribe_pc, SUBSCRIBE)
        self._publish_restart = IceRestart(self._publish_pc, PUBLISH)
        self._subscribe_restart = IceRestart(self._subscribe_pc, SUBSCRIBE)
        #: The client asked for an ICE restart of the subscribe connection.
        self._restart_subscribe = False
        #: The outstanding subscribe offer's messages (``tracks``, ``offer``), sent
        #: again when the client resumes: its socket may have died with them.
        self._offer_messages: list[Message] = []
        # ... and its subscribers' RTCP through Huddle's own feedback handling.
        self._feedback = SubscriberFeedback(
            f"{room_id}/{participant_id}", self._sender_for, metrics=metrics
        )
        # The send-side estimate from its transport-wide feedback, and probes.
        self._transport = TransportCc(
            f"{room_id}/{participant_id}",
            accelerated=downstream.DEFAULT.accelerated,
            metrics=metrics,
        )
        self._feedback.on_transport_feedback = self._transport.on_feedback
        self._feedback.on_rtt = self._transport.set_rtt
        self._feedback.on_loss = self._transport.on_loss_report
        # What it is sent leaves at the pace of its estimate (media/pacing.py).
        self._pacing = Pacing(f"{room_id}/{participant_id}")
        self._prober = Prober(
            f"{room_id}/{participant_id}",
            self._transport,
            self._pad,
            metrics=metrics,
            boost=self._pacing.boost,
        )
        self._up_tracks: dict[str, UpTrack] = {}
        # What the publisher said each of its m-lines sends (publish offer's
        # ``sources``); a mid it did not name gets its kind's default.
        self._sources: dict[str, str] = {}
        # Mids already refused (codec we cannot forward): warned about once.
        self._unforwardable: set[str] = set()
        self._retired: list[UpTrack] = []
        self._slots: list[Slot] = []
        self._posts: set[asyncio.Task[None]] = set()  # messages sent from callbacks
        # What of each received track this participant's downlink can take.
        self._adaptation = SubscriberAdaptation(
            f"{room_id}/{participant_id}",
            self._feedback,
            lambda: self._slots,
            self._send,
            metrics=metrics,
            transport=self._transport,
            prober=self._prober,
            pacing=self._pacing,
        )
        # Its retransmissions share one budget: what media leaves of its estimate.
        adaptation = self._adaptation
        self._resend_budget = ResendBudget(
            lambda: adaptation.estimate, lambda: adaptation.media_rate
        )
        self._wanted: list[UpTrack] = []
        self._dirty = asyncio.Event()
        self._answer: asyncio.Future[RTCSessionDescription] | None = None
        self._closing: asyncio.Event | None = None
        self._closed = asyncio.Event()
        self.offers_sent = 0
        self._negotiator = asyncio.get_running_loop().create_task(
            self._negotiate_loop(), name=f"subscribe negotiation {participant_id}"
        )
        self._adaptation.start()

    def __repr__(self) -> str:
        return f"Participant({self.room_id}/{self.id})"

    @property
    def closed(self) -> bool:
        return self._closing is not None

    def published(self) -> list[UpTrack]:
        """Live published tracks, in publication order."""
        return [up for up in self._up_tracks.values() if not up.ended]

    def subscriptions(self) -> list[dict[str, Any]]:
        """What the last ``tracks`` message said (or will say) this participant receives."""
        return [d for d in (slot.describe() for slot in self._slots) if d is not None]

    @property
    def failure(self) -> MediaError | None:
        """Why this participant failed (and was reported to its room), if it did."""
        return self._failure

    def down_tracks(self) -> list[DownTrack]:
        """The down tracks of its subscribe slots (what it receives, by slot)."""
        return [slot.down for slot in self._slots]

    @property
    def negotiating(self) -> bool:
        return self._answer is not None or self._dirty.is_set()

    # --- publish ---------------------------------------------------------

    def is_new_session(self, message: Message) -> bool:
        """Whether a publish offer starts over rather than renegotiates.

        A client whose SFU connection failed closes both connections and
        offers from a fresh one: a new ICE username. An offer to a publish
        connection that is failed or closed cannot be applied to it either.
        A new ICE username on an offer marked ``ice_restart`` renegotiates
        (an ICE restart) while the connection is established.
        """
        if self.closed:
            return True
        pc = self._publish_pc
        if pc.signalingState == "closed" or pc.connectionState in ("failed", "closed"):
            return True
        if message.get("ice_restart") is True and pc.connectionState == "connected":
            return False
        if self._publish_ufrag is None:
            return False  # no offer applied yet: this is the first
        sdp = message.get("sdp")
        ufrag = ice_ufrag(sdp) if isinstance(sdp, str) else None
        # Without a ufrag the offer is malformed: let applying it fail on the
        # session it was sent to rather than tear that session down.
        return ufrag is not None and ufrag != self._publish_ufrag

    async def handle_publish_offer(self, message: Message) -> None:
        description = parse_description(message, "offer")
        sources = parse_sources(message)
        async with self._publish_lock:
            if self.closed:
                return
            # Read by the up tracks this offer starts (its ``track`` events).
            self._sources = sources
            credentials = ice_credentials(description.sdp)
            restart = (
                message.get("ice_restart") is True
                and credentials is not None
                and credentials[0] != self._publish_ufrag
            )
            if restart:
                try:
                    self._publish_restart.renew_local()
                except ConnectionError as exc:
                    raise BadSignal(f"cannot restart ICE: {exc}") from exc
            try:
                await self._publish_pc.setRemoteDescription(description)
                accept_transport_cc(self._publish_pc, URI_TRANSPORT_CC)
                accept_header_extensions(self._publish_pc, (URI_RID, URI_REPAIRED_RID))
                answer = await self._publish_pc.createAnswer()
                await self._publish_pc.setLocalDescription(answer)
            except _DESCRIPTION_ERRORS as exc:
                raise BadSignal(f"cannot apply publish offer: {type(exc).__name__}: {exc}") from exc
            if restart and credentials is not None:
                self._start_restart(self._publish_restart, PUBLISH, credentials)
            self._publish_ufrag = ice_ufrag(description.sdp)
            layers = offered_layers(description.sdp)
            self._inbound.configure(self._publish_pc, layers)
            await self._publish_candidates.release()
            self._sync_published()
            sdp = answer_layers(self._publish_pc.localDescription.sdp, layers)
            sdp = announce_ip(sdp, self._config.announced_ip)
        await self._send(description_message("answer", PUBLISH, sdp))
        self._on_published_changed()

    def _on_publish_track(self, track: MediaStreamTrack) -> None:
        # During setRemoteDescription, before aiortc starts the receiver: the
        # up track's end hook must replace its decoder queue before then.
        transceiver = next(
            (t for t in self._publish_pc.getTransceivers() if t.receiver.track is track), None
        )
        if transceiver is not None and transceiver.mid not in self._up_tracks:
            self._start_up_track(transceiver)

    def _start_up_track(self, transceiver: RTCRtpTransceiver) -> None:
        """Forward what ``transceiver`` now receives (a new m-line, or one re-enabled)."""
        mid = str(transceiver.mid)
        codecs = [c for c in negotiated_codecs(transceiver) if c.name.lower() != "rtx"]
        mime = codecs[0].mimeType.lower() if codecs else "none"
        if mime not in FORWARDABLE:
            if mid not in self._unforwardable:
                self._unforwardable.add(mid)
                logger.warning("%r: cannot forward a %s track; ignored", self, mime)
            return
        self._unforwardable.discard(mid)
        up = UpTrack(
            self.id,
            transceiver,
            self._inbound,
            pli_min_interval=self._config.pli_min_interval,
            metrics=self._metrics,
            on_ended=self._on_up_ended,
            on_layers=self._on_up_layers,
            source=self._sources.get(mid, default_source(transceiver.kind)),
        )
        self._up_tracks[mid] = up
        logger.info("%r publishes %s %s (%s)", self, up.source, up.kind, mime)

    def _sync_published(self) -> None:
        """Match the published tracks to the m-lines that send to us after an offer.

        A new m-line started its up track at its ``track`` event; one
        re-enabled (a screen share started again on the transceiver of an
        earlier one: aiortc fires no second ``track`` event for it, and its
        receiver runs already) starts one here. One no longer sending
        (``inactive``, stopped) ends its up track, which frees the
        subscribers' slots.
        """
        by_mid = {t.mid: t for t in self._publish_pc.getTransceivers()}
        for mid, up in list(self._up_tracks.items()):
            transceiver = by_mid.get(mid)
            if transceiver is None or transceiver.currentDirection not in ("recvonly", "sendrecv"):
                up.end()
        for key, transceiver in by_mid.items():
            if (
                key is not None
                and key not in self._up_tracks
                and transceiver.kind in ("audio", "video")
                and transceiver.currentDirection in ("recvonly", "sendrecv")
            ):
                self._start_up_track(transceiver)

    def stop_publishing(self) -> None:
        """End every published track: nobody receives them from now on."""
        for up in list(self._up_tracks.values()):
            up.end()

    def _on_up_layers(self, up: UpTrack, rids: list[str]) -> None:
        """Dynacast: tell the publisher which simulcast layers of ``up`` to encode."""
        if self.closed:
            return
        task = asyncio.get_running_loop().create_task(
            self._send({"type": "layers", "mid": up.mid, "rids": rids}),
            name=f"layers {self.id}",
        )
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    def _on_up_ended(self, up: UpTrack) -> None:
        for mid, other in list(self._up_tracks.items()):
            if other is up:
                del self._up_tracks[mid]
        for down in up.downs():
            down.detach(up)
        self._retired.append(up)  # its keyframe task is awaited in close()
        if not self.closed:
            logger.info("%r stopped publishing %s", self, up.kind)
            self._on_published_changed()

    # --- subscribe -------------------------------------------------------

    def set_track_settings(self, tracks: list[dict[str, Any]]) -> None:
        """How the client shows what it receives (validated ``track_settings`` entries)."""
        for setting in tracks:
            self._adaptation.set_view(
                str(setting["mid"]),
                setting.get("width"),
                setting.get("height"),
                bool(setting.get("visible", True)),
            )

    def set_wanted(self, tracks: list[UpTrack]) -> None:
        """The tracks this participant should receive; renegotiates if needed."""
        if self.closed:
            return
        self._wanted = list(tracks)
        self._dirty.set()

    def request_ice_restart(self) -> None:
        """The client's ``ice_restart``: offer the subscribe connection new ICE credentials."""
        if self.closed:
            return
        if self._subscribe_pc.connectionState != "connected":
            raise BadSignal("the subscribe connection is not connected: start over instead")
        self._restart_subscribe = True
        self._dirty.set()

    async def resend_offer(self) -> None:
        """The client resumed: send the outstanding subscribe offer again, if any."""
        if self._answer is None or self._answer.done():
            return
        for message in list(self._offer_messages):
            await self._send(message)

    def _start_restart(self, restart: IceRestart, name: str, credentials: tuple[str, str]) -> None:
        restart.set_remote(*credentials)
        task = asyncio.get_running_loop().create_task(
            self._watch_restart(restart, name), name=f"ICE restart {name} {self.id}"
        )
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    async def _watch_restart(self, restart: IceRestart, name: str) -> None:
        try:
            took = await restart.wait()
        except TimeoutError as exc:
            logger.warning("%r: ICE restart failed: %s", self, exc)
            self._metrics.ice_restart(name, "timeout")
            return
        except (asyncio.CancelledError, ConnectionError):
            return  # superseded by another restart, or closed
        logger.info("%r: %s ICE restarted on a new pair in %.2f s", self, name, took)
        self._metrics.ice_restart(name, "ok")
        if name == SUBSCRIBE:
            self._transport.path_changed()
            for slot in self._slots:
                slot.fast.check_route()  # the RTP routes follow the pair now, not at the next RTCP

    async def handle_subscribe_answer(self, message: Message) -> None:
        description = parse_description(message, "answer")
        waiter = self._answer
        if waiter is None or waiter.done():
            raise BadSignal("no subscribe offer is outstanding")
        waiter.set_result(description)

    def _apply_wanted(self) -> bool:
        wanted = [up for up in self._wanted if not up.ended]
        wanted_set = set(wanted)
        changed = False
        for slot in self._slots:
            current = slot.current
            if current is not None and current not in wanted_set:
                slot.release()
                changed = True
        carried = {slot.current for slot in self._slots}
        for up in wanted:
            if up in carried:
                continue
            free = next((s for s in self._slots if s.can_carry(up)), None)
            if free is not None:
                free.reuse(up)
            else:
                slot = Slot(self._subscribe_pc, up, self._metrics, gso=self._config.udp_gso)
                slot.fast.stream.twcc = self._transport.log
                self._pacing.attach(slot.fast.stream)
                slot.fast.resend_budget = self._resend_budget
                self._slots.append(slot)
            changed = True
        return changed

    async def _negotiate_loop(self) -> None:
        try:
            while True:
                await self._dirty.wait()
                if (
                    self.offers_sent
                    and self._config.renegotiation_delay > 0
                    and not self._restart_subscribe
                ):
                    # A renegotiation: let the rest of a burst of changes
                    # (joiners publishing at once) arrive, then offer once.
                    await asyncio.sleep(self._config.renegotiation_delay)
                self._dirty.clear()
                if self._subscribe_pc.signalingState == "closed":
                    # aiortc closes a connection itself once its DTLS transport
                    # closed (the client went away): nothing left to negotiate.
                    logger.info("%r: subscribe connection closed", self)
                    return
                restart = self._restart_subscribe
                if self._apply_wanted() or restart:
                    await self._negotiate_once()
        except asyncio.CancelledError:
            pass
        except NegotiationTimeout as exc:
            logger.warning("%r: %s", self, exc)
            self._fail(exc)
        except Exception as exc:
            logger.exception("%r: subscribe negotiation failed", self)
            self._fail(SessionFailed(f"subscribe negotiation failed: {type(exc).__name__}"))

    async def _negotiate_once(self) -> None:
        pc = self._subscribe_pc
        restart, self._restart_subscribe = self._restart_subscribe, False
        if restart:
            try:
                self._subscribe_restart.renew_local()
            except ConnectionError as exc:
                logger.info("%r: no subscribe ICE restart: %s", self, exc)
                restart = False
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        self._answer = asyncio.get_running_loop().create_future()
        sdp = pc.localDescription.sdp
        if self._config.transport_cc:
            sdp = self._transport.offer(sdp)
        sdp = announce_ip(sdp, self._config.announced_ip)
        self.offers_sent += 1
        self._metrics.subscribe_offer_sent()
        self._offer_messages = [
            {"type": "tracks", "tracks": self.subscriptions()},
            description_message("offer", SUBSCRIBE, sdp),
        ]
        for message in self._offer_messages:
            await self._send(message)
        timeout = self._config.negotiation_timeout
        done, _ = await asyncio.wait({self._answer}, timeout=timeout)
        if not done:
            self._answer.cancel()
            self._answer = None
            raise NegotiationTimeout(f"no subscribe answer within {timeout:g} s")
        answer = self._answer.result()
        self._answer = None
        self._offer_messages = []
        try:
            await pc.setRemoteDescription(answer)
        except _DESCRIPTION_ERRORS as exc:
            logger.warning("%r: bad subscribe answer: %r", self, exc)
            await self._send_error(BadSignal(f"bad subscribe answer: {exc}"))
            self._restart_subscribe = self._restart_subscribe or restart
            self._dirty.set()  # offer again
            return
        credentials = ice_credentials(answer.sdp)
        if restart and credentials is not None:
            self._start_restart(self._subscribe_restart, SUBSCRIBE, credentials)
        self._transport.answered(pc, answer.sdp)
        self._feedback.configure(pc)
        for slot in self._slots:
            slot.fast.relayout()
            slot.activate_pending()
        await self._subscribe_candidates.release()

    def _pad(self, nbytes: int) -> int:
        """Probe padding (media.probe): from the video streams sent now."""
        sent = 0
        senders = [
            slot.fast
            for slot in self._slots
            if slot.kind == "video" and slot.source is not None and slot.fast.ready
        ]
        for fast in senders:
            if sent >= nbytes:
                break
            sent += fast.pad(nbytes - sent)
        return sent

    def _sender_for(self, ssrc: int) -> FeedbackTarget | None:
        """The subscribe sender on media SSRC ``ssrc`` (for its subscriber's RTCP)."""
        for slot in self._slots:
            if slot.fast.ssrc == ssrc and ssrc:
                return slot.fast
        return None

    # --- ICE -------------------------------------------------------------

    async def handle_candidate(self, pc_name: str, message: Message) -> None:
        """Add a trickled remote candidate, held until its description is applied."""
        candidate = parse_candidate(message)
        if candidate is None or self.closed:
            return
        if pc_name == PUBLISH:
            async with self._publish_lock:
                await self._publish_candidates.add(candidate)
        else:
            await self._subscribe_candidates.add(candidate)

    # --- lifecycle -------------------------------------------------------

    async def _send(self, message: Message) -> None:
        try:
            await self._signaling.send(self.id, message)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%r: cannot deliver %s", self, message.get("type"))

    async def _send_error(self, error: MediaError) -> None:
        try:
            await self._signaling.send_error(self.id, error)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%r: cannot deliver error %s", self, error.code)

    def _on_publish_state(self) -> None:
        if self._publish_pc.connectionState == "failed":
            logger.warning("%r: publish connection failed", self)
            self._fail(SessionFailed("the publish connection failed"))

    def _on_subscribe_state(self) -> None:
        if self._subscribe_pc.connectionState == "failed":
            logger.warning("%r: subscribe connection failed", self)
            self._fail(SessionFailed("the subscribe connection failed"))

    def _fail(self, error: MediaError) -> None:
        """Tell the room, once, that this participant cannot go on (it removes us)."""
        if self._failure is not None or self.closed:
            return
        self._failure = error
        self._on_failed(self, error)

    async def close(self) -> None:
        """Close both connections and release every track (idempotent)."""
        if self._closing is not None:
            await self._closed.wait()
            return
        self._closing = asyncio.Event()
        self._negotiator.cancel()
        await asyncio.gather(self._negotiator, return_exceptions=True)
        await self._adaptation.close()
        await self._prober.close()
        await self._pacing.close()
        await self._publish_restart.close()
        await self._subscribe_restart.close()
        posts = list(self._posts)
        for task in posts:
            task.cancel()
        await asyncio.gather(*posts, return_exceptions=True)
        if self._answer is not None:
            self._answer.cancel()
            self._answer = None
        for slot in self._slots:
            slot.close()
        self.stop_publishing()
        self._up_tracks.clear()
        await self._inbound.close()
        self._feedback.close()
        async with self._publish_lock:
            await self._publish_pc.close()
        await self._subscribe_pc.close()
        retired, self._retired = self._retired, []
        for up in retired:
            await up.close()
        self._slots.clear()
        self._wanted = []
        self._closed.set()
        logger.info("%r closed", self)
