"""A headless participant over the real stack: HTTP join, WebSocket signaling, SFU."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiortc import RTCConfiguration

from media.peers import SfuClient
from media.preencoded import EncodedClip
from signaling.client import SignalingClient, SignalingClosed


class SignaledPeer:
    """An :class:`SfuClient` whose SFU messages travel over a :class:`SignalingClient`.

    Messages from the SFU (``sender_id == "sfu"``) are pumped into the client;
    everything else stays in ``signaling`` for the test to read.
    """

    def __init__(
        self,
        user_id: str,
        signaling: SignalingClient,
        *,
        video: EncodedClip | None,
        audio: EncodedClip | None,
    ) -> None:
        self.user_id = user_id
        self.signaling = signaling
        self.media = SfuClient(
            user_id,
            signaling.send,
            rtc_configuration=RTCConfiguration(iceServers=[]),
            video=video,
            audio=audio,
        )
        self._pump = asyncio.create_task(self._run(), name=f"pump {user_id}")

    @classmethod
    async def connect(
        cls,
        base_url: str,
        call_id: str,
        user: Any,
        *,
        video: EncodedClip | None,
        audio: EncodedClip | None,
    ) -> SignaledPeer:
        signaling = await SignalingClient.open(base_url, call_id, user.token)
        return cls(user.user_id, signaling, video=video, audio=audio)

    async def _run(self) -> None:
        while True:
            try:
                message = await self.signaling.receive(
                    where=lambda m: m.get("sender_id") == "sfu", timeout=3600
                )
            except (SignalingClosed, TimeoutError):
                return
            self.media.deliver(message)

    async def close(self) -> None:
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        await self.media.close()
        await self.signaling.close()
