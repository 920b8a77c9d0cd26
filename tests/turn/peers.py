"""Two aiortc peers on 127.0.0.1 for the relay tests: a relay-only offerer and an
answerer that echoes its data channel and sends audio back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack


@dataclass
class FrameCounter:
    """Reads a received track until it ends; owns its task."""

    frames: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def consume(self, track: MediaStreamTrack) -> None:
        self.tasks.append(asyncio.create_task(self._run(track)))

    async def _run(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames += 1

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def relay_only_config(uri: str, username: str, credential: str) -> RTCConfiguration:
    """Only the TURN server and only relay candidates (RFC 9429 'relay' policy)."""
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=[uri], username=username, credential=credential)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )


@dataclass
class PeerPair:
    offerer: RTCPeerConnection
    answerer: RTCPeerConnection
    channel: RTCDataChannel
    offerer_audio: FrameCounter
    answerer_audio: FrameCounter
    echoes: asyncio.Queue[str]


def ice_connection(pc: RTCPeerConnection) -> Any:
    """The aioice Connection under a peer connection's (bundled) transport."""
    sctp = pc.sctp
    assert sctp is not None
    return sctp.transport.transport._connection


def nominated_pair(pc: RTCPeerConnection) -> Any:
    """The aioice CandidatePair ICE selected for component 1."""
    return ice_connection(pc)._nominated.get(1)


@contextlib.asynccontextmanager
async def relay_call(offerer_config: RTCConfiguration) -> AsyncIterator[PeerPair]:
    """Offerer with ``offerer_config`` → answerer with host candidates only.

    The caller must make aioice offer 127.0.0.1 as a host address (see the
    ``loopback_ice`` fixture); the answerer never contacts any STUN server.
    """
    offerer = RTCPeerConnection(offerer_config)
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    offerer_audio = FrameCounter()
    answerer_audio = FrameCounter()
    echoes: asyncio.Queue[str] = asyncio.Queue()
    sent_tracks = [AudioStreamTrack(), AudioStreamTrack()]
    try:

        @answerer.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            @channel.on("message")
            def on_message(message: str | bytes) -> None:
                channel.send(message)

        @answerer.on("track")
        def on_answerer_track(track: MediaStreamTrack) -> None:
            answerer_audio.consume(track)

        @offerer.on("track")
        def on_offerer_track(track: MediaStreamTrack) -> None:
            offerer_audio.consume(track)

        channel = offerer.createDataChannel("echo")

        @channel.on("message")
        def on_echo(message: str | bytes) -> None:
            echoes.put_nowait(message if isinstance(message, str) else message.decode())

        offerer.addTrack(sent_tracks[0])
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        answerer.addTrack(sent_tracks[1])
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        yield PeerPair(offerer, answerer, channel, offerer_audio, answerer_audio, echoes)
    finally:
        await offerer.close()
        await answerer.close()
        for track in sent_tracks:
            track.stop()
        await offerer_audio.close()
        await answerer_audio.close()
