"""What the multi-node tests share: HTTP to every node of a :class:`Cluster`, where a
room is placed, and what a real peer (``SignaledPeer``) receives."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import aiohttp
from redis.asyncio import Redis

from media.loadtest.peers import SignaledPeer
from media.loadtest.preencoded import EncodedClip
from signaling.bus import room_owner_key
from tests.signaling.cluster import Cluster
from tests.support.api import Api, User
from tests.support.polling import eventually
from tests.support.serve import ServeProcess

ADMIN_TOKEN = "drain-test-admin-token-0123456789abcdef"


class Http:
    def __init__(self, running: Cluster) -> None:
        self.nodes = running.nodes
        self.sessions = [aiohttp.ClientSession(base_url=n.base_url) for n in running.nodes]
        self.api = [Api(s) for s in self.sessions]  # type: ignore[arg-type]
        self.ids = {n.name: i for i, n in enumerate(running.nodes)}

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()

    async def sfu_call(self, names: tuple[str, ...]) -> tuple[str, list[User]]:
        users = await self.api[0].users(*names)
        call = await self.api[0].group_call(users[0], *users[1:])
        assert call["mode"] == "sfu"
        for user in users[1:]:
            await self.api[0].action(call["call_id"], "join", user)
        return str(call["call_id"]), users

    async def ready(self, index: int) -> tuple[int, dict[str, object]]:
        async with self.sessions[index].get("/ready") as response:
            return response.status, await response.json()

    async def drain(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with self.sessions[index].post("/v1/admin/drain", headers=headers) as response:
            assert response.status == 202, await response.text()


async def owner_of(redis: Redis, call_id: str) -> str:
    async def placed() -> str | None:
        value = await redis.get(room_owner_key(call_id))
        return value.decode() if value is not None else None

    owner: str = await eventually(placed, timeout=15, message=f"room {call_id} placed")
    return owner


def receives(peer: SignaledPeer, other: str, more_than: int = 10) -> bool:
    stats = [peer.media.received_from(other, kind) for kind in ("audio", "video")]
    return all(s is not None and s.frames > more_than for s in stats)


def frames(peer: SignaledPeer, other: str) -> int:
    stats = peer.media.received_from(other, "video")
    return stats.frames if stats is not None else 0


def exited(node: ServeProcess) -> bool:
    return node.process.poll() is not None


async def join_and_publish(
    http: Http,
    call_id: str,
    users: Sequence[User],
    homes: Sequence[int],
    clips: tuple[EncodedClip, EncodedClip],
    peers: list[SignaledPeer],
    reconnect_url: Callable[[int], str] | None = None,
) -> None:
    """Connect each user's peer to node ``homes[i]`` and publish; appended to ``peers``
    as they connect (the caller closes them). ``reconnect_url(i)``: where peer ``i``
    reconnects."""
    video, audio = clips
    for index, (user, home) in enumerate(zip(users, homes, strict=True)):
        peer = await SignaledPeer.connect(
            http.nodes[home].base_url,
            call_id,
            user.token,
            user.user_id,
            video=video,
            audio=audio,
            sfu_messages_only=True,
            reconnect_url=(None if reconnect_url is None else (lambda i=index: reconnect_url(i))),
        )
        peers.append(peer)
        await peer.signaling.receive("mode", timeout=10)
        await peer.publish()


def everyone_receives(
    peers: Sequence[SignaledPeer], ids: Sequence[str], more_than: int = 10
) -> bool:
    """Each peer receives every other's audio and video."""
    return all(
        receives(peer, other, more_than)
        for peer, me in zip(peers, ids, strict=True)
        for other in ids
        if other != me
    )
