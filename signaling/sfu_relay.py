"""The SFU relay: client messages for the SFU to the room's owner node, answers back.

A message with ``target_id: "sfu"`` goes to the node that owns the call's room
(placed by the first node with an SFU to see one, on the least-loaded node:
:mod:`signaling.placement`), over that node's channel as an ``sfu`` envelope
``{owner, participant_id, message, size_hint?}`` unless it is this node; a
node named owner by another adopts the room on the first such envelope.
There it meets the :class:`~media.seam.SfuEndpoint`; the SFU answers
through :meth:`SfuRelay.send_to` (its :class:`~media.seam.SignalingPort`),
which stamps ``sender_id: "sfu"`` and delivers on whichever node holds the
participant's socket. Lifecycle reaches the room as typed
:data:`~media.seam.RoomEvent` values.

Rooms across nodes (:mod:`signaling.span`): with spanning on, a message goes
to the participant's media node instead (the owner, or another node once the
room outgrew it), as an ``sfu`` envelope with ``media: true``; that node's
SFU holds its own room for the call, in step with the others' through
``span`` envelopes, and hears the call's lifecycle like the owner.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from media.seam import (
    MediaError,
    Message,
    ParticipantLeft,
    RoomEnded,
    RoomEvent,
    SfuEndpoint,
    SpanEndpoint,
)
from server.lifecycle import sfu_may_serve
from server.models import Call
from signaling.bus import BusUnavailable
from signaling.errors import ErrorCode, SignalError, edge_error, error_message
from signaling.metrics import SignalingMetrics
from signaling.placement import NoNodeAvailable
from signaling.protocol import SERVER_ID, SFU_ID, stamp
from signaling.registry import SocketRegistry
from signaling.span import SpanPlacement, span_envelope

logger = logging.getLogger(__name__)

_LOST = "the SFU holds no session for you (its node went away): start the session over"

#: Client messages that would open a room: refused for a call in P2P mode.
_OPENING = frozenset({"offer", "subscribe"})


class SfuRelay:
    def __init__(
        self,
        registry: SocketRegistry,
        metrics: SignalingMetrics,
        get_call: Callable[[str], Awaitable[Call | None]],
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._get_call = get_call
        self._sfu: SfuEndpoint | None = None
        self._span_sfu: SpanEndpoint | None = None
        #: Rooms across nodes: where participants' media lives (None: on the owner).
        self.span: SpanPlacement | None = None
        self._media_nodes: dict[tuple[str, str], str] = {}

    @property
    def attached(self) -> bool:
        return self._sfu is not None

    def attach(self, endpoint: SfuEndpoint | None, span: SpanEndpoint | None = None) -> None:
        """Plug in (or remove) the SFU; without one, SFU messages get ``sfu_unavailable``.
        ``span``: its side of rooms across nodes, if it relays."""
        self._sfu = endpoint
        self._span_sfu = span

    def members(self) -> dict[str, frozenset[str]]:
        """The participants of each open room of this node's SFU, by call id."""
        return self._sfu.members() if self._sfu is not None else {}

    # -- client → SFU -----------------------------------------------------------------

    async def to_sfu(self, call_id: str, pid: str, message: Message) -> None:
        """Route a stamped client message to the room's owner. Raises
        :class:`SignalError` (no SFU) or :class:`BusUnavailable`."""
        node_id = self._registry.node_id
        if message.get("type") == "resume" and not await self._placed(call_id):
            raise SignalError(ErrorCode.SFU_SESSION_LOST, _LOST)
        owner, size_hint = await self._owner(call_id)
        if owner is None or (owner == node_id and self._sfu is None):
            raise SignalError(ErrorCode.SFU_UNAVAILABLE, "no SFU serves this call")
        target = await self._media_node(call_id, pid, owner, message)
        if target == node_id:
            if target != owner:
                await self._hold_part(call_id)
            await self.signal(call_id, pid, message)
            return
        envelope: Message = {
            "kind": "sfu",
            "owner": target,
            "participant_id": pid,
            "message": message,
        }
        if target != owner:
            envelope["media"] = True
        if size_hint:
            envelope["size_hint"] = size_hint
        await self._registry.publish(call_id, envelope, node=target)

    async def _media_node(self, call_id: str, pid: str, owner: str, message: Message) -> str:
        """Where ``pid``'s media lives: the owner, unless rooms span nodes. Asked of
        Redis when its session (re)starts, remembered for the rest of it."""
        span = self.span
        if span is None:
            return owner
        key = (call_id, pid)
        known = self._media_nodes.get(key)
        if known is None or message.get("type") in _OPENING or message.get("type") == "resume":
            known = self._media_nodes[key] = await span.media_node(call_id, pid, owner)
        return known

    async def _hold_part(self, call_id: str) -> None:
        """This node holds media of a room it does not own: hear the call's lifecycle
        until its part closes (:meth:`close_room`, or the last one of it leaving)."""
        self._registry.media_parts.add(call_id)
        await self._registry.ensure_subscribed(call_id)

    async def announce(self, call_id: str, state: Message) -> None:
        """A room's span state to the call's other media nodes (media.seam.SpanPort)."""
        span = self.span
        if span is None:
            return
        node_id = self._registry.node_id
        local = self._sfu.members().get(call_id, frozenset()) if self._sfu is not None else ()
        for node in sorted(await span.nodes(call_id, local) - {node_id}):
            await self._registry.publish(call_id, span_envelope(state), node=node)

    async def on_span(self, call_id: str, envelope: Message) -> None:
        """Another node's span state for a room here."""
        state = envelope.get("state")
        if self._span_sfu is not None and isinstance(state, dict):
            await self._span_sfu.on_span(call_id, state)

    async def _owner(self, call_id: str) -> tuple[str | None, int]:
        """The room's owner, placing the room when it has none and this node has an
        SFU; and the size hint it was placed with (0: not placed now)."""
        placement = self._registry.placement
        node_id = self._registry.node_id
        if call_id in placement.owned:
            return node_id, 0
        owner = await placement.owner(call_id)
        if self._sfu is None:
            return owner, 0
        if owner == node_id and await placement.adopt(call_id):
            await self._registry.ensure_subscribed(call_id)
            return owner, 0
        if owner is not None and owner != node_id:
            return owner, 0
        size_hint = await self._size_hint(call_id)
        try:
            owner = await placement.claim(call_id, size_hint)
        except NoNodeAvailable as exc:
            raise SignalError(
                ErrorCode.SFU_UNAVAILABLE, f"no node takes new rooms now ({exc})"
            ) from exc
        if owner == node_id:
            await self._registry.ensure_subscribed(call_id)
        return owner, size_hint

    async def _placed(self, call_id: str) -> bool:
        placement = self._registry.placement
        return call_id in placement.owned or await placement.owner(call_id) is not None

    async def owner_lost(self, call_id: str, owner: str) -> None:
        """The room's node died (:mod:`signaling.owner_watch`): everyone of the call
        online anywhere starts the SFU session over, which places the room anew."""
        self._metrics.rooms_lost.inc()
        online = set(self._registry.local(call_id)) | set(self._registry.remote.get(call_id, {}))
        error = SignalError(ErrorCode.SFU_SESSION_LOST, _LOST)
        for pid in sorted(online):
            await self.reply_error(call_id, pid, error, sender_id=SFU_ID)

    async def _size_hint(self, call_id: str) -> int:
        """How many the room is for: the call's participants who have not declined or left."""
        call = await self._get_call(call_id)
        if call is None:
            return 0
        return sum(1 for p in call.participants if p.declined_at is None and p.left_at is None)

    async def on_envelope(self, call_id: str, envelope: Message) -> None:
        """An ``sfu`` envelope for this node: adopt the room if another node placed it
        here; if it is no longer here (released, lost), route the message again."""
        pid, message = envelope.get("participant_id"), envelope.get("message")
        if not isinstance(pid, str) or not isinstance(message, dict):
            return
        placement = self._registry.placement
        hint = envelope.get("size_hint")
        try:
            if envelope.get("media") is True and self._sfu is not None:
                # This node holds the participant's media (the room spans nodes).
                await self._hold_part(call_id)
                await self.signal(call_id, pid, message)
                return
            size_hint = hint if isinstance(hint, int) else 0
            if (
                call_id not in placement.owned
                and self._sfu is not None
                and await placement.adopt(call_id, size_hint)
            ):
                await self._registry.ensure_subscribed(call_id)
            if call_id in placement.owned:
                await self.signal(call_id, pid, message)
            else:
                await self.to_sfu(call_id, pid, message)
        except Exception as exc:
            error = edge_error(exc, about="an SFU message", fallback=ErrorCode.SFU_ERROR)
            if isinstance(error, SignalError):
                await self.reply_error(call_id, pid, error, message.get("id"))

    async def signal(self, call_id: str, pid: str, message: Message) -> None:
        """On the owner: hand the message to the SFU; whatever it refuses is answered
        to the sender (on its node) through :func:`edge_error`."""
        try:
            sfu = self._sfu
            if sfu is None:
                raise SignalError(ErrorCode.SFU_UNAVAILABLE, "no SFU here")
            if not sfu.has_room(call_id) and message.get("type") in _OPENING:
                await self._refuse_p2p(call_id)
            await sfu.handle_signal(call_id, pid, message)
        except Exception as exc:
            error = edge_error(
                exc, about=f"an SFU {message.get('type')}", fallback=ErrorCode.SFU_ERROR
            )
            if isinstance(error, SignalError):
                await self.reply_error(call_id, pid, error, message.get("id"))

    async def _refuse_p2p(self, call_id: str) -> None:
        """A 1:1 call's media flows between the two browsers: the SFU holds nothing."""
        if not sfu_may_serve(await self._get_call(call_id)):
            raise SignalError(
                ErrorCode.WRONG_MODE,
                "this call is peer-to-peer; send media to the other participant",
            )

    async def reply_error(
        self,
        call_id: str,
        pid: str,
        error: SignalError,
        request_id: object = None,
        *,
        sender_id: str = SERVER_ID,
    ) -> None:
        self._metrics.error(error.code)
        message = error_message(
            error.code, error.message, call_id=call_id, request_id=request_id, sender_id=sender_id
        )
        with contextlib.suppress(BusUnavailable):
            await self._registry.deliver_to(call_id, pid, message)

    # -- SFU → client (media.seam.SignalingPort) -----------------------------------------

    async def send_to(self, call_id: str, participant_id: str, message: Message) -> None:
        """Deliver an SFU message to one participant, on whichever node holds its
        socket. Stamps ``sender_id: "sfu"``; lost (and logged) while the bus is down."""
        out = stamp(dict(message), sender_id=SFU_ID, call_id=call_id)
        try:
            await self._registry.deliver_to(call_id, participant_id, out)
        except BusUnavailable as exc:
            logger.warning("Call(%s) SFU message to %s lost: %s", call_id, participant_id, exc)

    async def send_error(self, call_id: str, participant_id: str, error: MediaError) -> None:
        """An error the SFU raises unasked, through the edge's one mapper, from ``"sfu"``."""
        mapped = edge_error(error, about="an SFU session")
        if isinstance(mapped, SignalError):
            await self.reply_error(call_id, participant_id, mapped, sender_id=SFU_ID)

    # -- lifecycle → the room -----------------------------------------------------------

    async def participant_left(self, call_id: str, pid: str) -> None:
        self._media_nodes.pop((call_id, pid), None)
        owned = call_id in self._registry.placement.owned
        if owned and self.span is not None:
            await self.span.forget(call_id, pid)
        if owned or self._holds(call_id):
            await self._tell(ParticipantLeft(call_id, pid))
        if call_id in self._registry.media_parts and not self._holds(call_id):
            self._registry.media_parts.discard(call_id)
            await self._registry.maybe_unsubscribe(call_id)

    def _holds(self, call_id: str) -> bool:
        return self._sfu is not None and self._sfu.has_room(call_id)

    async def close_room(self, call_id: str, *, ended: bool = True) -> None:
        """The call ended (or, ``ended=False``, this node gives the room up: drain):
        close the room if this node has one (its owner's, or its part of a room
        across nodes), and release the claim if it owns it."""
        placement = self._registry.placement
        for key in [k for k in self._media_nodes if k[0] == call_id]:
            del self._media_nodes[key]
        owned = call_id in placement.owned
        self._registry.media_parts.discard(call_id)
        if not owned and not self._holds(call_id):
            return
        await self._tell(RoomEnded(call_id))
        if owned:
            await placement.release(call_id)
            if ended and self.span is not None:
                # (A drained owner leaves the media nodes: the room goes on elsewhere.)
                await self.span.forget_call(call_id)

    async def on_room_lost(self, call_id: str) -> None:
        """Placement lost this node's claim (e.g. the key expired during an outage):
        close the room, whatever the SFU raises, and drop the channel if unused."""
        await self._tell(RoomEnded(call_id))
        await self._registry.maybe_unsubscribe(call_id)

    async def _tell(self, event: RoomEvent) -> None:
        sfu = self._sfu
        if sfu is None:
            return
        try:
            await sfu.on_event(event)
        except Exception:
            logger.exception("Room(%s) failed on %s", event.call_id, type(event).__name__)
