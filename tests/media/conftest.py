"""Fixtures for SFU tests: real aiortc connections on 127.0.0.1, no STUN."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from aiortc import RTCConfiguration

from media.aiortc_compat import restrict_host_addresses
from media.config import MediaConfig
from media.loadtest.preencoded import EncodedClip, opus_clip, vp8_clip
from media.loadtest.sfuclient import LocalSignaling, SfuClient
from media.loadtest.simulcast import SimulcastClips
from media.metrics import CountingMediaMetrics, MediaMetrics
from media.room import Room


@pytest.fixture(autouse=True)
def loopback_ice() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


@pytest.fixture
def config() -> MediaConfig:
    return MediaConfig(ice_hosts=("127.0.0.1",), ice_servers=())


@pytest.fixture(scope="session")
def video_clip() -> EncodedClip:
    return vp8_clip(frames=90, width=320, height=240, bitrate=300_000, keyframe_every=30)


@pytest.fixture(scope="session")
def rare_keyframe_clip() -> EncodedClip:
    """A keyframe only every 3 s: a fast first frame must come from a keyframe request."""
    return vp8_clip(frames=90, width=320, height=240, bitrate=300_000, keyframe_every=90)


@pytest.fixture(scope="session")
def audio_clip() -> EncodedClip:
    return opus_clip()


class Call:
    """A Room plus in-process clients that talk to it directly."""

    def __init__(
        self,
        config: MediaConfig,
        video: EncodedClip | None,
        audio: EncodedClip | None,
        metrics: MediaMetrics | None = None,
    ) -> None:
        self.config = config
        self.signaling = LocalSignaling()
        self.metrics = metrics or CountingMediaMetrics()
        self.room = Room("call-1", config, self.signaling, self.metrics)
        self.clients: dict[str, SfuClient] = {}
        self._video = video
        self._audio = audio

    async def join(
        self,
        participant_id: str,
        *,
        decode: bool = False,
        count_only: bool = False,
        rtc_configuration: RTCConfiguration | None = None,
        publish: bool = True,
        simulcast: SimulcastClips | None = None,
        receive_cap_bps: int | None = None,
    ) -> SfuClient:
        """A client that publishes at once (or, ``publish=False``, only receives);
        ``rtc_configuration`` defaults to the SFU's."""

        async def send(message: dict[str, object]) -> None:
            await self.room.handle_signal(participant_id, message)

        client = SfuClient(
            participant_id,
            send,
            rtc_configuration=rtc_configuration or self.config.rtc_configuration(),
            video=self._video if publish and simulcast is None else None,
            audio=self._audio if publish else None,
            decode=decode,
            count_only=count_only,
            simulcast=simulcast,
            receive_cap_bps=receive_cap_bps,
        )
        self.clients[participant_id] = client
        self.signaling.clients[participant_id] = client
        await client.publish()
        return client

    async def leave(self, participant_id: str) -> None:
        client = self.clients.pop(participant_id)
        self.signaling.clients.pop(participant_id, None)
        await self.room.remove_participant(participant_id)
        await client.close()

    async def close(self) -> None:
        for client in list(self.clients.values()):
            await client.close()
        self.clients.clear()
        await self.room.close()


@pytest.fixture
async def call(
    config: MediaConfig, video_clip: EncodedClip, audio_clip: EncodedClip
) -> AsyncIterator[Call]:
    c = Call(config, video_clip, audio_clip)
    yield c
    await c.close()
