"""One call on a running ``huddle serve``, holding the load tester's peers.

The simulcast benchmarks drive :class:`media.loadtest.peers.SignaledPeer`
themselves (``huddle loadtest`` runs a fixed ramp, settle and steady
window; these need to act at chosen moments: cap a downlink, lift it). The
call is made as the load tester makes it: a *host* identity creates the
conversation and the call with every name as a member, and leaves once the
first peer has joined, so every peer joins with an honest ``POST
/v1/calls/{id}/join``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

import aiohttp

from media.loadtest.api import ApiError, HuddleApi, Identity
from media.loadtest.peers import SignaledPeer
from media.loadtest.preencoded import EncodedClip
from media.loadtest.sfuclient import TrackStats
from media.loadtest.simulcast import SimulcastClips

JOIN_TIMEOUT_S = 30.0
LEAVE_TIMEOUT_S = 30.0


class BenchRoom:
    """A call whose members are ``names``; :meth:`join` puts a peer in it."""

    def __init__(self, api: HuddleApi, session: aiohttp.ClientSession, names: Iterable[str]):
        self.api = api
        self._session = session
        self._names = list(names)
        self.call_id = ""
        self._host: Identity | None = None
        self._who: dict[str, Identity] = {}
        self.peers: dict[str, SignaledPeer] = {}

    async def create(self, title: str) -> None:
        api = self.api
        self._host = await api.identity(f"{title}-host")
        for name in self._names:
            self._who[name] = await api.identity(name)
        members = list(self._who.values())
        conversation = await api.conversation(self._host, members, title)
        call = await api.initiate(self._host, conversation, members, video=True)
        if call.get("mode") != "sfu":
            raise RuntimeError(f"the call is in {call.get('mode')} mode, not sfu")
        self.call_id = str(call["call_id"])

    async def join(
        self,
        name: str,
        *,
        video: EncodedClip | None = None,
        audio: EncodedClip | None = None,
        simulcast: SimulcastClips | None = None,
        count_only: bool = True,
        receive_cap_bps: int | None = None,
    ) -> SignaledPeer:
        """Join ``name`` and send its publish offer (or, receiving only, ``subscribe``)."""
        who = self._who[name]
        async with asyncio.timeout(JOIN_TIMEOUT_S):
            await self.api.join(self.call_id, who)
            if self._host is not None:
                host, self._host = self._host, None
                await self.api.leave(self.call_id, host)
            peer = await SignaledPeer.connect(
                self.api.base_url,
                self.call_id,
                who.token,
                who.user_id,
                video=video,
                audio=audio,
                simulcast=simulcast,
                session=self._session,
                count_only=count_only,
                receive_cap_bps=receive_cap_bps,
            )
            self.peers[name] = peer
            await peer.publish()
        return peer

    def user_id(self, name: str) -> str:
        return self._who[name].user_id

    async def leave(self, name: str) -> None:
        """``name`` leaves over HTTP and closes its connections."""
        peer = self.peers.pop(name, None)
        if peer is None:
            return
        await peer.stop_media()
        try:
            with contextlib.suppress(ApiError):  # e.g. the call already ended
                await self.api.leave(self.call_id, self._who[name])
        finally:
            await peer.close()

    async def close(self) -> None:
        """Everyone leaves (media first, as the load tester does), bounded."""
        peers = list(self.peers.values())
        await asyncio.gather(*(p.stop_media() for p in peers), return_exceptions=True)
        async with asyncio.timeout(LEAVE_TIMEOUT_S):
            await asyncio.gather(*(self.leave(n) for n in list(self.peers)), return_exceptions=True)
        if self._host is not None and self.call_id:
            with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
                await self.api.leave(self.call_id, self._host)


def video_from(peer: SignaledPeer, source: str) -> TrackStats | None:
    """What ``peer`` currently receives of ``source``'s camera."""
    return peer.media.received_from(source, "video")


async def wait_for(
    condition: Callable[[], bool], limit_s: float, what: str, interval: float = 0.02
) -> float:
    """Poll ``condition`` until true (returns when, monotonic); TimeoutError naming ``what``."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {limit_s:g} s")
        await asyncio.sleep(interval)
    return time.monotonic()
