"""The message bus between signaling nodes, and its in-process implementation.

Every node subscribes to the channel of each call it serves (a local socket, a
pending disconnect leave, or the call's SFU room) and delivers what arrives to
its own sockets. A node publishes to a call's channel without subscribing.
An envelope meant for one node only (a message targeted at a participant whose
node is known, an SFU message for the room's owner) goes to that node's own
channel instead, so the other nodes of the call never decode it.
One node: :class:`LocalBus` (the default). Several: :class:`~signaling.redis_bus.RedisBus`.

Envelopes are JSON objects; ``kind`` says what the receiving hub does with one
(see :mod:`signaling.hub`). Over Redis, one message carries one envelope or a
JSON list of envelopes published back to back for the same channel.
"""

from __future__ import annotations

from typing import Any, Protocol

Envelope = dict[str, Any]

#: Redis pub/sub channel of one call; every node serving the call subscribes.
CALL_CHANNEL = "call:{call_id}"
#: Redis pub/sub channel of one node: envelopes for this node only (each carries
#: its ``call_id``); also keeps the pub/sub connection subscribed (and so watched)
#: even while the node serves no call.
NODE_CHANNEL = "huddle:node:{node_id}"
#: Redis key naming the node that holds a call's SFU room (value: node id, with a TTL).
ROOM_OWNER_KEY = "huddle:room:{call_id}"


def call_channel(call_id: str) -> str:
    return CALL_CHANNEL.format(call_id=call_id)


def node_channel(node_id: str) -> str:
    return NODE_CHANNEL.format(node_id=node_id)


def room_owner_key(call_id: str) -> str:
    return ROOM_OWNER_KEY.format(call_id=call_id)


class BusUnavailable(Exception):
    """The bus cannot publish right now (Redis down); signaling is degraded."""


class BusListener(Protocol):
    """What a bus tells its hub."""

    async def on_bus_message(self, call_id: str, envelope: Envelope) -> None: ...

    async def on_bus_down(self, call_ids: list[str]) -> None:
        """The bus lost its connection: messages for these calls are being lost."""

    async def on_bus_restored(self, call_ids: list[str]) -> None:
        """The bus is back and subscribed to these calls again."""


class MessageBus(Protocol):
    """Publish/subscribe per call. ``subscribe`` returns once messages flow."""

    @property
    def healthy(self) -> bool: ...

    async def start(self, listener: BusListener) -> None: ...

    async def publish(self, call_id: str, envelope: Envelope, *, node: str | None = None) -> None:
        """Deliver to every node subscribed to the call, or only to ``node`` (which
        hears it whether or not it is subscribed); raises :class:`BusUnavailable`."""

    async def subscribe(self, call_id: str) -> None: ...

    async def unsubscribe(self, call_id: str) -> None: ...

    async def close(self) -> None: ...


class LocalBus:
    """In-process bus: publishing hands the envelope straight to this node's hub."""

    def __init__(self) -> None:
        self._listener: BusListener | None = None
        self._subscribed: set[str] = set()

    @property
    def healthy(self) -> bool:
        return True

    async def start(self, listener: BusListener) -> None:
        self._listener = listener

    async def publish(self, call_id: str, envelope: Envelope, *, node: str | None = None) -> None:
        if self._listener is not None and (node is not None or call_id in self._subscribed):
            await self._listener.on_bus_message(call_id, envelope)

    async def subscribe(self, call_id: str) -> None:
        self._subscribed.add(call_id)

    async def unsubscribe(self, call_id: str) -> None:
        self._subscribed.discard(call_id)

    async def close(self) -> None:
        self._listener = None
        self._subscribed.clear()
