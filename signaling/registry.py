"""This node's sockets, who is online where, and routing over the bus.

Every message between sockets travels through the :class:`MessageBus`, also on
one node, so one code path serves one node and many. A node subscribes to a
call's channel while it has a socket of that call, a pending disconnect leave
for it, or the call's SFU room, and delivers what arrives to its own sockets.

A ``deliver`` to one participant goes to that participant's node channel
(``huddle:node:{node_id}``, the node the ``presence`` envelopes name), straight
to the socket when it is on this node, and takes the call channel only while
the participant's node is unknown.
"""

from __future__ import annotations

import asyncio
import contextlib

from signaling.bus import BusUnavailable, Envelope, MessageBus
from signaling.connection import Connection
from signaling.placement import RoomPlacement
from signaling.protocol import SERVER_ID, Message, encode, stamp


class SocketRegistry:
    """The sockets of this node by call and participant, the participants online on
    other nodes, the pending disconnect leaves, and the call channels subscribed."""

    def __init__(self, bus: MessageBus, placement: RoomPlacement, node_id: str) -> None:
        self.bus = bus
        self.placement = placement
        self.node_id = node_id
        self.conns: dict[str, dict[str, Connection]] = {}
        self.remote: dict[str, dict[str, str]] = {}  # call -> participant -> node
        #: Disconnect leaves waiting out their grace (owned by :mod:`signaling.grace`).
        self.pending: dict[str, dict[str, asyncio.Task[None]]] = {}
        self._subscribed: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        #: Calls whose media this node's SFU holds a part of without owning the room
        #: (rooms across nodes): their channel stays, for the lifecycle.
        self.media_parts: set[str] = set()

    # -- who is where -----------------------------------------------------------------

    def local(self, call_id: str) -> dict[str, Connection]:
        return self.conns.get(call_id, {})

    def all_connections(self) -> list[Connection]:
        return [conn for conns in self.conns.values() for conn in conns.values()]

    def local_seats(self) -> list[tuple[str, str]]:
        return [(call_id, pid) for call_id, conns in self.conns.items() for pid in conns]

    def is_online(self, call_id: str, pid: str) -> bool:
        return pid in self.conns.get(call_id, {}) or pid in self.remote.get(call_id, {})

    def held_here(self, call_id: str, pid: str) -> bool:
        """A socket of ``pid`` on this node, or its disconnect leave pending here."""
        return pid in self.conns.get(call_id, {}) or pid in self.pending.get(call_id, {})

    @property
    def subscribed(self) -> frozenset[str]:
        return frozenset(self._subscribed)

    # -- sending ------------------------------------------------------------------------

    def server_message(self, call_id: str, message: Message) -> Message:
        return stamp(message, sender_id=SERVER_ID, call_id=call_id)

    def send_local(
        self, call_id: str, message: Message, *, to: str | None = None, exclude: str | None = None
    ) -> None:
        """To this node's sockets of the call (only ``to``'s, never ``exclude``'s)."""
        conns = self.conns.get(call_id, {})
        targets = [conns[to]] if to in conns else [] if to else list(conns.values())
        if not targets:
            return
        text = encode(message)
        for conn in targets:
            if conn.participant_id != exclude:
                conn.send_text(text)

    async def deliver_to(self, call_id: str, pid: str, message: Message) -> None:
        """A stamped message for one participant, on whichever node holds its
        socket. Raises :class:`BusUnavailable`."""
        if pid in self.conns.get(call_id, {}):
            self.send_local(call_id, message, to=pid)
            return
        node = self.remote.get(call_id, {}).get(pid)
        envelope: Envelope = {"kind": "deliver", "message": message, "to": pid}
        await self.bus.publish(call_id, envelope, node=node)

    async def publish(self, call_id: str, envelope: Envelope, *, node: str | None = None) -> None:
        await self.bus.publish(call_id, envelope, node=node)

    # -- call channels ----------------------------------------------------------------

    def needs_channel(self, call_id: str) -> bool:
        return (
            call_id in self.conns
            or call_id in self.pending
            or call_id in self.placement.owned
            or call_id in self.media_parts
        )

    async def ensure_subscribed(self, call_id: str) -> None:
        lock = self._locks.setdefault(call_id, asyncio.Lock())
        async with lock:
            if call_id in self._subscribed:
                return
            await self.bus.subscribe(call_id)
            self._subscribed.add(call_id)
            with contextlib.suppress(BusUnavailable):
                await self.bus.publish(call_id, {"kind": "sync", "node": self.node_id})

    async def maybe_unsubscribe(self, call_id: str) -> None:
        if call_id not in self._subscribed or self.needs_channel(call_id):
            return
        lock = self._locks.setdefault(call_id, asyncio.Lock())
        async with lock:
            if call_id not in self._subscribed or self.needs_channel(call_id):
                return
            self._subscribed.discard(call_id)
            self.remote.pop(call_id, None)
            await self.bus.unsubscribe(call_id)
        if not lock.locked():
            self._locks.pop(call_id, None)

    def forget(self) -> None:
        """After the bus closed: nothing is subscribed any more."""
        self._subscribed.clear()
        self.remote.clear()
        self.pending.clear()
