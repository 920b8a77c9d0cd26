"""Roster updates are coalesced: N participants joining cost O(N) messages, not O(N²)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from media.seam import RoomEnded, RoomEvent
from signaling.client import SignalingClient
from signaling.keys import HUB
from tests.signaling.conftest import Node
from tests.signaling.messages import offer
from tests.support.polling import eventually

#: Limits.max_participants in the test config.
N = 10
ROSTER_TYPES = ("participants", "presence", "join")


def roster_updates(client: SignalingClient) -> list[dict[str, Any]]:
    return [m for m in client.messages if m["type"] in ROSTER_TYPES]


def sees_everyone_online(client: SignalingClient, everyone: set[str]) -> bool:
    """The client's picture of the call, folded from what it received, has all online."""
    online: set[str] = set()
    for message in client.messages:
        if message["type"] == "participants":
            online = {p["participant_id"] for p in message["participants"] if p["online"]}
        elif message["type"] == "presence":
            pid = message["participant_id"]
            (online.add if message["online"] else online.discard)(pid)
    return online >= everyone


async def test_n_sockets_connecting_cost_linear_messages(node: Node) -> None:
    hub = node.app[HUB]
    hub.presence.batcher.window_s = 3600.0  # one window for the whole test: flushed below
    users = await node.api.users(*(f"user{i}" for i in range(N)))
    call_id = await node.joined_call(users[0], *users[1:])
    clients = []
    for user in users:
        client = await node.ws(call_id, user)
        await client.receive("mode")
        clients.append(client)
    await hub.presence.batcher.flush(call_id)
    everyone = {user.user_id for user in users}
    for client in clients:
        await eventually(lambda c=client: sees_everyone_online(c, everyone), timeout=10)

    total = sum(len(roster_updates(client)) for client in clients)
    # Each socket: its own roster on connect, the one update sent at once when the
    # window opened, and one roster at the flush. Uncoalesced, the presence
    # messages alone would be N(N-1)/2 = 45.
    assert total <= 3 * N, total
    assert total < N * (N - 1) // 2
    later = [m for c in clients[2:] for m in roster_updates(c)[1:]]
    assert all(m["type"] == "participants" for m in later)


async def test_n_http_joins_cost_linear_messages(node: Node) -> None:
    hub = node.app[HUB]
    hub.presence.batcher.window_s = 3600.0
    users = await node.api.users(*(f"user{i}" for i in range(N)))
    call = await node.api.group_call(users[0], *users[1:])
    call_id = str(call["call_id"])
    watcher = await node.ws(call_id, users[0])
    await watcher.receive("mode")
    for user in users[1:]:
        await node.api.action(call_id, "join", user)
    await hub.presence.batcher.flush(call_id)

    def rosters() -> list[dict[str, Any]]:
        return [m for m in watcher.messages if m["type"] == "participants"]

    await eventually(lambda: len(rosters()) == 2, timeout=10)
    final = rosters()[-1]
    assert {p["participant_id"] for p in final["participants"]} == {u.user_id for u in users}
    # The welcome roster, then the N-1 joins as one roster (the watcher's own
    # presence had opened the window; without it the first join goes at once).
    kinds = [m["type"] for m in roster_updates(watcher)]
    assert kinds in (["participants", "participants"], ["participants", "join", "participants"])


async def test_one_participant_s_updates_keep_their_order(node: Node) -> None:
    """Held updates about one other participant go out as they were, in order."""
    hub = node.app[HUB]
    hub.presence.batcher.window_s = 3600.0
    ana, bob, cyd = await node.api.users("ana", "bob", "cyd")
    call_id = await node.joined_call(ana, bob, cyd)
    a = await node.ws(call_id, ana)
    await a.receive("mode")
    await hub.presence.batcher.flush(call_id)  # ends the window ana's own socket opened

    def presence() -> list[tuple[str, bool]]:
        return [(m["participant_id"], m["online"]) for m in a.messages if m["type"] == "presence"]

    b = await node.ws(call_id, bob)  # sent at once: the window opens
    await eventually(lambda: len(presence()) == 1, timeout=5)
    await b.ws.close()
    await eventually(lambda: hub.connection_count == 1, timeout=5)
    b2 = await node.ws(call_id, bob)
    await b2.receive("mode")
    assert len(presence()) == 1  # the drop and the return are held
    await hub.presence.batcher.flush(call_id)
    await eventually(lambda: len(presence()) == 3, timeout=5)
    assert presence() == [(bob.user_id, True), (bob.user_id, False), (bob.user_id, True)]


@dataclass
class BrokenSfu:
    events: list[RoomEvent] = field(default_factory=list)
    rooms: set[str] = field(default_factory=set)

    def has_room(self, call_id: str) -> bool:
        return call_id in self.rooms

    def members(self) -> dict[str, frozenset[str]]:
        return {call_id: frozenset() for call_id in self.rooms}

    async def handle_signal(self, call_id: str, participant_id: str, message: Any) -> None:
        self.rooms.add(call_id)

    async def on_event(self, event: RoomEvent) -> None:
        self.events.append(event)
        raise RuntimeError("the room failed to close")


async def test_a_lost_room_is_released_even_when_the_sfu_fails(node: Node) -> None:
    hub = node.app[HUB]
    sfu = BrokenSfu()
    hub.attach_sfu(sfu)
    ana, bob, cyd = await node.api.users("ana", "bob", "cyd")
    call_id = await node.joined_call(ana, bob, cyd)
    a = await node.ws(call_id, ana)
    await a.receive("mode")
    await a.send(offer("sfu", pc="publish"))
    await eventually(lambda: sfu.has_room(call_id), timeout=5)
    await node.api.action(call_id, "leave", ana)
    await a.wait_closed()
    await eventually(lambda: hub.connection_count == 0, timeout=5)
    assert call_id in hub.registry.subscribed  # the room keeps the channel

    # As RedisPlacement does when its claim is gone: forget it, then tell the hub.
    await hub.registry.placement.release(call_id)
    await hub.on_room_lost(call_id)
    assert sfu.events[-1] == RoomEnded(call_id)
    assert call_id not in hub.registry.subscribed


async def test_held_updates_go_out_before_a_leave(node: Node) -> None:
    """A held roster update never arrives after (and so undoes) a later broadcast."""
    hub = node.app[HUB]
    hub.presence.batcher.window_s = 3600.0
    ana, bob, cyd = await node.api.users("ana", "bob", "cyd")
    call_id = await node.joined_call(ana, bob, cyd)
    a = await node.ws(call_id, ana)
    await a.receive("mode")
    await hub.presence.batcher.flush(call_id)
    b = await node.ws(call_id, bob)  # at once: the window opens
    await b.receive("mode")
    c = await node.ws(call_id, cyd)  # held
    await c.receive("mode")
    await node.api.action(call_id, "leave", cyd)

    def seen() -> list[tuple[str, str, bool | None]]:
        return [
            (m["type"], m["participant_id"], m.get("online"))
            for m in a.messages
            if m["type"] in ("presence", "leave")
        ]

    await eventually(lambda: ("leave", cyd.user_id, None) in seen(), timeout=5)
    order = seen()
    assert order.index(("presence", cyd.user_id, True)) < order.index(("leave", cyd.user_id, None))
